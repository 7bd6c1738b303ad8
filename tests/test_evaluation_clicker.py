"""The click simulator: the official golden cases, exactness of the distances, and hand-made masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_focsam.evaluation.clicker import (
    NEGATIVE,
    NO_CLICK,
    POSITIVE,
    ClickSimulator,
    analyse_errors,
    choose_candidate,
    next_click,
    squared_distance_to_outside,
)
from napari_focsam.evaluation.protocol import Protocol

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN = SHARED / "reference" / "golden" / "clicker_cases.npz"


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    if not GOLDEN.is_file():
        pytest.skip(f"{GOLDEN} is not available (the ../shared reference data sits beside the repository in CI)")
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


def _case(golden: dict[str, np.ndarray], i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    n = int(golden["n_clicks"][i])
    clicked = golden["clicks_y_x_pos"][i, :n, :2].astype(np.int64)
    start, stop = golden["cand_offsets"][i], golden["cand_offsets"][i + 1]
    return golden["pred"][i], golden["gt"][i], clicked, golden["cand_yx"][start:stop].astype(np.int64)


# ---------------------------------------------------------------------------------------------- golden (official)
def test_golden_cases_reproduced_exactly(golden: dict[str, np.ndarray]) -> None:
    """Labels and candidate sets exactly, distances within 2e-6 (cv2's float32 noise), for all 50 cases."""
    n_cases = len(golden["label"])
    assert n_cases == 50
    for i in range(n_cases):
        pred, gt, clicked, candidates = _case(golden, i)
        analysis = analyse_errors(pred, gt, clicked)  # ignore=None: the official semantics (255 = not object)
        assert analysis.label == golden["label"][i] == golden["exact_label"][i], f"case {i}"
        np.testing.assert_array_equal(analysis.candidates, candidates.reshape(-1, 2), err_msg=f"case {i}")
        np.testing.assert_allclose(analysis.fn_dist, golden["fn_dist"][i], rtol=0, atol=2e-6, err_msg=f"case {i}")
        np.testing.assert_allclose(analysis.fp_dist, golden["fp_dist"][i], rtol=0, atol=2e-6, err_msg=f"case {i}")
        assert analysis.fn_max == pytest.approx(float(golden["exact_fn_max"][i]), abs=1e-12)
        assert analysis.fp_max == pytest.approx(float(golden["exact_fp_max"][i]), abs=1e-12)
        assert abs(analysis.fn_max - golden["fn_max"][i]) <= 2e-6 and abs(analysis.fp_max - golden["fp_max"][i]) <= 2e-6


def test_golden_chosen_click_is_a_candidate(golden: dict[str, np.ndarray]) -> None:
    protocol = Protocol()
    labels = []
    for i in range(len(golden["label"])):
        pred, gt, clicked, candidates = _case(golden, i)
        for rng in (None, protocol.rng(f"case{i}"), np.random.default_rng(i)):
            click = next_click(pred, gt, clicked, rng=rng)
            if golden["label"][i] == NO_CLICK:
                assert click is None
                continue
            assert click is not None and click.label == golden["label"][i]
            assert [click.y, click.x] in candidates.tolist(), f"case {i}"
        labels.append(int(golden["label"][i]))
    assert labels.count(NO_CLICK) == 2 and labels.count(POSITIVE) == 13 and labels.count(NEGATIVE) == 35


# ---------------------------------------------------------------------------------------------- exact distances
def _brute_force_d2(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    outside = np.argwhere(~padded)
    out = np.zeros(mask.shape, dtype=np.int64)
    for y, x in np.argwhere(mask):
        out[y, x] = ((outside - (y + 1, x + 1)) ** 2).sum(axis=1).min()
    return out


def test_squared_distances_are_exact() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        mask = rng.random((13, 17)) < rng.uniform(0.3, 0.95)
        np.testing.assert_array_equal(squared_distance_to_outside(mask), _brute_force_d2(mask))
    assert not squared_distance_to_outside(np.zeros((4, 5), bool)).any()


# ---------------------------------------------------------------------------------------------- hand-made masks
def _disk(shape: tuple[int, int], cy: int, cx: int, r: float) -> np.ndarray:
    yy, xx = np.indices(shape)
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def test_first_click_at_the_most_interior_point() -> None:
    gt = _disk((41, 61), 17, 25, 9)
    click = next_click(np.zeros_like(gt), gt)
    assert click is not None and click.positive
    assert (click.y, click.x) == (17, 25)
    assert click.distance == pytest.approx(np.sqrt(82))  # the nearest outside pixel is at offset (9, 1)


def test_ties_row_major_first_or_seeded_uniform() -> None:
    gt = np.zeros((20, 30), np.uint8)
    gt[4:9, 5:25] = 1  # 5 rows: the centre row 6 is the ridge, x = 7..22 are all at distance 3
    analysis = analyse_errors(np.zeros_like(gt), gt)
    assert analysis.candidates.tolist() == [[6, x] for x in range(7, 23)]
    assert choose_candidate(analysis.candidates) == (6, 7)
    picks = {choose_candidate(analysis.candidates, np.random.default_rng(s)) for s in range(200)}
    assert len(picks) > 10 and picks <= {(6, x) for x in range(7, 23)}
    protocol = Protocol()
    first = [next_click(np.zeros_like(gt), gt, rng=protocol.rng("obj")) for _ in range(2)]
    assert first[0] == first[1]  # the same object key gives the same generator, whatever ran before


def test_sign_rule_and_tie_goes_negative() -> None:
    gt = np.zeros((30, 40), np.uint8)
    gt[2:9, 2:9] = 1  # a 7x7 object, not predicted: FN with max distance 4
    pred = np.zeros_like(gt)
    pred[20:27, 20:27] = 1  # a 7x7 false positive: FP max distance 4 as well
    assert analyse_errors(pred, gt).label == NEGATIVE  # tie -> negative
    pred[20:27, 20:28] = 1  # wider FP, still max 4 -> negative
    assert next_click(pred, gt).positive is False
    pred[:] = 0
    pred[20:25, 20:25] = 1  # smaller FP (max 3) -> positive
    click = next_click(pred, gt)
    assert click.positive and (click.y, click.x) == (5, 5)
    pred[:] = 0
    pred[18:29, 18:29] = 1  # larger FP (max 6) -> negative, at its centre
    click = next_click(pred, gt)
    assert not click.positive and (click.y, click.x) == (23, 23)


def test_image_border_counts_as_outside() -> None:
    gt = np.ones((9, 11), np.uint8)  # the whole image is the object
    analysis = analyse_errors(np.zeros_like(gt), gt)
    assert analysis.candidates.tolist() == [[4, x] for x in range(4, 7)]
    assert analysis.fn_max == 5.0
    assert analysis.fn_d2[0, 0] == 1 and analysis.fn_d2[0, 5] == 1  # border pixels are 1 px from the outside
    gt = np.zeros((10, 20), np.uint8)
    gt[:, :4] = 1  # touching the left, top and bottom borders: the ridge is the column x = 1..2, not x = 0
    click = next_click(np.zeros_like(gt), gt)
    assert click.x in (1, 2) and 1 <= click.y <= 8


def test_ignore_pixels_are_never_clicked_and_bound_the_errors() -> None:
    gt = np.zeros((30, 30), np.uint8)
    gt[5:25, 5:25] = 1
    gt[3:5, 5:25] = 255  # an unknown band above the object
    pred = (gt > 0).astype(np.uint8)  # predicts the object and the band
    # official semantics: the band is background, so predicting it is an error and gets a negative click there
    click = next_click(pred, gt)
    assert click is not None and not click.positive and 3 <= click.y <= 4
    # with the band ignored there is nothing left to correct
    assert next_click(pred, gt, ignore=gt == 255) is None
    # ignored pixels split an error region like a boundary
    empty = np.zeros_like(gt)
    ignore = np.zeros(gt.shape, bool)
    ignore[14:16, :] = True
    plain, split = analyse_errors(empty, gt), analyse_errors(empty, gt, ignore=ignore)
    assert plain.fn_max == 10.0 and split.fn_max == 5.0
    assert not split.fn_d2[ignore].any()


def test_already_clicked_pixels_are_excluded() -> None:
    gt = np.zeros((20, 20), np.uint8)
    gt[10, 10] = 1
    pred = np.zeros_like(gt)
    assert next_click(pred, gt) is not None
    assert next_click(pred, gt, clicked=[(10, 10)]) is None  # its only error pixel was clicked: no click
    gt = _disk((41, 41), 20, 20, 8)
    first = next_click(pred := np.zeros_like(gt), gt)
    second = next_click(pred, gt, clicked=[(first.y, first.x)])
    assert (first.y, first.x) == (20, 20) and (second.y, second.x) != (20, 20)
    assert second.distance < first.distance  # the clicked pixel now bounds the region
    with pytest.raises(ValueError):
        next_click(pred, gt, clicked=[(41, 0)])


def test_no_click_when_prediction_is_right() -> None:
    gt = _disk((20, 25), 10, 12, 5)
    assert next_click(gt.copy(), gt) is None
    assert analyse_errors(gt.astype(bool), gt).label == NO_CLICK  # bool predictions count as 1
    full = np.ones_like(gt)
    click = next_click(full, np.zeros_like(gt))  # everything predicted, nothing is object: negative
    assert click is not None and not click.positive


def test_simulator_accumulates_clicks() -> None:
    gt = np.zeros((30, 40), np.uint8)
    gt[5:20, 5:30] = 1
    sim = ClickSimulator(gt)
    assert sim.step(np.zeros_like(gt)).positive
    pred = np.zeros_like(gt)
    pred[5:20, 5:35] = 1  # 5 columns too many
    second = sim.step(pred)
    assert not second.positive and second.x >= 30
    assert sim.step(gt.copy()) is None  # perfect: no click, nothing added
    assert sim.labels.tolist() == [1, 0] and sim.points.shape == (2, 2)
