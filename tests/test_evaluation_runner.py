"""The evaluation runner, datasets, files, plots and CLI: the oracle on synthetic data, and a short real run."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_focsam.engine.types import ImageEmbedding, ImageGeometry, ObjectState, Prediction, Prompts
from napari_focsam.evaluation.cli import main as cli_main
from napari_focsam.evaluation.datasets import EvalObject, SegmentationDataset
from napari_focsam.evaluation.oracle import OracleBackend
from napari_focsam.evaluation.protocol import Protocol
from napari_focsam.evaluation.results import OBJECTS_JSONL, read_results
from napari_focsam.evaluation.runner import evaluate, evaluate_object

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _write_dataset(root: Path) -> Path:
    """3 binary objects (one with a 255 band, one saved 0/255) and one uint16 instance mask with 2 nuclei."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.indices((40, 56))
    masks = {
        "a_disk": ((yy - 20) ** 2 + (xx - 25) ** 2 <= 100).astype(np.uint8),
        "b_band": np.zeros((40, 56), np.uint8),
        "c_0255": np.zeros((40, 56), np.uint8),
    }
    masks["b_band"][10:30, 10:40] = 1
    masks["b_band"][8:10, 10:40] = 255
    masks["c_0255"][5:15, 30:50] = 255
    for name, mask in masks.items():
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    labels = np.zeros((32, 32), np.uint16)
    labels[2:10, 2:10] = 7
    labels[15:30, 12:28] = 300
    Image.fromarray(rng.integers(0, 60, (32, 32), dtype=np.uint8)).save(root / "images" / "d_cells.png")
    Image.fromarray(labels).save(root / "masks" / "d_cells.png")
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> SegmentationDataset:
    return SegmentationDataset(_write_dataset(tmp_path / "toy"))


class CountingOracle(OracleBackend):
    """The oracle, counting its calls and checking the state it gets back."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int]] = []  # (clicks, state step)

    def predict(self, embedding, prompts, state, *, cancel=None):  # noqa: ANN001, ANN201
        self.calls.append((len(prompts), 0 if state is None else state.step))
        return super().predict(embedding, prompts, state)


class DiskBackend:
    """Union of disks around positive clicks minus disks around negative ones: improves click by click."""

    name = "disks"
    display_name = "Disks (test backend)"
    is_fallback = False
    supports_boxes = False
    uses_refiner = False
    device = torch.device("cpu")
    fingerprint = "disks-r4"

    def embed(self, image, *, cancel=None):  # noqa: ANN001, ANN201
        size = tuple(image.shape[:2])
        return torch.zeros(1), ImageGeometry(size, size, size, max(size))

    def predict(self, embedding: ImageEmbedding, prompts: Prompts, state: ObjectState | None, *, cancel=None):
        yy, xx = np.indices(embedding.geometry.original_size)
        mask = np.zeros(embedding.geometry.original_size, bool)
        for (y, x), label in zip(prompts.points, prompts.labels):
            disk = (yy - y) ** 2 + (xx - x) ** 2 <= 16
            mask = mask | disk if label == 1 else mask & ~disk
        step = 0 if state is None else state.step
        return Prediction(mask, ObjectState(step=step + 1), timings={"decoder": 1e-3})


# ---------------------------------------------------------------------------------------------- datasets
def test_dataset_layout_and_objects(dataset: SegmentationDataset) -> None:
    assert dataset.ids == ["a_disk", "b_band", "c_0255", "d_cells"]
    keys = [o.key for o in dataset.list_objects()]
    assert keys == ["a_disk", "b_band", "c_0255", "d_cells#7", "d_cells#300"]
    band = dataset.list_objects(["b_band"])[0]
    assert set(np.unique(dataset.target(band, dataset.load_mask("b_band"))).tolist()) == {0, 1, 255}
    c = dataset.list_objects(["c_0255"])[0]
    assert dataset.target(c, dataset.load_mask("c_0255")).sum() == 200  # a 0/255 mask: 255 is the object
    cell = dataset.list_objects(["d_cells"])[1]
    target = dataset.target(cell, dataset.load_mask("d_cells"))
    assert target.dtype == np.uint8 and target.sum() == 15 * 16
    assert dataset.load_image("d_cells").shape == (32, 32, 3)
    assert dataset.select(limit=2) == ["a_disk", "b_band"]
    assert dataset.select(ids=["d_cells#7", "a_disk"]) == ["a_disk", "d_cells"]
    assert [o.key for o in dataset.list_objects(["d_cells"], keys=["d_cells#300"])] == ["d_cells#300"]
    assert len(dataset.list_objects(["d_cells"], max_instances=1)) == 1
    with pytest.raises(KeyError):
        dataset.select(ids=["nope"])
    (dataset.root / "ids.txt").write_text("d_cells\na_disk\n")
    assert SegmentationDataset(dataset.root).ids == ["d_cells", "a_disk"]


def test_shared_datasets_load() -> None:
    root = SHARED / "datasets"
    if not root.is_dir():
        pytest.skip(f"{root} is not available (the ../shared datasets sit beside the repository in CI)")
    grabcut = SegmentationDataset(root / "grabcut")
    assert len(grabcut) == 50
    obj = grabcut.list_objects(["banana1"])[0]
    assert set(np.unique(grabcut.target(obj, grabcut.load_mask("banana1"))).tolist()) == {0, 1, 255}
    dsb = SegmentationDataset(root / "dsb2018")
    first = dsb.ids[0]
    assert len(dsb.list_objects([first])) == int(dsb.load_mask(first).max())
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        stardist = SegmentationDataset(root / "stardist_fixture").list_objects(skip_invalid=True)
    assert stardist and all(o.image_id == "nuclei2d" for o in stardist)  # the 3D stack is skipped


# ---------------------------------------------------------------------------------------------- the click loop
def test_every_step_runs_even_without_a_new_click() -> None:
    gt = np.zeros((30, 40), np.uint8)
    gt[5:20, 8:30] = 1
    oracle = CountingOracle()
    features, geometry = oracle.embed(np.zeros((30, 40, 3), np.uint8))
    embedding = ImageEmbedding(features, geometry, "k")
    result = evaluate_object(oracle, embedding, gt, Protocol(n_clicks=6), EvalObject("x", "x"))
    assert result.ious == [1.0] * 6
    y, x, label = result.clicks[0]
    assert (y, label) == (12, 1) and 15 <= x <= 22  # on the ridge of the box, positive
    assert result.clicks[1:] == [None] * 5  # nothing left to correct: no click, but the model still ran
    assert oracle.calls == [(1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (1, 5)]  # state carried step to step
    assert len(result.timings) == 6 and all("predict" in t and "click" in t for t in result.timings)


def test_disk_backend_improves_with_clicks() -> None:
    gt = np.zeros((40, 50), np.uint8)
    gt[8:32, 10:40] = 1
    backend = DiskBackend()
    features, geometry = backend.embed(np.zeros((40, 50, 3), np.uint8))
    result = evaluate_object(backend, ImageEmbedding(features, geometry, "k"), gt, Protocol(n_clicks=15),
                             EvalObject("box", "box"))
    assert result.n_clicks_placed == 15 and result.clicks[0][2] == 1
    assert result.ious[-1] > result.ious[0] > 0
    assert all(0.0 <= v <= 1.0 for v in result.ious)


def test_runner_with_oracle_files_and_resume(dataset: SegmentationDataset, tmp_path: Path) -> None:
    out = tmp_path / "out"
    protocol = Protocol(n_clicks=5)
    run = evaluate(CountingOracle(), dataset, out, protocol, progress=False)
    assert run.computed == 5 and run.reused == 0 and not run.failed
    summary = run.summary
    assert summary["n_objects"] == 5 and summary["noc"] == {"85": 1.0, "90": 1.0, "95": 1.0}
    assert summary["miou"] == {str(k): 1.0 for k in (1, 2, 3, 4, 5)}
    assert summary["delta_iou"]["n_drops"] == 0 and summary["clicks_placed_mean"] == 1.0
    folder = out / "oracle"
    for name in ("objects.jsonl", "objects.csv", "summary.json", "config.json"):
        assert (folder / name).is_file()
    assert (out / "summary.md").is_file()
    assert json.loads((folder / "config.json").read_text())["protocol"]["n_clicks"] == 5
    assert len((folder / "objects.csv").read_text().splitlines()) == 6
    # resume: nothing is recomputed
    again = evaluate(CountingOracle(), dataset, out, protocol, progress=False)
    assert again.computed == 0 and again.reused == 5 and again.summary["noc"] == summary["noc"]
    # an interrupted write: the last line is cut, that object alone is evaluated again
    path = folder / OBJECTS_JSONL
    data = path.read_bytes()
    path.write_bytes(data[:-20])
    resumed = evaluate(CountingOracle(), dataset, out, protocol, progress=False)
    assert resumed.computed == 1 and resumed.reused == 4
    assert len(read_results(path)) == 5 and path.read_bytes().count(b"\n") == 5
    # another protocol into the same folder is refused, unless overwritten
    with pytest.raises(ValueError, match="another run"):
        evaluate(CountingOracle(), dataset, out, Protocol(n_clicks=7), progress=False)
    fresh = evaluate(CountingOracle(), dataset, out, Protocol(n_clicks=7), progress=False, overwrite=True)
    assert fresh.computed == 5 and fresh.summary["n_clicks"] == 7


def test_two_backends_compared_and_plotted(dataset: SegmentationDataset, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from napari_focsam.evaluation.plots import plot_folder

    out = tmp_path / "out"
    protocol = Protocol(n_clicks=8)
    evaluate(OracleBackend(), dataset, out, protocol, progress=False)
    run = evaluate(DiskBackend(), dataset, out, protocol, progress=False, limit=2)
    assert run.summary["n_objects"] == 2
    table = (out / "summary.md").read_text()
    assert "Oracle" in table and "Disks" in table and "2 objects" in table  # compared on the common objects
    paths = plot_folder(out, "toy")
    assert [p.name for p in paths] == ["miou_vs_clicks.png", "noc.png", "delta_iou.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_cli_with_oracle(dataset: SegmentationDataset, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    status = cli_main(["--dataset", str(dataset.root), "--model", "oracle", "--clicks", "3", "--out", str(out),
                       "--ids", "a_disk", "d_cells#300", "--no-progress", "--official", "--no-plots"])
    assert status == 0
    assert set(read_results(out / "oracle" / OBJECTS_JSONL)) == {"a_disk", "d_cells#300"}
    assert "NoC@90" in capsys.readouterr().out
    config = json.loads((out / "oracle" / "config.json").read_text())
    assert config["protocol"]["ignore_mode"] == "none" and config["model"] == "oracle"
    import argparse

    from napari_focsam.evaluation.cli import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "--dataset", "x", "--model", "sam_vit_b", "--limit", "3"])
    assert args.func is not None and args.clicks == 20 and args.limit == 3 and args.ignore_mode == "clicks"


def test_float32_flag_turns_the_fast_defaults_off() -> None:
    import argparse

    import torch

    from napari_focsam.evaluation.cli import load_predictor, register
    from napari_focsam.models.fast_decoder import default_decoder_dtype
    from napari_focsam.models.fast_encoder import default_encoder_dtype

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    common = ["evaluate", "--dataset", "x", "--model", "sam_tiny", "--allow-random-weights", "--device", "cpu"]
    fast = load_predictor(parser.parse_args(common))
    exact = load_predictor(parser.parse_args(common + ["--float32"]))
    assert fast.encoder_dtype == default_encoder_dtype("cpu")
    assert fast.decoder_upscale_dtype == fast.decoder_attention_dtype == default_decoder_dtype("cpu")
    assert exact.encoder_dtype == exact.decoder_upscale_dtype == exact.decoder_attention_dtype == torch.float32


# ---------------------------------------------------------------------------------------------- a real backend
def _real_predictor() -> tuple[object, int]:
    """The weight-free fallback when it exists (20 clicks), else tiny SAM with random weights (3 clicks)."""
    from napari_focsam.engine.manager import ModelManager

    try:
        return ModelManager.load("fallback").predictor, 20
    except ImportError:
        return ModelManager.load("sam_tiny", allow_random_weights=True, device="cpu").predictor, 3


def test_short_real_run_on_grabcut(tmp_path: Path) -> None:
    root = SHARED / "datasets" / "grabcut"
    if not root.is_dir():
        pytest.skip(f"{root} is not available (the ../shared datasets sit beside the repository in CI)")
    predictor, n_clicks = _real_predictor()
    dataset = SegmentationDataset(root)
    run = evaluate(predictor, dataset, tmp_path, Protocol(n_clicks=n_clicks), limit=3, progress=False)
    assert run.computed == 3 and not run.failed
    results = read_results(run.folder / OBJECTS_JSONL)
    assert list(results) == dataset.ids[:3]
    for result in results.values():
        assert len(result.ious) == n_clicks and all(0.0 <= v <= 1.0 for v in result.ious)
        assert result.clicks[0] is not None and result.clicks[0][2] == 1  # the first click is positive
        assert result.encoder_s > 0 and all(t["predict"] > 0 for t in result.timings)
    assert run.summary["spc"]["spc"] > 0 and 1 <= run.summary["noc"]["90"] <= n_clicks
