"""A click's job starts at the mouse press (before napari adds the point at the release): real Qt mouse events on a
real viewer's canvas. The mask is the one the added point gives, with one job; a press that becomes a drag (a pan)
writes nothing and leaves the object's session as it was."""

from __future__ import annotations

import numpy as np
import pytest
from _widget_support import annotator, disc_image
from qtpy.QtWidgets import QApplication

from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.threads import threads_for
from napari_focsam.plugin.mouse import mouse_click, mouse_move, mouse_press, mouse_release, world_of


@pytest.fixture(scope="module")
def sam_manager() -> ModelManager:
    return ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True)


def _expected(manager, image, points, labels) -> np.ndarray:
    embedding = manager.embed(image, contrast_limits=(0, 255))
    with threads_for("interactive"):
        return manager.segment(embedding, points, labels)


def _settle(c) -> None:
    c.wait()
    for _ in range(5):
        QApplication.processEvents()
    c.wait()


class Submits:
    """Counts the click jobs the controller submits."""

    def __init__(self, c) -> None:
        self.keys: list = []
        real = c.jobs.submit

        def submit(key, *args, **kwargs):
            self.keys.append(key)
            return real(key, *args, **kwargs)

        c.jobs.submit = submit


def _setup(viewer, manager):
    image = disc_image()
    widget = annotator(viewer, manager, image)
    c = widget.controller
    viewer.layers.selection.active = c.points
    assert c.points.mode == "add"
    return image, c


def test_the_job_starts_at_the_press_and_the_release_adopts_it(make_napari_viewer, sam_manager):
    viewer = make_napari_viewer(show=True)
    image, c = _setup(viewer, sam_manager)
    submits = Submits(c)
    where = world_of(c.image, (60, 70))
    mouse_press(viewer, where)
    assert len(submits.keys) == 1 and c.jobs.active(submits.keys[0])  # running before napari added anything
    assert len(c.points.data) == 0
    c.wait()
    QApplication.processEvents()
    assert not c.labels.data.any()  # held while the button is down
    mouse_release(viewer, where)
    assert len(c.points.data) == 1  # napari added the point
    _settle(c)
    assert len(submits.keys) == 1  # the point's request was the pressed one: no second job
    first = c.session().prompts.points  # where the canvas pixel under (60, 70) is
    np.testing.assert_allclose(first, [[60, 70]], atol=0.5)
    expected = _expected(sam_manager, image, first, [1])
    np.testing.assert_array_equal(c.labels.data == 1, expected)

    # a second click, negative with Shift, on the object: one more step, undo gives the first mask back
    mouse_click(viewer, world_of(c.image, (60, 100)), modifiers=("Shift",))
    _settle(c)
    assert len(submits.keys) == 2
    session = c.session()
    np.testing.assert_array_equal(session.prompts.labels, [1, 0])
    assert session.n_kept == 2 and not session.can_redo
    np.testing.assert_allclose(session.prompts.points[1], [60, 100], atol=0.5)
    np.testing.assert_array_equal(c.labels.data == 1, _expected(sam_manager, image, session.prompts.points, [1, 0]))
    c.undo()
    np.testing.assert_array_equal(c.labels.data == 1, expected)


def test_a_press_that_pans_writes_nothing_and_takes_its_step_back(make_napari_viewer, sam_manager):
    viewer = make_napari_viewer(show=True)
    _, c = _setup(viewer, sam_manager)
    c.click(60, 70)
    _settle(c)
    before = c.labels.data.copy()
    camera = tuple(viewer.scene.camera.center)
    mouse_press(viewer, world_of(c.image, (30, 30)))
    c.wait()  # the early job ran: the session held its step meanwhile
    mouse_move(viewer, world_of(c.image, (50, 60)))
    mouse_move(viewer, world_of(c.image, (70, 90)))
    mouse_release(viewer, world_of(c.image, (70, 90)))
    _settle(c)
    assert tuple(viewer.scene.camera.center) != camera  # napari panned
    assert len(c.points.data) == 1  # no point added
    np.testing.assert_array_equal(c.labels.data, before)
    session = c.session()
    np.testing.assert_allclose(session.prompts.points, [[60, 70]], atol=1e-6)
    assert session.n_kept == 1 and not session.can_redo  # nothing left to redo: the pan's step is gone
    c.redo()
    np.testing.assert_array_equal(c.labels.data, before)


def test_a_release_beside_the_press_gives_the_released_point(make_napari_viewer, sam_manager):
    viewer = make_napari_viewer(show=True)
    image, c = _setup(viewer, sam_manager)
    submits = Submits(c)
    step = 2.0 / viewer.scene.camera.zoom  # two canvas pixels, in image pixels
    press, release = world_of(c.image, (60, 70)), world_of(c.image, (60 + step, 70 + step))
    mouse_press(viewer, press)
    c.wait()
    mouse_move(viewer, release)  # a few canvas pixels: still a click for napari, at the release position
    mouse_release(viewer, release)
    _settle(c)
    assert len(c.points.data) == 1 and len(submits.keys) == 2  # the pressed job was not this point's
    session = c.session()
    point = session.prompts.points[0]
    np.testing.assert_allclose(point, [60 + step, 70 + step], atol=0.5 / viewer.scene.camera.zoom)
    assert session.n_kept == 1 and not session.can_redo
    np.testing.assert_array_equal(c.labels.data == 1, _expected(sam_manager, image, [point], [1]))


def test_a_press_does_not_start_early_where_it_could_not_be_taken_back(make_napari_viewer, sam_manager):
    viewer = make_napari_viewer(show=True)
    _, c = _setup(viewer, sam_manager)
    c.click(60, 70)
    c.click(60, 90)
    _settle(c)
    c.undo()  # a step to redo: a press must not drop it
    submits = Submits(c)
    where = world_of(c.image, (40, 40))
    mouse_press(viewer, where)
    assert submits.keys == []  # nothing started at the press
    mouse_release(viewer, where)
    _settle(c)
    assert len(submits.keys) == 1  # the added point's request
    np.testing.assert_allclose(c.session().prompts.points, [[60, 70], [40, 40]], atol=0.5)
