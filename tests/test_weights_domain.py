"""micro-sam's and MedSAM's models: registry entries as their authors pin them, xxh128 downloads, their checkpoint
layouts (written here with random tensors under the real keys and shapes), and MedSAM's preprocessing."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import test_download
import torch
import xxhash
from test_download import Route, add_entry, assert_same_weights, files_under

from napari_focsam.engine.sam_predictor import SamFamilyPredictor
from napari_focsam.engine.session import ObjectSession
from napari_focsam.engine.types import ImageEmbedding
from napari_focsam.models.sam import build_model
from napari_focsam.models.specs import get_spec
from napari_focsam.models.transforms import MedsamTransform, make_transform
from napari_focsam.weights.checkpoint import CheckpointError, _extract_state_dict, check_compatible, to_model_keys
from napari_focsam.weights.checkpoint import _expected_shapes as expected_shapes
from napari_focsam.weights.download import ModelUnavailable, resolve_checkpoint
from napari_focsam.weights.loader import load_model
from napari_focsam.weights.registry import GROUPS, REGISTRY, get_entry
from napari_focsam.weights.verify import verify_file

# fixtures shared with test_download (a real HTTP server on 127.0.0.1, a fresh cache folder)
cache, server = test_download.cache, test_download.server

MICROSAM = {  # registry name -> (micro-sam's name, bioimage.io id, file)
    "microsam_vit_b_lm": ("vit_b_lm", "diplomatic-bug", "vit_b.pt"),
    "microsam_vit_l_lm": ("vit_l_lm", "idealistic-rat", "vit_l.pt"),
    "microsam_vit_b_em_organelles": ("vit_b_em_organelles", "noisy-ox", "vit_b.pt"),
    "microsam_vit_l_em_organelles": ("vit_l_em_organelles", "humorous-crab", "vit_l.pt"),
}
#: a few key names and shapes of micro-sam's instance-segmentation decoder (UNETR), the ``decoder_state`` extra
DECODER_STATE = {"decoder.blocks.0.block.0.weight": (256, 512, 3, 3),
                 "decoder.samplers.0.block.weight": (512, 256, 2, 2), "base.block.0.weight": (512, 768, 3, 3),
                 "out_conv.weight": (3, 64, 1, 1), "out_conv.bias": (3,)}


def microsam_layout(state: dict[str, torch.Tensor], prefix: str = "sam.") -> dict[str, object]:
    """micro-sam's ``{"model_state": ..., "decoder_state": ...}`` file content (SAM keys with its wrapper's prefix)."""
    decoder = {k: torch.randn(shape) * 0.01 for k, shape in DECODER_STATE.items()}
    return {"model_state": {prefix + k: v for k, v in state.items()}, "decoder_state": decoder}


# ---------------------------------------------------------------------------------------------------------- registry
def _microsam_util() -> str:
    python = Path(os.environ.get("MICROSAM_PYTHON", Path.home() / ".cache/microsam-venv/bin/python"))
    found = sorted(python.parent.parent.glob("lib/python3*/site-packages/micro_sam/util.py"))
    if not found:
        pytest.skip("micro-sam is not installed next to this environment (set MICROSAM_PYTHON)")
    return found[0].read_text()


def test_entries_are_pinned_as_the_authors_pin_them():
    for name, (_, zoo_id, file_name) in MICROSAM.items():
        entry = get_entry(name)
        assert entry.group == "microscopy" and entry.licence == "CC-BY-4.0" and entry.preprocessing == "sam"
        assert entry.urls == (f"https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/{zoo_id}/1.2/files/"
                              f"{file_name}",)
        assert re.fullmatch(r"[0-9a-f]{32}", entry.xxh128) and entry.sha256 is None
        assert entry.known_hash == entry.checkpoint_hash == f"xxh128:{entry.xxh128}"
        assert entry.summary and entry.file_name == f"{name}.pt"
        assert get_spec(entry.spec_name).encoder.embed_dim == (768 if "_b_" in name else 1024)
    medsam = get_entry("medsam_vit_b")
    assert medsam.group == "medical" and medsam.licence == "Apache-2.0" and medsam.preprocessing == "medsam"
    assert medsam.urls == () and medsam.known_hash is None and "bowang-lab/MedSAM" in medsam.page_url
    assert get_spec("medsam_vit_b").preprocessing == "medsam" and medsam.file_name == "medsam_vit_b.pth"
    assert {e.group for e in REGISTRY.values()} == set(GROUPS)


def test_hashes_and_urls_equal_micro_sams_own_registry():
    text = _microsam_util()
    for name, (theirs, _, _) in MICROSAM.items():
        entry = get_entry(name)
        assert f'"{theirs}": "xxh128:{entry.xxh128}"' in text
        assert f'"{theirs}": "{entry.urls[0]}"' in text


# ---------------------------------------------------------------------------------------------------------- xxh128
def _tiny_microsam_file(tmp_path: Path, seed: int = 5) -> tuple[bytes, dict[str, torch.Tensor]]:
    state = build_model(get_spec("sam_tiny"), seed=seed).state_dict()
    path = tmp_path / "vit_t.pt"
    torch.save(microsam_layout(state), path)
    return path.read_bytes(), state


def test_xxh128_download_loads_the_micro_sam_layout(server, cache, monkeypatch, tmp_path):
    data, state = _tiny_microsam_file(tmp_path)
    server.routes["/vit_b.pt"] = Route(data)
    entry = add_entry(monkeypatch, urls=(server.url("/vit_b.pt"),), xxh128=xxhash.xxh128(data).hexdigest(),
                      group="microscopy")
    path = resolve_checkpoint(entry.name)
    assert path.read_bytes() == data
    assert_same_weights(load_model("sam_tiny", path).model, state)
    # checked once; later uses trust the record, and a full verify compares the xxh128
    assert resolve_checkpoint(entry.name, download=False) == path and server.hits == ["/vit_b.pt"]
    report = verify_file(path)
    assert report.entry is entry and report.hash_ok and report.ok
    assert f"xxh128:     {entry.xxh128}: the official Test SAM file" in report.summary()


def test_xxh128_mismatch_is_refused(server, cache, monkeypatch, tmp_path):
    data, _ = _tiny_microsam_file(tmp_path)
    server.routes["/vit_b.pt"] = Route(data)
    wrong = xxhash.xxh128(data + b"!").hexdigest()
    entry = add_entry(monkeypatch, urls=(server.url("/vit_b.pt"),), xxh128=wrong)
    with pytest.raises(ModelUnavailable, match="corrupt or not the expected file") as info:
        resolve_checkpoint(entry.name)
    assert f"expected xxh128: {wrong}" in str(info.value)
    assert [f for f in files_under(cache / "models") if not f.startswith(".partial/")] == []
    # a file dropped by hand with the wrong content is refused too, naming both hashes
    (cache / "models").mkdir(parents=True, exist_ok=True)
    (cache / "models" / entry.file_name).write_bytes(data)
    with pytest.raises(ModelUnavailable, match=f"its xxh128 is {xxhash.xxh128(data).hexdigest()}, expected {wrong}"):
        resolve_checkpoint(entry.name, download=False)


# ---------------------------------------------------------------------------------------------------------- layouts
@pytest.fixture(scope="module")
def vit_b_state() -> dict[str, torch.Tensor]:
    """Random tensors under SAM ViT-B's real keys and shapes (the layout of all three ViT-B files)."""
    generator = torch.Generator().manual_seed(3)
    return {k: torch.randn(shape, generator=generator) * 0.02 for k, shape in expected_shapes(get_spec("sam_vit_b"))
            .items()}


def _spot_check(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key in list(state)[:: max(1, len(state) // 25)]:
        assert torch.equal(loaded[key], state[key]), key


def test_real_vit_b_files_load_strictly(tmp_path, vit_b_state):
    microsam = tmp_path / "vit_b.pt"
    torch.save(microsam_layout(vit_b_state), microsam)
    _spot_check(load_model("microsam_vit_b_lm", microsam).model, vit_b_state)
    medsam = tmp_path / "medsam_vit_b.pth"
    torch.save(vit_b_state, medsam)  # MedSAM's converter writes SAM's plain state dict
    loaded = load_model("medsam_vit_b", medsam)
    _spot_check(loaded.model, vit_b_state)
    assert SamFamilyPredictor(loaded).transform.name == "medsam-v1"
    # strict: one SAM key missing from micro-sam's model_state is named
    partial = microsam_layout({k: v for k, v in vit_b_state.items() if k != "mask_decoder.iou_token.weight"})
    torch.save(partial, microsam)
    with pytest.raises(CheckpointError, match=r"1 missing keys: mask_decoder\.iou_token\.weight"):
        load_model("microsam_vit_b_em_organelles", microsam)


@pytest.mark.parametrize("prefix", ["sam.", ""])
def test_vit_l_layouts_fit_by_structure(prefix):
    """ViT-L files (1.2 GB) are checked without writing them: the same unwrapping on shape-only tensors."""
    shapes = expected_shapes(get_spec("sam_vit_l"))
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    for name in ("microsam_vit_l_lm", "microsam_vit_l_em_organelles"):
        mapped = to_model_keys(_extract_state_dict(microsam_layout(state, prefix) | {"optimizer_state": {}},
                                                   Path("vit_l.pt")))
        check_compatible(get_spec(name), mapped, "vit_l.pt")
    with pytest.raises(CheckpointError, match="Load it as 'sam_vit_l' instead"):
        check_compatible(get_spec("microsam_vit_b_lm"), mapped, "vit_l.pt")


def test_torch_em_training_checkpoint_is_read_safely(tmp_path, monkeypatch):
    """A training checkpoint pickles torch_em / micro_sam objects: they become inert, the weights load."""
    module = types.ModuleType("torch_em.trainer.logger_base")

    class TorchEmLogger:
        def __reduce__(self):
            return (TorchEmLogger, ())

    TorchEmLogger.__module__, TorchEmLogger.__qualname__ = module.__name__, "TorchEmLogger"
    module.TorchEmLogger = TorchEmLogger
    for parent in ("torch_em", "torch_em.trainer"):
        monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    state = build_model(get_spec("sam_tiny"), seed=9).state_dict()
    path = tmp_path / "best.pt"
    torch.save({**microsam_layout(state), "optimizer_state": {"state": {}}, "logger": TorchEmLogger(),
                "iteration": 100}, path)
    assert_same_weights(load_model("sam_tiny", path).model, state)
    hostile = tmp_path / "hostile.pt"
    torch.save({"model_state": {}, "x": types.SimpleNamespace(a=1)}, hostile)
    with pytest.raises(CheckpointError, match="UNSAFE"):
        load_model("sam_tiny", hostile)


# ---------------------------------------------------------------------------------------------------------- MedSAM
def test_medsam_image_input_hand_computed():
    """A 1024² image is not resized (scikit-image returns it as it is); the input is (x - 10) / 200 in every channel,
    with neither SAM's mean nor its std."""
    image = np.full((1024, 1024, 3), 60, np.uint8)
    image[:512, :300] = 10
    image[600:, 700:] = 210
    x = make_transform("medsam").image_to_input(image, torch.device("cpu"), torch.float32)
    assert x.shape == (1, 3, 1024, 1024) and x.dtype == torch.float32
    assert torch.equal(x[0, :, 0, 0], torch.zeros(3)) and torch.equal(x[0, :, 1023, 1023], torch.ones(3))
    assert torch.equal(x[0, :, 550, 550], torch.full((3,), 0.25))
    assert set(torch.unique(x).tolist()) == {0.0, 0.25, 1.0}
    flat = make_transform("medsam").image_to_input(np.full((40, 60, 3), 77, np.uint8), torch.device("cpu"),
                                                   torch.float32)
    assert torch.equal(flat, torch.zeros(1, 3, 1024, 1024))  # max == min: (x - min) / 1e-8 = 0


def test_medsam_coordinates_hand_computed():
    transform = MedsamTransform()
    geometry = transform.geometry((300, 600))
    assert np.allclose(transform.points_to_input(np.array([[150.0, 300.0]]), geometry), [[512.0, 512.0]])
    box = transform.box_to_input(np.array([30.0, 60.0, 270.0, 540.0]), geometry)  # (y0, x0, y1, x1)
    assert np.allclose(box, [102.4, 102.4, 921.6, 921.6])


def test_medsam_masks_interpolate_probabilities_hand_computed():
    """Low-res logits -2 everywhere but +10 on row 100, bilinear ×4 to 1024. Output row 404 reads source row
    (404 + 0.5) / 4 - 0.5 = 100.625: rows 100 and 101 with weights 0.375 / 0.625, so MedSAM's probability is
    0.375 σ(10) + 0.625 σ(-2) = 0.4495 (< 0.5: off), where interpolated logits would give 2.5 (on); row 402
    (weights 0.875 / 0.125): 0.8899 (on)."""
    logits = torch.full((1, 1, 256, 256), -2.0)
    logits[..., 100, :] = 10.0
    transform = MedsamTransform()
    out = transform.logits_to_original(logits, transform.geometry((1024, 1024)))
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    assert float(torch.sigmoid(out[0, 0, 404, 7])) == pytest.approx(0.375 * sig(10) + 0.625 * sig(-2), abs=1e-5)
    assert float(torch.sigmoid(out[0, 0, 402, 7])) == pytest.approx(0.875 * sig(10) + 0.125 * sig(-2), abs=1e-5)
    assert not (out[0, 0, 404] > 0).any() and (out[0, 0, 402] > 0).all()
    assert (make_transform("stretch").logits_to_original(logits, transform.geometry((1024, 1024)))[0, 0, 404] > 0).all()


def test_medsam_pipeline_matches_the_official_steps():
    """MedSAM_Inference.py's steps, written out on medsam_tiny's random weights: the image stretched by
    scikit-image (bicubic, antialiased), uint8, min-max; the box scaled per axis; one mask; probabilities resized."""
    from skimage import transform as sk

    loaded = load_model("medsam_tiny", seed=4)
    model = loaded.model
    image = np.random.default_rng(2).integers(20, 230, (150, 200, 3), dtype=np.uint8)
    h, w = image.shape[:2]
    big = sk.resize(image, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    big = (big - big.min()) / np.clip(big.max() - big.min(), a_min=1e-8, a_max=None)
    with torch.no_grad():
        features = model.image_encoder(torch.tensor(big).float().permute(2, 0, 1).unsqueeze(0))
        box_xy = np.array([[40, 30, 160, 120]])
        box = torch.as_tensor(box_xy / np.array([w, h, w, h]) * 1024, dtype=torch.float)[:, None, :]
        sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=None)
        low, _ = model.mask_decoder(image_embeddings=features, image_pe=model.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=False)
        probability = torch.nn.functional.interpolate(torch.sigmoid(low), (h, w), mode="bilinear",
                                                      align_corners=False)[0, 0].numpy()
    ours = SamFamilyPredictor(loaded)
    embedded, geometry = ours.embed(image)[:2]
    assert torch.equal(embedded, features)
    mask = ObjectSession(ours, ImageEmbedding(embedded, geometry, "k")).set_box((30.0, 40.0, 120.0, 160.0))
    official = probability > 0.5
    assert 0 < official.sum() < official.size
    assert not ((mask != official) & (np.abs(probability - 0.5) > 1e-4)).any()


def test_hash_helpers_agree_with_the_libraries(tmp_path):
    from napari_focsam.weights.hashing import hash_file

    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(3 << 20) + b"tail")
    data = path.read_bytes()
    assert hash_file(path, "xxh128") == xxhash.xxh128(data).hexdigest()
    assert hash_file(path) == hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError, match="unsupported hash algorithm 'md5'"):
        hash_file(path, "md5")


def test_widget_lists_them_with_a_one_line_summary(make_napari_viewer):
    pytest.importorskip("napari")
    from qtpy.QtCore import Qt

    from napari_focsam.plugin.widget import FocsamWidget

    combo = FocsamWidget(make_napari_viewer()).model_combo
    items = {combo.itemData(i): (combo.itemText(i), combo.itemData(i, Qt.ItemDataRole.ToolTipRole))
             for i in range(combo.count())}
    for name in (*MICROSAM, "medsam_vit_b"):
        entry = get_entry(name)
        text, tooltip = items[name]
        assert text == f"{entry.display_name}: {entry.summary}" and "\n" not in text and tooltip == entry.description
    assert combo.itemData(combo.count() - 1) == "fallback"
