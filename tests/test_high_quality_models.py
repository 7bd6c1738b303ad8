"""HQ-SAM and PA-SAM everywhere SAM goes: sessions (clicks, boxes, fed-back logits, undo/redo), the embedding cache
and its store, stack stores, evaluation, the CLI and the widget's model list. Tiny models with random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from napari_focsam.cli import main as cli_main
from napari_focsam.engine.cache import EmbeddingCache
from napari_focsam.engine.image import to_model_rgb
from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.types import ImageEmbedding
from napari_focsam.evaluation.datasets import SegmentationDataset
from napari_focsam.evaluation.protocol import Protocol
from napari_focsam.evaluation.runner import evaluate
from napari_focsam.models.sam import build_model
from napari_focsam.models.specs import get_spec
from napari_focsam.stack import StackStore, attach_store, precompute_stack
from napari_focsam.stack.common import local_manager
from napari_focsam.stack.worker import ModelConfig
from napari_focsam.weights.registry import REGISTRY
from napari_focsam.weights.verify import verify_file

pytest.importorskip("cv2", reason="PA-SAM's edge map needs opencv-python-headless (the 'pa' extra)")

MODELS = ("sam_hq_tiny", "pa_sam_tiny")
EXTRA = {"sam_hq_tiny": ("hq_features", (1, 32, 256, 256)), "pa_sam_tiny": ("pa_guide", (1, 256, 64, 64))}


def _image(seed: int = 0, shape=(90, 120)) -> np.ndarray:
    yy, xx = np.indices(shape)
    disc = ((yy - 45) ** 2 + (xx - 60) ** 2 < 600).astype(np.uint8) * 150
    noise = np.random.default_rng(seed).integers(0, 40, shape, dtype=np.uint8)
    return np.stack([disc + noise] * 3, axis=-1)


@pytest.fixture(scope="module", params=MODELS)
def manager(request) -> ModelManager:
    return ModelManager.load(request.param, allow_random_weights=True, device="cpu", precision="float32")


def test_embedding_has_its_extras_in_the_fingerprint_and_size(manager):
    name, shape = EXTRA[manager.name]
    embedding = manager.embed(_image())
    assert tuple(embedding.extras[name].shape) == shape
    assert embedding.nbytes == 4 * (256 * 64 * 64 + int(np.prod(shape)))
    assert f"extras={name}-v1" in manager.predictor.fingerprint


def test_clicks_box_mask_input_undo_redo(manager):
    embedding = manager.embed(_image())
    session = manager.new_object(embedding)
    first = session.click(45, 60)
    second = session.click(10, 10, positive=False)  # the first step's logits are fed back as mask input
    assert session.state.logits is not None and session.n_steps == 2
    assert np.array_equal(session.undo(), first)
    assert np.array_equal(session.redo(), second)
    boxed = session.set_box((20, 30, 70, 95))
    assert boxed.shape == (90, 120) and session.prompts.box is not None
    session.undo()
    assert session.prompts.box is None


def test_cache_store_round_trip_and_damaged_extra(manager, tmp_path):
    image = to_model_rgb(_image(1))
    key = manager.key_for(image)
    cache = EmbeddingCache(store=tmp_path / "cache.zarr")
    computed = cache.get_or_compute(key, lambda: manager.predictor.embed(image))
    fresh = EmbeddingCache(store=tmp_path / "cache.zarr")
    read = fresh.get_or_compute(key, lambda: pytest.fail("must come from the store"))
    assert fresh.stats.hits_disk == 1
    assert set(read.extras) == set(computed.extras)
    for name, tensor in computed.extras.items():
        assert torch.equal(read.extras[name], tensor)
    name = next(iter(computed.extras))
    node = zarr.open_group(tmp_path / "cache.zarr" / key, mode="r+")[f"extra_{name}"]
    node[(0,) * node.ndim] = 123.0
    problems: list[str] = []
    again = EmbeddingCache(store=tmp_path / "cache.zarr", on_problem=problems.append)
    recomputed = again.get_or_compute(key, lambda: manager.predictor.embed(image))
    assert again.stats.corrupt == 1 and "checksum mismatch in extra" in problems[0]
    assert torch.equal(recomputed.extras[name], computed.extras[name])


@pytest.mark.parametrize("model", MODELS)
def test_stack_store_holds_the_extras(model, tmp_path):
    stack = np.stack([_image(i)[..., 0] for i in range(2)])
    config = ModelConfig(model, device="cpu", allow_random_weights=True)
    path = tmp_path / "emb.zarr"
    result = precompute_stack(stack, path, config)
    assert result.computed == 2
    name, shape = EXTRA[model]
    group = zarr.open_group(path, mode="r")
    assert group[f"extra_{name}"].shape == (2, *shape)
    store = StackStore.open(path)
    manager = ModelManager(local_manager(config).predictor)
    attach_store(manager, store)
    embedding = manager.embed(stack[1])
    assert manager.last_embed.from_cache
    direct = manager.predictor.embed(to_model_rgb(stack[1]))
    assert torch.allclose(embedding.extras[name], direct[2][name], atol=1e-5)
    assert manager.new_object(embedding).click(45, 60).shape == (90, 120)
    node = zarr.open_group(path, mode="r+")[f"extra_{name}"]
    node[(1,) + (0,) * (node.ndim - 1)] = 77.0
    assert store.check_slice(1, store.keys()[1]) == "corrupt"


@pytest.mark.parametrize("model", MODELS)
def test_evaluation_runs(model, tmp_path):
    from test_evaluation_runner import _write_dataset

    dataset = SegmentationDataset(_write_dataset(tmp_path / "toy"))
    predictor = ModelManager.load(model, allow_random_weights=True, device="cpu").predictor
    run = evaluate(predictor, dataset, tmp_path / "out", Protocol(n_clicks=3), progress=False)
    assert run.computed == 5 and not run.failed
    assert run.summary["n_objects"] == 5


def test_evaluate_cli_in_the_stretched_frame(tmp_path):
    from test_evaluation_runner import _write_dataset

    from napari_focsam.evaluation.cli import main as evaluate_main

    root = _write_dataset(tmp_path / "toy")
    code = evaluate_main(["--dataset", str(root), "--model", "pa_sam_tiny", "--allow-random-weights", "--frame",
                          "stretch", "--clicks", "2", "--out", str(tmp_path / "out"), "--limit", "1", "--no-plots",
                          "--no-progress", "--device", "cpu"])
    assert code == 0
    config = (tmp_path / "out" / "pa_sam_tiny" / "config.json").read_text()
    assert "stretch-v1" in config  # the frame is part of the recorded fingerprint


def test_models_list_and_verify(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NAPARI_FOCSAM_CACHE", str(tmp_path / "cache"))
    assert cli_main(["models", "list"]) == 0
    listed = capsys.readouterr().out
    for name in ("sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h", "pa_sam_vit_l"):
        assert name in listed
    entry = REGISTRY["sam_hq_vit_b"]
    assert entry.sha256 and entry.size == 379_335_069 and "lkeab/hq-sam" in entry.urls[0]
    assert REGISTRY["pa_sam_vit_l"].base_model == "sam_vit_l" and not REGISTRY["pa_sam_vit_l"].urls
    # a PA-SAM decoder file (same shapes for every encoder size) verifies by structure
    decoder = {k[len("mask_decoder."):]: v for k, v in build_model(get_spec("pa_sam_tiny"), seed=0).state_dict().items()
               if k.startswith("mask_decoder.")}
    path = tmp_path / "epoch_20.pth"
    torch.save(decoder, path)
    report = verify_file(path)
    assert report.entry is not None and report.entry.name == "pa_sam_vit_l"
    assert report.structure_ok and "PA-SAM mask decoder alone" in report.looks_like
    assert cli_main(["models", "verify", str(path)]) == 0
    # an HQ file checked against SAM ViT-B's entry says what it is
    hq = tmp_path / "hq.pth"
    torch.save(build_model(get_spec("sam_hq_tiny"), seed=0).state_dict(), hq)
    report = verify_file(hq, "sam_vit_b")
    assert not report.ok and "HQ-SAM tiny" in report.looks_like


def test_missing_pa_file_says_where_to_get_it_and_where_to_put_it(tmp_path, monkeypatch):
    from napari_focsam.weights.download import ModelUnavailable, resolve_checkpoint

    monkeypatch.setenv("NAPARI_FOCSAM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelUnavailable) as info:
        resolve_checkpoint("pa_sam_vit_l", download=True)
    message = str(info.value)
    assert "github.com/xzz2/pa-sam" in message and "epoch_20.pth" in message
    assert str(tmp_path / "cache" / "models") in message and "Baidu" in message


def test_widget_lists_the_models_with_descriptions(make_napari_viewer):
    pytest.importorskip("napari")
    from qtpy.QtCore import Qt

    from napari_focsam.plugin.widget import FocsamWidget

    widget = FocsamWidget(make_napari_viewer())
    names = [widget.model_combo.itemData(i) for i in range(widget.model_combo.count())]
    for name in ("sam_hq_vit_b", "sam_hq_vit_l", "sam_hq_vit_h", "pa_sam_vit_l"):
        i = names.index(name)
        tooltip = widget.model_combo.itemData(i, Qt.ItemDataRole.ToolTipRole)
        assert tooltip == REGISTRY[name].description and tooltip
    assert names[-1] == "fallback"


def test_widget_loads_an_hq_checkpoint_and_segments(make_napari_viewer, tmp_path):
    from _widget_support import annotator  # noqa: F401  (the same helpers as the SAM widget tests)

    from napari_focsam.plugin.widget import FocsamWidget

    path = tmp_path / "sam_hq_tiny.pth"
    torch.save(build_model(get_spec("sam_hq_tiny"), seed=0).state_dict(), path)  # the official HQ-SAM layout
    widget = FocsamWidget(make_napari_viewer())
    widget.model_combo.addItem("HQ-SAM tiny (test)", "sam_hq_tiny")
    widget.model_combo.setCurrentIndex(widget.model_combo.count() - 1)
    widget.checkpoint_edit.setText(str(path))
    widget.device_combo.setCurrentText("cpu")
    widget.load_button.click()
    widget.controller.wait()
    predictor = widget.controller.manager.predictor
    assert predictor.name == "sam_hq_tiny" and predictor.source == str(path)
    embedding = widget.controller.manager.embed(_image())
    assert isinstance(embedding, ImageEmbedding) and "hq_features" in embedding.extras


def test_readme_paths_exist():
    assert (Path(__file__).resolve().parents[1] / "docs" / "models.md").is_file()
