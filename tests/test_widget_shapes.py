"""Polygons, lassos, scribbles and existing labels as prompts in a real viewer: each drawn as napari's Shapes tools
add them, each one step of the object with its mask written at once; undo/redo across kinds (FocSAM's refined
embedding included), one refiner run for a dense first prompt, refine-this-label, and shapes that are no prompt."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from _widget_support import annotator, disc_image  # noqa: E402

from napari_focsam.engine.manager import ModelManager  # noqa: E402
from napari_focsam.engine.session import ObjectSession  # noqa: E402
from napari_focsam.engine.threads import threads_for  # noqa: E402
from napari_focsam.plugin import shape_input as shape_input_module  # noqa: E402

pytestmark = pytest.mark.gui

TRIANGLE = [[35, 45], [35, 95], [85, 70]]
STROKE = [[50, 60], [60, 70], [70, 80]]
BACKGROUND_STROKE = [[10, 10], [10, 40]]


@pytest.fixture(scope="module")
def sam_manager() -> ModelManager:
    return ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True)


@pytest.fixture(scope="module")
def focsam_manager() -> ModelManager:
    return ModelManager.load("focsam_tiny", device="cpu", allow_random_weights=True)


@pytest.fixture
def shown(monkeypatch):
    messages = []
    monkeypatch.setattr(shape_input_module, "show_warning", messages.append)
    monkeypatch.setattr(shape_input_module, "show_info", messages.append)
    return messages


def _engine(manager, image, *steps) -> ObjectSession:
    """The same steps through the engine's API (contrast limits as napari shows uint8, the widget's threads)."""
    session = ObjectSession(manager.predictor, manager.embed(image, contrast_limits=(0, 255)))
    with threads_for("interactive"):
        for name, *args in steps:
            getattr(session, name)(*args)
    return session


def test_each_kind_drawn_on_the_shapes_layer_is_one_step_written_at_once(make_napari_viewer, sam_manager):
    viewer = make_napari_viewer()
    image = disc_image()
    widget = annotator(viewer, sam_manager, image)
    c = widget.controller
    shapes = c.boxes
    assert shapes.name == "FocSAM shapes" and widget.boxes_combo.currentData() is shapes
    shapes.add(np.array(TRIANGLE, float), shape_type="polygon")  # what the polygon tool adds
    c.wait()
    session = c.session()
    assert session.n_steps == 1 and session.prompts.mask is not None
    expected = _engine(sam_manager, image, ("add_polygon", TRIANGLE))
    np.testing.assert_array_equal(c.labels.data == 1, expected.mask)
    assert expected.mask.any()

    shapes.feature_defaults = {"positive": False}  # a stroke started with Shift: negative
    shapes.add(np.array(BACKGROUND_STROKE, float), shape_type="path")
    c.wait()
    expected = _engine(sam_manager, image, ("add_polygon", TRIANGLE), ("add_scribble", BACKGROUND_STROKE, False))
    session = c.session()
    assert session.n_steps == 2 and [s.positive for s in session.prompts.scribbles] == [False]
    np.testing.assert_array_equal(c.labels.data == 1, expected.mask)
    np.testing.assert_array_equal(shapes.edge_color[1], [1.0, 0.25, 0.25, 1.0])  # drawn red like a negative click

    c.click(60, 70)
    c.wait()  # (requests made while a job runs coalesce: then box, region, scribbles, clicks is the order)
    c.scribble(STROKE)  # positive, via the layer
    c.wait()
    # a second polygon grows the region by one step (a closed path is a lasso: a polygon)
    lasso = [[20, 100], [20, 130], [50, 130], [50, 100], [20.5, 100.5]]
    shapes.add(np.array(lasso, float), shape_type="path")
    c.wait()
    session = c.session()
    assert session.n_steps == 5
    region = session.prompts.mask
    assert region[30, 110] and region[60, 70] and not region[10, 10]
    expected = _engine(sam_manager, image, ("add_polygon", TRIANGLE), ("add_scribble", BACKGROUND_STROKE, False),
                       ("click", 60, 70), ("add_scribble", STROKE, True), ("add_polygon", lasso))
    np.testing.assert_array_equal(c.labels.data == 1, expected.mask)


def test_undo_redo_across_kinds_restores_exact_states_and_shapes(make_napari_viewer, focsam_manager):
    viewer = make_napari_viewer()
    image = disc_image()
    widget = annotator(viewer, focsam_manager, image)
    c = widget.controller
    refiner = focsam_manager.predictor.model.refiner
    calls = []
    handle = refiner.register_forward_hook(lambda *args: calls.append(1))
    try:
        c.polygon(TRIANGLE)  # a dense first prompt
        c.wait()
        assert calls == [] and not c.session().is_refined
        c.click(60, 70)  # the second step: the refiner runs once
        c.wait()
        assert calls == [1] and c.session().is_refined
        c.scribble(BACKGROUND_STROKE, positive=False)
        c.wait()
        c.polygon([[20, 100], [20, 130], [50, 115]])
        c.wait()
        assert calls == [1]  # once, at the second step, whatever comes later
    finally:
        handle.remove()
    session = c.session()
    assert session.n_steps == 4
    states = [step for step in session._history]
    labels = [c.labels.data.copy()]
    layers = [(len(c.points.data), len(c.boxes.data))]
    for _ in range(4):
        c.undo()
        labels.append(c.labels.data.copy())
        layers.append((len(c.points.data), len(c.boxes.data)))
    assert layers == [(1, 3), (1, 2), (1, 1), (0, 1), (0, 0)]
    assert not labels[-1].any()
    for k in range(1, 5):
        c.redo()
        np.testing.assert_array_equal(c.labels.data, labels[4 - k])
        assert c.session().current is states[k - 1]  # the very step: logits and refined embedding
    assert (len(c.points.data), len(c.boxes.data)) == (1, 3)
    # after undoing two steps, drawing again continues from the step in effect (nothing recomputed before it)
    c.undo()
    c.undo()
    kept = c.session().current
    c.scribble(STROKE)
    c.wait()
    assert c.session().n_steps == 3 and c.session()._history[1] is kept
    assert c.session().current.prediction.state.features is kept.prediction.state.features


def test_commit_cancel_and_reopen_with_shapes(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = annotator(viewer, ModelManager.load("fallback"), disc_image())
    c = widget.controller
    c.polygon(TRIANGLE)
    c.wait()
    assert (c.labels.data == 1).any()
    c.commit()
    assert len(c.boxes.data) == 0 and c.object_id == 2
    committed = c.labels.data.copy()
    c.scribble([[5, 120], [40, 150]])
    c.wait()
    assert (c.labels.data == 2).any()
    c.cancel()
    assert len(c.boxes.data) == 0
    np.testing.assert_array_equal(c.labels.data, committed)
    c.reopen(1)  # the polygon comes back on the layer, the object continues
    assert c.object_id == 1 and len(c.boxes.data) == 1 and c.boxes.shape_type == ["polygon"]
    c.click(60, 70)
    c.wait()
    assert c.session().n_steps == 2 and c.session().prompts.mask is not None


def test_refine_this_label(make_napari_viewer, sam_manager):
    viewer = make_napari_viewer()
    image = disc_image()
    widget = annotator(viewer, sam_manager, image)
    c = widget.controller
    yy, xx = np.mgrid[:120, :160]
    rough = (yy - 60) ** 2 + (xx - 70) ** 2 < 20**2
    c.labels.data[rough] = 7
    c.labels.data[0:5, 0:5] = 3  # another object: kept (the random model's masks reach there)
    c.labels.refresh()
    before = c.labels.data.copy()
    free = before != 3
    c.labels.selected_label = 7
    widget.buttons["refine_label"].click()
    c.wait()
    assert c.object_id == 7
    session = c.session()
    assert session.n_steps == 1 and np.array_equal(session.prompts.mask, rough)
    expected = _engine(sam_manager, image, ("set_mask", rough))
    np.testing.assert_array_equal(c.labels.data == 7, expected.mask & free)
    assert (c.labels.data[0:5, 0:5] == 3).all()
    c.click(60, 70)  # further clicks refine it
    c.wait()
    expected = _engine(sam_manager, image, ("set_mask", rough), ("click", 60, 70))
    np.testing.assert_array_equal(c.labels.data == 7, expected.mask & free)
    c.undo()
    c.undo()  # back before the mask: the label as it was is gone from the object, redo brings it back
    c.redo()
    assert c.session().n_steps == 1 and np.array_equal(c.session().prompts.mask, rough)
    c.cancel()  # the label goes back to what it was
    np.testing.assert_array_equal(c.labels.data, before)
    c.refine_label(7)
    c.click(60, 70)
    c.wait()
    c.commit()  # written back under the same id
    assert c.object_id == 8
    np.testing.assert_array_equal(c.labels.data == 7, expected.mask & free)


def test_refine_label_and_masks_from_python_say_what_is_wrong(make_napari_viewer, shown):
    viewer = make_napari_viewer()
    widget = annotator(viewer, ModelManager.load("fallback"), disc_image())
    c = widget.controller
    c.refine_label(4)
    c.wait()
    assert "label 4 is not in the Labels layer" in shown[-1] and not c.labels.data.any() and c.object_id == 1
    c.set_mask(np.ones((10, 10), bool))
    c.wait()
    assert "the mask is 10×10 but the image is 120×160" in shown[-1] and not c.labels.data.any()
    mask = np.zeros((120, 160), bool)
    mask[40:80, 50:90] = True
    c.set_mask(mask)
    c.wait()
    assert (c.labels.data == 1).any() and c.session().n_steps == 1


@pytest.mark.parametrize("kind, data, message", [
    ("polygon", [[10, 10], [20, 20], [30, 30]], "zero area"),
    ("polygon", [[10, 10], [10, 300], [60, 100]], "outside the image"),
    ("path", [[20, 20], [20, 20]], "at least 2 distinct points"),
    ("path", [[20, 20], [-30, 40]], "outside the image"),
])
def test_shapes_that_are_no_prompt_are_refused_and_change_nothing(make_napari_viewer, shown, kind, data, message):
    viewer = make_napari_viewer()
    widget = annotator(viewer, ModelManager.load("fallback"), disc_image())
    c = widget.controller
    c.click(60, 70)
    c.wait()
    before, steps = c.labels.data.copy(), c.session().n_steps
    c.boxes.add(np.array(data, float), shape_type=kind)
    c.wait()
    assert shown and message in shown[-1] and "the object is unchanged" in shown[-1]
    assert message in widget.status.text()
    assert len(c.boxes.data) == 0 and c.session().n_steps == steps
    np.testing.assert_array_equal(c.labels.data, before)


def test_a_self_intersecting_lasso_is_filled_where_it_loops_with_a_note(make_napari_viewer, shown):
    viewer = make_napari_viewer()
    widget = annotator(viewer, ModelManager.load("fallback"), disc_image())
    c = widget.controller
    c.polygon([[20, 20], [60, 60], [20, 60], [60, 20]])  # a bow tie
    c.wait()
    assert any("crosses itself" in m for m in shown)
    region = c.session().prompts.mask
    assert region[40, 25] and region[40, 55] and not region[30, 40]


def test_a_path_drawn_with_the_mouse_and_shift_is_a_negative_scribble(make_napari_viewer):
    test_utils = pytest.importorskip("napari.utils._test_utils")
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

    viewer = make_napari_viewer()
    widget = annotator(viewer, ModelManager.load("fallback"), disc_image())
    c = widget.controller
    c.click(60, 70)
    c.wait()
    viewer.layers.selection.active = c.boxes
    c.boxes.mode = "add_path"

    def event(kind, position, dragging=False, modifiers=()):
        return test_utils.read_only_mouse_event(type=kind, position=position, is_dragging=dragging,
                                                modifiers=modifiers, pos=np.array(position) * 20)

    mouse_press_callbacks(c.boxes, event("mouse_press", (10, 10), modifiers=("Shift",)))
    for x in (20, 30, 40):
        mouse_move_callbacks(c.boxes, event("mouse_move", (10, x), dragging=True))
    mouse_release_callbacks(c.boxes, event("mouse_release", (10, 40)))
    c.wait()
    scribbles = c.session().prompts.scribbles
    assert len(scribbles) == 1 and not scribbles[0].positive and c.session().n_steps == 2
