"""Polygons, scribbles and mask prompts: geometry, one undoable step each, FocSAM's hand-off, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.prompt_shapes import fill_polygon, mask_to_low_res, sample_stroke
from napari_focsam.engine.sam_predictor import REFINE_STEP
from napari_focsam.engine.types import Prompts


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(11)
    image = rng.integers(0, 60, (200, 300, 3), dtype=np.uint8)
    image[60:140, 100:220] += 150
    return image


@pytest.fixture(scope="module")
def focsam() -> ModelManager:
    return ModelManager.load("focsam_tiny", device="cpu", allow_random_weights=True)


@pytest.fixture(scope="module")
def sam() -> ModelManager:
    return ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True)


@pytest.fixture(scope="module")
def fallback() -> ModelManager:
    return ModelManager.load("fallback")


def _region() -> np.ndarray:
    mask = np.zeros((200, 300), bool)
    mask[70:130, 110:200] = True
    return mask


# ---------------------------------------------------------------- geometry
def test_polygon_fill_follows_the_nonzero_rule_and_the_top_left_convention():
    square = fill_polygon([[1, 1], [1, 8], [8, 8], [8, 1]], (10, 10))
    expected = np.zeros((10, 10), bool)
    expected[1:8, 1:8] = True  # centres on the bottom and right edges are out
    np.testing.assert_array_equal(square, expected)
    # a loop drawn twice is filled once (even-odd would leave it empty)
    twice = fill_polygon([[1, 1], [1, 8], [8, 8], [8, 1]] * 2, (10, 10))
    np.testing.assert_array_equal(twice, expected)
    # a figure eight is refused (crossing edges), see test_crossing_polygons_are_refused_...
    with pytest.raises(ValueError, match="crosses itself"):
        fill_polygon([[0, 0], [0, 9], [9, 0], [9, 9]], (10, 10))
    # against skimage's polygon fill (even-odd, same centres) on a simple polygon, away from the outline
    from skimage.draw import polygon2mask

    vertices = np.array([[10.3, 5.2], [60.7, 12.1], [45.2, 70.9], [20.5, 50.5]])
    ours = fill_polygon(vertices, (80, 80))
    theirs = polygon2mask((80, 80), vertices)
    assert (ours != theirs).sum() <= 0.02 * theirs.sum()


def test_scribble_sampling_takes_arc_length_centres():
    points = np.array([[0.0, 0.0], [0.0, 100.0]])
    np.testing.assert_allclose(sample_stroke(points, 25.0, 6), [[0, 12.5], [0, 37.5], [0, 62.5], [0, 87.5]])
    assert len(sample_stroke(points, 1.0, 6)) == 6  # capped
    np.testing.assert_allclose(sample_stroke(points, 500.0, 6), [[0, 50]])


@pytest.mark.parametrize("size", [(200, 300), (321, 481), (97, 50)])
def test_mask_logits_round_trip_through_the_models_post_processing(sam, focsam, size):
    """The low-resolution logits of a mask, brought back by the model's own post-processing, give the mask."""
    rng = np.random.default_rng(0)
    mask = np.zeros(size, bool)
    h, w = size
    mask[h // 5: 3 * h // 4, w // 6: 2 * w // 3] = True
    mask[rng.integers(0, h), :] = False
    for manager in (sam, focsam):
        predictor = manager.predictor
        geometry = predictor.transform.geometry(size)
        logits = mask_to_low_res(mask, geometry, 7.0)
        assert logits.shape == (1, 1, 256, 256) and float(logits.abs().max()) <= 7.0
        back = (predictor.transform.logits_to_original(logits, geometry) > 0)[0, 0].numpy()
        iou = (back & mask).sum() / (back | mask).sum()
        assert iou > 0.9, (predictor.name, iou)


# ---------------------------------------------------------------- steps, undo/redo
def test_every_kind_is_one_step_and_undo_redo_restores_exact_states(focsam, image):
    obj = focsam.new_object(image)
    actions = [
        lambda: obj.set_mask(_region()),
        lambda: obj.add_scribble([[100, 120], [110, 160], [100, 200]], positive=True),
        lambda: obj.click(150, 150, positive=False),
        lambda: obj.add_polygon([[60, 100], [60, 220], [140, 220]]),
        lambda: obj.add_scribble([[20, 20], [30, 40]], positive=False),
    ]
    states, masks, prompts = [], [], []
    for act in actions:
        masks.append(act().copy())
        states.append(obj.state)
        prompts.append(obj.prompts)
    assert obj.n_steps == 5 and obj.state.step == 5 and obj.is_refined
    refined = states[1].features
    assert states[0].features is None and refined is not None
    assert all(s.features is refined for s in states[1:])  # refined once, at step index 1, kept
    for k in range(4, -1, -1):
        assert obj.state is states[k] and obj.prompts is prompts[k]
        np.testing.assert_array_equal(obj.mask, masks[k])
        obj.undo()
    assert obj.state is None and obj.prompts.is_empty
    for k in range(5):
        obj.redo()
        assert obj.state is states[k] and torch.equal(obj.state.logits, states[k].logits)
    assert len(obj.prompts.scribbles) == 2 and obj.prompts.mask.sum() > _region().sum()


def test_dense_first_prompt_on_focsam_runs_the_refiner_once_at_the_second_step(focsam, image):
    refiner = focsam.predictor.model.refiner
    calls: list[int] = []
    handle = refiner.register_forward_hook(lambda *args: calls.append(1))
    try:
        obj = focsam.new_object(image)
        for step, act in enumerate([
            lambda: obj.add_polygon([[65, 105], [65, 210], [135, 215], [135, 110]]),
            lambda: obj.click(100, 150),
            lambda: obj.add_scribble([[150, 30], [180, 60]], positive=False),
            lambda: obj.set_mask(_region()),
        ]):
            act()
            assert len(calls) == (1 if step >= REFINE_STEP else 0), step
        assert obj.state.step == 4
        # a scribble first: the same rule
        calls.clear()
        other = focsam.new_object(image)
        other.add_scribble([[100, 120], [100, 200]])
        assert not calls and other.state.features is None
        other.add_scribble([[20, 20], [20, 60]], positive=False)
        assert len(calls) == 1 and other.is_refined
    finally:
        handle.remove()


def test_region_seeds_the_mask_input_once_then_the_models_logits_feed_back(sam, image):
    predictor = sam.predictor
    obj = sam.new_object(image)
    obj.set_mask(_region())
    first = obj.state
    geometry = obj.embedding.geometry
    points, labels, box, mask_input = predictor.model_inputs(obj.prompts, geometry, type(first)())
    torch.testing.assert_close(mask_input, mask_to_low_res(_region(), geometry, predictor.mask_logit_scale))
    np.testing.assert_array_equal(box, [70, 110, 129, 199])
    assert labels.tolist() == [1] and _region()[int(points[0, 0]), int(points[0, 1])]
    obj.click(100, 150)
    points, labels, box, mask_input = predictor.model_inputs(obj.prompts, geometry, first)
    assert mask_input is first.logits and labels.tolist() == [1, 1]
    # a new region re-seeds the mask input
    changed = obj.prompts.with_polygon([[10, 10], [10, 50], [50, 50]], (200, 300))
    _, _, _, mask_input = predictor.model_inputs(changed, geometry, obj.state)
    torch.testing.assert_close(mask_input, mask_to_low_res(changed.mask, geometry, predictor.mask_logit_scale))


def test_focsam_gets_no_box_from_a_region(focsam, image):
    obj = focsam.new_object(image)
    obj.set_mask(_region())
    _, labels, box, _ = focsam.predictor.model_inputs(obj.prompts, obj.embedding.geometry, obj.state)
    assert box is None and labels.tolist() == [1]


def test_sync_replays_box_region_scribbles_clicks_in_order(sam, image):
    target = (Prompts().with_box((60, 100, 140, 220)).with_mask(_region())
              .with_scribble([[100, 120], [100, 200]]).with_point(150, 150, False))
    a = sam.new_object(image)
    a.set_box((60, 100, 140, 220))
    a.set_mask(_region())
    a.add_scribble([[100, 120], [100, 200]])
    a.click(150, 150, positive=False)
    b = sam.new_object(image)
    b.sync(target)
    assert b.n_steps == 4
    torch.testing.assert_close(a.state.logits, b.state.logits, rtol=0, atol=0)
    # a prefix is kept: syncing to more scribbles adds one step
    steps_before = b.current
    b.sync(target.with_scribble([[20, 20], [30, 30]], positive=False))
    assert b.n_steps == 5 and b._history[3] is steps_before


def test_fallback_takes_every_kind(fallback, image):
    gt = np.zeros((200, 300), bool)
    gt[60:140, 100:220] = True

    def iou(mask: np.ndarray) -> float:
        return float((mask & gt).sum() / (mask | gt).sum())

    assert iou(fallback.new_object(image).add_polygon([[62, 103], [63, 217], [137, 217], [137, 102]])) > 0.95
    assert iou(fallback.new_object(image).add_scribble([[100, 120], [100, 200]])) > 0.95
    rough = np.zeros((200, 300), bool)
    rough[63:137, 104:216] = True  # 3-4 pixels inside the object's edges: within the region band
    assert iou(fallback.new_object(image).set_mask(rough)) > 0.95 > iou(rough)
    obj = fallback.new_object(image)
    obj.add_scribble([[100, 120], [100, 200]])
    obj.add_scribble([[70, 110], [130, 110]], positive=False)  # a negative stroke cuts the object's left part
    assert not obj.mask[100, 105] and obj.mask[100, 150]
    assert not fallback.new_object(image).add_scribble([[10, 10], [20, 20]], positive=False).any()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("manager_name", ["sam", "fallback"])
def test_bad_prompts_are_refused_and_change_nothing(request, image, manager_name):
    manager = request.getfixturevalue(manager_name)
    obj = manager.new_object(image)
    obj.click(100, 150)
    before, state, n = obj.prompts, obj.state, obj.n_steps
    wrong = np.zeros((100, 300), bool)
    wrong[10:20, 10:20] = True
    cases = [
        (lambda: obj.add_polygon([[10, 10], [50, 50], [90, 90]]), "zero area"),
        (lambda: obj.add_polygon([[10, 10], [10, 10], [20, 20]]), "at least 3 distinct"),
        (lambda: obj.add_polygon([[10.1, 10.1], [10.1, 10.3], [10.3, 10.3]]), "covers no pixel"),
        (lambda: obj.add_polygon([[10, 10], [10, 400], [50, 50]]), "outside the image of 200×300"),
        (lambda: obj.add_polygon([[10, np.nan], [10, 40], [50, 50]]), "finite"),
        (lambda: obj.add_scribble([[10, 10]]), "at least 2 distinct points"),
        (lambda: obj.add_scribble([[10, 10], [10, 10]]), "use a click"),
        (lambda: obj.add_scribble([[10, 10], [-5, 10]]), "outside the image"),
        (lambda: obj.set_mask(wrong), "the mask is 100×300 but the image is 200×300"),
        (lambda: obj.set_mask(np.zeros((200, 300), bool)), "empty"),
        (lambda: obj.set_mask(np.full((200, 300), 3, np.uint8)), "labels == label_id"),
        (lambda: obj.set_mask(np.ones((200, 300, 3), bool)), "2D"),
        (lambda: obj.click(250, 10), "outside the image"),
    ]
    for act, message in cases:
        with pytest.raises(ValueError, match=message):
            act()
        assert obj.prompts is before and obj.state is state and obj.n_steps == n and not obj.can_redo


def test_a_bow_tie_polygon_is_refused_and_the_object_unchanged(fallback, image):
    obj = fallback.new_object(image)
    obj.click(100, 160)
    with pytest.raises(ValueError, match="the polygon crosses itself"):
        obj.add_polygon([[60, 100], [60, 220], [140, 100], [140, 220]])  # a bow tie
    assert obj.n_steps == 1 and obj.prompts.mask is None


def test_napari_shapes_data_become_prompts():
    from napari_focsam.engine.prompt_shapes import prompts_from_shapes, shape_to_prompt

    square = np.array([[10.0, 10.0], [10.0, 40.0], [40.0, 40.0], [40.0, 10.0]])
    assert shape_to_prompt(square, "rectangle")[0] == "polygon"
    assert shape_to_prompt(np.vstack([square, square[:1] + 0.5]), "path")[0] == "polygon"  # a closed lasso
    assert shape_to_prompt(square, "path")[0] == "scribble"
    assert shape_to_prompt(np.c_[np.zeros(4), square], "line")[1].shape == (4, 2)  # leading axes dropped
    kind, ellipse = shape_to_prompt(square, "ellipse")
    assert kind == "polygon" and len(ellipse) == 64
    prompts = prompts_from_shapes(Prompts(), [square, square + 50, [[5, 5], [5, 90]]],
                                  ["ellipse", "polygon", "path"], (100, 100), positive=False)
    assert prompts.mask[25, 25] and prompts.mask[75, 75] and not prompts.mask[11, 11]
    assert len(prompts.scribbles) == 1 and not prompts.scribbles[0].positive
    with pytest.raises(ValueError, match="outside the image"):
        prompts_from_shapes(Prompts(), [[[5, 5], [5, 190]]], ["path"], (100, 100))
    with pytest.raises(ValueError, match="not a prompt"):
        shape_to_prompt(square, "star")


def test_crossing_polygons_are_refused_and_an_overshooting_lasso_is_cut_at_its_crossing() -> None:
    from napari_focsam.engine.prompt_shapes import fill_polygon, simple_polygon

    with pytest.raises(ValueError, match=r"the polygon crosses itself \(edges 1 and 3 cross at y=40.0, x=40.0\)"):
        fill_polygon([[20, 20], [60, 60], [20, 60], [60, 20]], (100, 100))
    square = np.array([[10, 10], [10, 50], [50, 50], [50, 10]], float)
    assert simple_polygon(square) is square  # no crossing: unchanged
    from _widget_support import overshooting_lasso

    lasso = overshooting_lasso()
    loop = simple_polygon(lasso)
    assert 0 < len(lasso) - len(loop) <= len(lasso) // 4  # the ends past the crossing are dropped
    filled = fill_polygon(lasso, (120, 160))
    np.testing.assert_array_equal(filled, fill_polygon(loop, (120, 160)))
    assert filled[60, 70] and filled.sum() > 0.9 * np.pi * 30**2 and not filled[60, 110]
