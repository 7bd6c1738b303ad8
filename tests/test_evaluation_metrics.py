"""The metrics on synthetic IoU sequences, and the protocol's ignore policies."""

from __future__ import annotations

import numpy as np
import pytest

from napari_focsam.evaluation.metrics import (
    delta_iou,
    delta_iou_stats,
    iou,
    mean_iou_curve,
    miou_at,
    noc,
    noc_per_object,
    nof,
    spc,
)
from napari_focsam.evaluation.protocol import Protocol


def test_iou_foreground_and_ignore_option() -> None:
    gt = np.array([[1, 1, 0, 255], [0, 0, 0, 255]], np.uint8)
    pred = np.array([[1, 0, 0, 1], [0, 0, 0, 1]], bool)
    assert iou(pred, gt) == pytest.approx(1 / 4)  # the paper's: 255 is background, predicting it is an error
    assert iou(pred, gt, ignore=gt == 255) == pytest.approx(1 / 2)  # RITM: 255 left out
    assert iou(gt == 1, gt) == 1.0
    assert iou(np.zeros((3, 3)), np.zeros((3, 3))) == 0.0  # empty union, as the official function
    with pytest.raises(ValueError):
        iou(np.zeros((2, 2)), np.zeros((2, 3)))


def test_noc_capped_at_the_number_of_clicks() -> None:
    ious = np.array([
        [0.50, 0.86, 0.91, 0.96, 0.97],  # 85 -> 2, 90 -> 3, 95 -> 4
        [0.95, 0.97, 0.98, 0.99, 0.99],  # 1 everywhere
        [0.10, 0.20, 0.30, 0.40, 0.50],  # never: capped at 5
        [0.10, 0.20, 0.30, 0.40, 0.949],  # reaches 85 and 90 only at the last click: 5; never 95: 5 (cap)
        [0.10, 0.20, 0.30, 0.80, 0.60],  # drops: never reaches 85 -> 5
    ])
    assert noc_per_object(ious, 0.85).tolist() == [2, 1, 5, 5, 5]
    assert noc_per_object(ious, 0.90).tolist() == [3, 1, 5, 5, 5]
    assert noc_per_object(ious, 0.95).tolist() == [4, 1, 5, 5, 5]
    assert noc(ious, 0.90) == pytest.approx(19 / 5)
    assert nof(ious, 0.90) == 2 and nof(ious, 0.95) == 3 and nof(ious, 0.5) == 0
    assert noc([[0.9]], 0.9) == 1.0 and noc([0.2, 0.95], 0.9) == 2.0
    # exactly the threshold counts as reached (>=), as the official code
    assert noc([[0.85, 0.90, 0.95]], 0.85) == 1.0


def test_noc_matches_the_official_formula() -> None:
    rng = np.random.default_rng(0)
    ious = np.sort(rng.random((50, 20)), axis=1) ** 0.3
    for threshold in (0.85, 0.90, 0.95):
        capped = ious.copy()
        capped[:, -1] = 1.0
        expected = float(np.mean(np.argmax(capped >= threshold, axis=-1).astype(np.float32))) + 1.0
        assert noc(ious, threshold) == pytest.approx(expected, abs=1e-6)


def test_miou_at_clicks() -> None:
    ious = np.tile(np.linspace(0.05, 1.0, 20), (3, 1))
    ious[1] *= 0.5
    assert miou_at(ious, 1) == pytest.approx((0.05 + 0.025 + 0.05) / 3)
    assert miou_at(ious, 20) == pytest.approx(2.5 / 3)
    np.testing.assert_allclose(mean_iou_curve(ious), ious.mean(axis=0))
    with pytest.raises(ValueError):
        miou_at(ious, 21)
    with pytest.raises(ValueError):
        miou_at(ious, 0)


def test_delta_iou_keeps_drops_of_at_least_one_percent() -> None:
    ious = np.array([
        [0.50, 0.80, 0.75, 0.70, 0.90, 0.895],  # deltas 0.3, -0.05, -0.05, 0.2, -0.005 -> 2 drops
        [0.60, 0.70, 0.80, 0.90, 0.95, 0.96],  # monotone: none
        [0.90, 0.10, 0.95, 0.95, 0.95, 0.95],  # one drop of -0.8
    ])
    drops, rows = delta_iou(ious)
    np.testing.assert_allclose(drops, [-0.05, -0.05, -0.8])
    assert rows.tolist() == [0, 0, 2]
    stats = delta_iou_stats(ious)
    assert stats.n_drops == 3 and stats.n_transitions == 15 and stats.n_objects == 3
    assert stats.objects_with_drop == pytest.approx(2 / 3)
    assert stats.worst_drop == pytest.approx(-0.8)
    assert stats.mean_drop == pytest.approx(-0.3)
    assert stats.median_drop == pytest.approx(-0.05)
    assert delta_iou_stats(np.ones((2, 5))).n_drops == 0


def test_spc_definition() -> None:
    # FocSAM-like: encoder 2 s per object, decoder 0.1 s per click (twice at step index 1), refiner 0.5 s once
    steps = [{"decoder": 0.1, "postprocess": 0.01, "predict": 0.12} for _ in range(5)]
    steps[1] = {"decoder": 0.2, "refiner": 0.5, "postprocess": 0.01, "predict": 0.72}
    result = spc([2.0, 2.0], [steps, steps])
    assert result.encoder == pytest.approx(0.4)
    assert result.decoder == pytest.approx(0.6 / 5)
    assert result.refiner == pytest.approx(0.1)
    assert result.spc == pytest.approx(0.4 + 0.12 + 0.1)
    assert result.interaction == pytest.approx(1.2 / 5)
    # a backend without decoder/refiner keys: its whole predict time (less post-processing) is decoder time
    fallback = spc([0.0], [[{"predict": 0.05}, {"predict": 0.07, "postprocess": 0.02}]])
    assert fallback.decoder == pytest.approx(0.05) and fallback.refiner == 0.0
    assert spc([], []).spc == 0.0


def test_protocol_ignore_modes_and_rng() -> None:
    gt = np.array([[0, 1, 255]], np.uint8)
    click, score = Protocol(ignore_mode="clicks").ignore_masks(gt)
    assert click.tolist() == [[False, False, True]] and score is None
    assert Protocol(ignore_mode="none").ignore_masks(gt) == (None, None)
    assert Protocol.official().ignore_mode == "none"
    click, score = Protocol(ignore_mode="all").ignore_masks(gt)
    assert click.tolist() == score.tolist() == [[False, False, True]]
    assert Protocol().ignore_masks(np.array([[0, 1]], np.uint8)) == (None, None)
    assert Protocol(tie_break="first").rng("a") is None
    a, b = Protocol().rng("a").integers(1 << 30, size=4), Protocol().rng("a").integers(1 << 30, size=4)
    assert a.tolist() == b.tolist()
    assert Protocol().rng("b").integers(1 << 30) != Protocol(seed=7).rng("b").integers(1 << 30)
    assert Protocol.from_dict(Protocol(n_clicks=100).to_dict()) == Protocol(n_clicks=100)
    with pytest.raises(ValueError):
        Protocol(ignore_mode="maybe")
    with pytest.raises(ValueError):
        Protocol(n_clicks=0)
