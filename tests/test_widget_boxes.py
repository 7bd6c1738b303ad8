"""Box prompts from a Shapes layer in a real viewer: box alone, box + clicks, undo/redo, removal, commit, nD and
scaled layers, and models that take no boxes."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from _widget_support import annotator, disc_image  # noqa: E402

from napari_focsam.engine.manager import ModelManager  # noqa: E402
from napari_focsam.engine.threads import threads_for  # noqa: E402
from napari_focsam.plugin import prompt_input as prompt_input_module  # noqa: E402
from napari_focsam.plugin.widget import FocsamWidget  # noqa: E402

pytestmark = pytest.mark.gui



@pytest.fixture(scope="module")
def sam_manager() -> ModelManager:
    return ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True)


@pytest.fixture(scope="module")
def focsam_manager() -> ModelManager:
    return ModelManager.load("focsam_tiny", device="cpu", allow_random_weights=True)



def _expected(manager, image, points=(), labels=None, box=None) -> np.ndarray:
    """What the engine itself gives for these prompts (the contrast limits napari shows for uint8: 0..255), with the
    torch thread count the widget's clicks use (the same rounding)."""
    embedding = manager.embed(image, contrast_limits=(0, 255))
    with threads_for("interactive"):
        return manager.segment(embedding, points, labels, box=box)


def _remove_rows(layer, rows) -> None:
    layer.selected_data = set(rows)
    layer.remove_selected()


def test_the_boxes_layer_is_created_beside_the_clicks_layer(make_napari_viewer, sam_manager):
    viewer = make_napari_viewer()
    widget = annotator(viewer, sam_manager, disc_image())
    c = widget.controller
    assert isinstance(c.boxes, napari.layers.Shapes) and c.boxes.name == "FocSAM shapes"
    assert c.boxes.mode == "add_rectangle" and len(c.boxes.data) == 0
    assert widget.boxes_combo.currentData() is c.boxes
    assert viewer.layers.selection.active is c.points  # clicks still go to the clicks layer


def test_a_box_alone_segments_through_the_same_path_as_a_click(make_napari_viewer, sam_manager):
    viewer = make_napari_viewer()
    image = disc_image()
    widget = annotator(viewer, sam_manager, image)
    c = widget.controller
    c.box(30, 40, 90, 100)
    c.wait()
    session = c.session()
    np.testing.assert_allclose(session.prompts.box, [30, 40, 90, 100], atol=1e-4)
    assert len(session.prompts) == 0 and session.n_steps == 1
    expected = _expected(sam_manager, image, box=(30, 40, 90, 100))
    assert expected.any()
    np.testing.assert_array_equal(c.labels.data == 1, expected)
    # the latest rectangle on the slice is the box
    c.box(10, 10, 50, 60)
    c.wait()
    np.testing.assert_allclose(c.session().prompts.box, [10, 10, 50, 60], atol=1e-4)
    np.testing.assert_array_equal(c.labels.data == 1, _expected(sam_manager, image, box=(10, 10, 50, 60)))
    # a rectangle reaching outside the image is clipped to it
    c.box(-20, 100, 40, 400)
    c.wait()
    np.testing.assert_allclose(c.session().prompts.box, [0, 100, 40, 159], atol=1e-4)


def test_box_then_clicks_undo_redo_and_removing_the_box(make_napari_viewer, sam_manager):
    viewer = make_napari_viewer()
    image = disc_image()
    widget = annotator(viewer, sam_manager, image)
    c = widget.controller
    box = (30, 40, 90, 100)
    c.box(*box)
    c.wait()
    box_only = c.labels.data.copy()
    c.click(60, 70)
    c.wait()
    session = c.session()
    assert session.n_steps == 2 and session.prompts.box is not None and len(session.prompts) == 1
    np.testing.assert_array_equal(c.labels.data == 1, _expected(sam_manager, image, [(60, 70)], box=box))

    c.undo()  # the click goes, the box stays
    np.testing.assert_array_equal(c.labels.data, box_only)
    assert len(c.points.data) == 0 and len(c.boxes.data) == 1
    c.undo()  # the box step goes too: its rectangle leaves the layer
    assert not c.labels.data.any() and len(c.boxes.data) == 0
    c.redo()
    assert len(c.boxes.data) == 1
    np.testing.assert_array_equal(c.labels.data, box_only)
    c.redo()
    assert len(c.points.data) == 1 and c.session().n_steps == 2

    _remove_rows(c.boxes, [0])  # deleting the rectangle removes the box: the click alone decides
    c.wait()
    assert c.session().prompts.box is None
    np.testing.assert_array_equal(c.labels.data == 1, _expected(sam_manager, image, [(60, 70)]))


def test_removing_the_only_box_empties_the_object(make_napari_viewer, sam_manager):
    viewer = make_napari_viewer()
    widget = annotator(viewer, sam_manager, disc_image())
    c = widget.controller
    c.labels.data[0:4, 0:4] = 5  # a committed object elsewhere
    c.labels.refresh()
    c.object_id = 6
    c.box(30, 40, 90, 100)
    c.wait()
    assert (c.labels.data == 6).any()
    _remove_rows(c.boxes, [0])
    c.wait()
    assert not (c.labels.data == 6).any() and (c.labels.data[0:4, 0:4] == 5).all()


def test_commit_and_cancel_clear_the_boxes(make_napari_viewer, sam_manager):
    viewer = make_napari_viewer()
    widget = annotator(viewer, sam_manager, disc_image())
    c = widget.controller
    c.box(30, 40, 90, 100)
    c.wait()
    c.commit()
    assert len(c.boxes.data) == 0 and c.object_id == 2
    committed = c.labels.data.copy()
    c.box(5, 100, 60, 150)
    c.wait()
    assert (c.labels.data == 2).any()
    c.cancel()
    assert len(c.boxes.data) == 0
    np.testing.assert_array_equal(c.labels.data, committed)


def test_box_on_a_slice_of_a_scaled_stack_from_a_users_shapes_layer(make_napari_viewer, sam_manager):
    viewer = make_napari_viewer()
    stack = np.stack([disc_image(centre=(60, 40 + 5 * z)) for z in range(4)])
    viewer.add_image(stack, name="image", scale=(3.0, 2.0, 2.0), translate=(0.0, 10.0, -4.0))
    shapes = viewer.add_shapes(None, ndim=3, name="my boxes")  # scale 1, no offset: world = data coordinates
    widget = FocsamWidget(viewer)
    widget.controller.set_manager(sam_manager)
    widget.boxes_combo.setCurrentIndex(widget.boxes_combo.findData(shapes))
    widget.use_layers()
    c = widget.controller
    assert c.boxes is shapes
    viewer.dims.set_point(0, 6.0)  # world z of slice 2
    c.wait()
    assert c.index == (2,)
    # the pixel box (20, 30)-(80, 90) on slice 2, drawn in world coordinates: z = 2 * 3, y = 10 + 2 * row, ...
    world = np.array([[6.0, 10 + 2 * y, -4 + 2 * x] for y, x in ((20, 30), (20, 90), (80, 90), (80, 30))])
    shapes.add(world, shape_type="rectangle")
    c.wait()
    np.testing.assert_allclose(c.session().prompts.box, [20, 30, 80, 90], atol=1e-3)
    assert (c.labels.data[2] == 1).any() and not np.delete(c.labels.data, 2, axis=0).any()
    np.testing.assert_array_equal(c.labels.data[2] == 1, _expected(sam_manager, stack[2], box=(20, 30, 80, 90)))
    # a box drawn on another slice is that slice's box, not this one's
    c.box(20, 30, 80, 90, index=(1,))
    c.wait()
    assert not c.labels.data[1].any() and c.session().prompts.box is not None


def test_a_model_without_boxes_says_so_once_and_ignores_the_box(make_napari_viewer, focsam_manager, monkeypatch):
    shown = []
    monkeypatch.setattr(prompt_input_module, "show_warning", shown.append)
    viewer = make_napari_viewer()
    image = disc_image()
    widget = annotator(viewer, focsam_manager, image)
    c = widget.controller
    assert not focsam_manager.predictor.supports_boxes
    c.box(30, 40, 90, 100)
    c.wait()
    assert len(shown) == 1 and "clicks only" in shown[0] and "clicks only" in widget.status.text()
    assert not c.labels.data.any()  # nothing to segment from: the box is ignored
    c.click(60, 70)
    c.box(10, 10, 50, 60)
    c.wait()
    assert len(shown) == 1  # once
    session = c.session()
    assert session.prompts.box is None and session.n_steps == 1
    np.testing.assert_array_equal(c.labels.data == 1, _expected(focsam_manager, image, [(60, 70)]))
    c.undo()  # undo leaves the user's (ignored) rectangles alone
    assert len(c.boxes.data) == 2 and not c.labels.data.any()


def test_the_fallback_box_follows_what_the_fallback_supports(make_napari_viewer, monkeypatch):
    shown = []
    monkeypatch.setattr(prompt_input_module, "show_warning", shown.append)
    viewer = make_napari_viewer()
    manager = ModelManager.load("fallback")
    widget = annotator(viewer, manager, disc_image())
    c = widget.controller
    c.box(30, 40, 90, 100)
    c.wait()
    if manager.predictor.supports_boxes:
        mask = c.labels.data == 1
        assert mask.any() and not shown
        assert not mask[:30].any() and not mask[91:].any() and not mask[:, :40].any() and not mask[:, 101:].any()
    else:
        assert len(shown) == 1 and not c.labels.data.any()


def test_a_rectangle_drawn_with_the_mouse_is_the_box(make_napari_viewer, sam_manager):
    test_utils = pytest.importorskip("napari.utils._test_utils")  # napari's own mouse-event stand-in
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

    viewer = make_napari_viewer()
    stack = np.stack([disc_image(centre=(60, 40 + 5 * z)) for z in range(3)])
    widget = annotator(viewer, sam_manager, stack)
    c = widget.controller
    viewer.dims.set_current_step(0, 1)
    c.wait()
    viewer.layers.selection.active = c.boxes
    assert c.boxes.mode == "add_rectangle"
    updates = []
    real_update = c.update
    c.update = lambda: (updates.append(len(c.boxes.data)), real_update())

    def event(kind, position, dragging=False):
        return test_utils.read_only_mouse_event(type=kind, position=position, is_dragging=dragging,
                                                dims_displayed=[1, 2])

    mouse_press_callbacks(c.boxes, event("mouse_press", (1, 20, 30)))
    mouse_move_callbacks(c.boxes, event("mouse_move", (1, 50, 60), dragging=True))
    mouse_move_callbacks(c.boxes, event("mouse_move", (1, 80, 90), dragging=True))
    mouse_release_callbacks(c.boxes, event("mouse_release", (1, 80, 90)))
    c.wait()
    assert updates == [1]  # one request, when the drawing was finished, not while dragging
    np.testing.assert_allclose(c.session().prompts.box, [20, 30, 80, 90], atol=1e-3)
    np.testing.assert_array_equal(c.labels.data[1] == 1, _expected(sam_manager, stack[1], box=(20, 30, 80, 90)))
    assert not c.labels.data[0].any() and not c.labels.data[2].any()
