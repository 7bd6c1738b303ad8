"""SegNext in a real viewer: clicks, a scribble and a box drive it through the same layers as SAM, undo/redo, and the
widget states its cost on a CPU."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from _widget_support import annotator, disc_image  # noqa: E402

from napari_focsam.engine.manager import ModelManager  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def segnext_manager() -> ModelManager:
    return ModelManager.load("segnext_tiny", device="cpu", allow_random_weights=True)


def test_clicks_a_scribble_and_a_box_drive_segnext(make_napari_viewer, segnext_manager):
    image = disc_image()
    viewer = make_napari_viewer()
    widget = annotator(viewer, segnext_manager, image)
    c = widget.controller
    assert "TFLOP" in widget.model_label.text() and "seconds per click on a CPU" in widget.model_label.text()
    c.click(60, 70)
    c.wait()
    first = c.labels.data.copy()
    embedding = segnext_manager.embed(image, contrast_limits=(0, 255))
    np.testing.assert_array_equal(first == 1, segnext_manager.segment(embedding, [(60, 70)]))
    c.click(10, 10, positive=False)
    c.wait()
    second = c.labels.data.copy()
    np.testing.assert_array_equal(second == 1, segnext_manager.segment(embedding, [(60, 70), (10, 10)], [1, 0]))
    c.undo()
    np.testing.assert_array_equal(c.labels.data, first)
    c.redo()
    np.testing.assert_array_equal(c.labels.data, second)
    c.scribble([(50, 50), (70, 90)], positive=True)  # the path tool: a positive stroke of disks
    c.wait()
    prompts = c.session().prompts
    assert len(prompts.scribbles) == 1 and prompts.scribbles[0].positive
    replay = segnext_manager.new_object(embedding, object_id=99)  # the same steps in the same order, via the API
    replay.click(60, 70)
    replay.click(10, 10, positive=False)
    np.testing.assert_array_equal(c.labels.data == 1, replay.add_scribble([(50, 50), (70, 90)], positive=True))
    c.commit()
    c.box(30, 40, 90, 100)
    c.wait()
    assert c.session().prompts.box is not None
    expected = segnext_manager.segment_prompts(embedding, c.session().prompts)
    assert expected.any()
    np.testing.assert_array_equal(c.labels.data == 2, expected & (second != 1))  # object 1 is never overwritten
