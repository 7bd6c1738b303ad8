"""Stable-SAM's noisy-prompt protocol: simulated prompts, boundary IoU, ST, the runner and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_focsam.cli import main
from napari_focsam.engine.fallback import FallbackPredictor
from napari_focsam.evaluation.datasets import SegmentationDataset
from napari_focsam.evaluation.noisy import (
    NOISY_JSON,
    PROMPT_TYPES,
    NoisyProtocol,
    boundary_iou,
    evaluate_noisy,
    gt_box,
    simulate_prompt,
)


def _dataset(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for name, (y0, x0) in {"a": (10, 12), "b": (20, 30)}.items():
        image = rng.integers(0, 40, (60, 80, 3), dtype=np.uint8)
        mask = np.zeros((60, 80), np.uint8)
        mask[y0 : y0 + 25, x0 : x0 + 30] = 1
        image[mask == 1] += 180
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


def test_simulated_prompts_follow_the_documented_rules():
    gt = np.zeros((50, 70), np.uint8)
    gt[10:30, 20:50] = 1
    gt[8:10, 20:50] = 255  # an unknown band is never drawn from
    protocol = NoisyProtocol()
    assert gt_box(gt).tolist() == [10, 20, 29, 49]
    assert simulate_prompt(gt, "gt_box", protocol.rng("k", "gt_box", 0)).box.tolist() == [10, 20, 29, 49]
    boxes = [simulate_prompt(gt, "noisy_box", protocol.rng("k", "noisy_box", i)).box for i in range(30)]
    assert all(0 <= b[0] < b[2] <= 49 and 0 <= b[1] < b[3] <= 69 for b in boxes)
    assert len({tuple(b) for b in boxes}) == 30
    for n, kind in ((1, "1_point"), (3, "3_points"), (5, "5_points")):
        prompts = simulate_prompt(gt, kind, protocol.rng("k", kind, 0))
        ys, xs = prompts.points.astype(int).T
        assert len(prompts) == n and (gt[ys, xs] == 1).all() and (prompts.labels == 1).all()
        assert len({(y, x) for y, x in zip(ys, xs)}) == n
    again = simulate_prompt(gt, "3_points", protocol.rng("k", "3_points", 0))
    assert np.array_equal(again.points, simulate_prompt(gt, "3_points", protocol.rng("k", "3_points", 0)).points)


def test_boundary_iou():
    a = np.zeros((100, 100), bool)
    a[20:80, 20:80] = True
    assert boundary_iou(a, a) == 1.0
    shifted = np.roll(a, 3, axis=1)
    assert 0.0 < boundary_iou(shifted, a) < 0.9 < float((shifted & a).sum() / (shifted | a).sum())
    assert boundary_iou(np.zeros_like(a), a) == 0.0
    assert boundary_iou(np.zeros_like(a), np.zeros_like(a)) == 1.0


@pytest.mark.parametrize(("kwargs", "message"), [({"draws": 1}, "at least 2"), ({"types": ("box",)}, "unknown"),
                                                 ({"box_noise": 0}, r"\(0, 1\]"), ({"band": 0.7}, "band")])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoisyProtocol(**kwargs)


def test_runner_writes_a_table_per_prompt_type_with_and_without_robust_mode(tmp_path):
    dataset = SegmentationDataset(_dataset(tmp_path / "data"))
    summary = evaluate_noisy(FallbackPredictor(), dataset, tmp_path / "out", NoisyProtocol(draws=2),
                             progress=False)
    results = summary["results"]
    assert list(results) == list(PROMPT_TYPES)
    for kind in PROMPT_TYPES:
        for mode in ("plain", "robust"):
            row = results[kind][mode]
            assert row["n"] == 2 and 0 <= row["mbiou"] <= 100 and 0 < row["mst"] <= 100
    assert results["gt_box"]["plain"]["mst"] == 100.0  # the same box every draw
    assert results["5_points"]["plain"]["miou"] > 80  # a bright square in noise
    rows = (tmp_path / "out" / "fallback" / "noisy.jsonl").read_text().splitlines()
    assert len(rows) == 2 * len(PROMPT_TYPES) * 2


def test_cli_protocol_noisy(tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    code = main(["evaluate", "--dataset", str(data), "--protocol", "noisy", "--draws", "2", "--prompt-types",
                 "gt_box", "1_point", "--no-robust", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| gt box | 2 |" in printed and "| 1 point | 2 |" in printed
    summary = json.loads((tmp_path / "out" / "fallback" / NOISY_JSON).read_text())
    assert set(summary["results"]) == {"gt_box", "1_point"} and summary["protocol"]["robust"] is None
    assert (tmp_path / "out" / "fallback" / "noisy.png").is_file()
