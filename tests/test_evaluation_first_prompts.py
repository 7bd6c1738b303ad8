"""Simulated first prompts (box, polygon, scribble, mask) and ``napari-focsam evaluate --first-prompt``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_evaluation_runner import _write_dataset

from napari_focsam.engine.prompt_shapes import check_extent
from napari_focsam.evaluation import OracleBackend, Protocol, SegmentationDataset, evaluate
from napari_focsam.evaluation.cli import main as cli_main
from napari_focsam.evaluation.first_prompts import (
    POLYGON_VERTICES,
    simulate_box,
    simulate_first_prompt,
    simulate_mask,
    simulate_polygon,
    simulate_scribble,
)
from napari_focsam.evaluation.results import OBJECTS_JSONL, read_results


def _blob() -> np.ndarray:
    yy, xx = np.indices((120, 160))
    gt = (((yy - 60) / 40.0) ** 2 + ((xx - 70) / 55.0) ** 2 <= 1).astype(np.uint8)
    gt[55:65, 120:150] = 1  # a handle
    gt[0:5, 0:5] = 1  # a speck: not the largest component
    return gt


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_simulated_prompts_follow_their_rules():
    gt = _blob()
    obj = gt == 1
    box = simulate_box(obj, np.random.default_rng(0))
    assert np.abs(box - [0, 0, 100, 149]).max() <= 20  # the bbox (speck included), each side within 20 px
    polygon = simulate_polygon(obj)
    assert 3 <= len(polygon) <= POLYGON_VERTICES
    check_extent(polygon, obj.shape, "polygon")
    region = simulate_first_prompt("polygon", gt, np.random.default_rng(0)).mask
    assert _iou(region, obj) > 0.85 and not region[:5, :5].any()
    stroke = simulate_scribble(obj)
    ys, xs = np.round(stroke).astype(int).T
    assert obj[ys, xs].all() and np.ptp(xs) > 60  # inside the object, along its long axis
    modes = {}
    for seed in range(12):
        mask, mode = simulate_mask(obj, np.random.default_rng(seed))
        modes[mode] = mask
    assert set(modes) == {"erode", "dilate", "coarse"}
    assert (modes["erode"] <= obj).all() and (modes["dilate"] >= obj).all() and modes["erode"].sum() < obj.sum()
    assert 0.7 < _iou(modes["coarse"], obj) < 1
    assert simulate_first_prompt("click", gt, np.random.default_rng(0)) is None
    with pytest.raises(ValueError, match="unknown first prompt"):
        simulate_first_prompt("lasso", gt, np.random.default_rng(0))


def test_tiny_objects_still_get_valid_prompts():
    for size in (1, 2, 3):
        gt = np.zeros((20, 20), np.uint8)
        gt[8:8 + size, 9:9 + size] = 1
        for kind in ("box", "polygon", "scribble", "mask"):
            prompts = simulate_first_prompt(kind, gt, np.random.default_rng(1))
            assert prompts.has_object, (size, kind)


def test_first_prompts_are_seeded_per_object_and_kind():
    protocol = Protocol(first_prompt="mask", seed=3)
    a = protocol.first_prompt_rng("img#1").random(3)
    assert np.array_equal(a, Protocol(first_prompt="mask", seed=3).first_prompt_rng("img#1").random(3))
    assert not np.array_equal(a, Protocol(first_prompt="mask", seed=4).first_prompt_rng("img#1").random(3))
    assert not np.array_equal(a, Protocol(first_prompt="box", seed=3).first_prompt_rng("img#1").random(3))
    assert "first_prompt" not in Protocol().to_dict()  # click runs keep the earlier protocol record
    assert Protocol.from_dict(protocol.to_dict()) == protocol
    with pytest.raises(ValueError, match="first_prompt must be one of"):
        Protocol(first_prompt="lasso")


def test_runner_uses_the_first_prompt_then_clicks(tmp_path: Path):
    dataset = SegmentationDataset(_write_dataset(tmp_path / "toy"))
    run = evaluate(OracleBackend(), dataset, tmp_path / "out", Protocol(n_clicks=3, first_prompt="scribble"),
                   name="oracle-scribble", progress=False)
    results = read_results(run.folder / OBJECTS_JSONL)
    assert run.summary["n_objects"] == len(results) > 0
    for result in results.values():
        assert result.clicks[0] is None and result.ious[0] == 1.0  # the oracle segments from the scribble alone
    config = json.loads((run.folder / "config.json").read_text())
    assert config["protocol"]["first_prompt"] == "scribble"


def test_cli_compares_every_first_prompt_with_the_fallback(tmp_path: Path, capsys: pytest.CaptureFixture):
    dataset = SegmentationDataset(_write_dataset(tmp_path / "toy"))
    out = tmp_path / "cli"
    args = ["--dataset", str(dataset.root), "--model", "fallback", "--clicks", "3", "--out", str(out),
            "--ids", "a_disk", "b_band", "--no-progress", "--first-prompt", "click", "box", "polygon", "scribble",
            "mask"]
    assert cli_main(args) == 0
    table = capsys.readouterr().out
    for kind in ("box", "polygon", "scribble", "mask"):
        assert f"first prompt: {kind} | 2 |" in table
        assert set(read_results(out / f"fallback_{kind}" / OBJECTS_JSONL)) == {"a_disk", "b_band"}
    assert {p.name for p in out.glob("*.png")} == {"miou_vs_clicks.png", "noc.png", "delta_iou.png"}
    first = {k: r.ious for k, r in read_results(out / "fallback_mask" / OBJECTS_JSONL).items()}
    assert cli_main(args + ["--overwrite", "--no-plots"]) == 0  # deterministic: the same IoUs again
    again = {k: r.ious for k, r in read_results(out / "fallback_mask" / OBJECTS_JSONL).items()}
    assert first == again


def test_box_first_prompt_is_skipped_for_click_only_models(tmp_path: Path, capsys: pytest.CaptureFixture):
    dataset = SegmentationDataset(_write_dataset(tmp_path / "toy"))
    status = cli_main(["--dataset", str(dataset.root), "--model", "focsam_tiny", "--allow-random-weights",
                       "--device", "cpu", "--clicks", "2", "--out", str(tmp_path / "o"), "--ids", "a_disk",
                       "--no-progress", "--no-plots", "--first-prompt", "box", "mask"])
    assert status == 1
    captured = capsys.readouterr()
    assert "skipped --first-prompt box" in captured.err and "first prompt: mask" in captured.out
