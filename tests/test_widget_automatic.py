"""The widget's "Segment everything" in a real viewer: a worker with progress, a new labels layer that becomes the
annotated one (its objects re-open like committed ones), on a 2D image and a stack; cancel writes nothing."""

from __future__ import annotations

import threading

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from _widget_support import annotator, disc_image  # noqa: E402

from napari_focsam.engine.manager import ModelManager  # noqa: E402
from napari_focsam.plugin.stack_panel import EVERYTHING_LAYER  # noqa: E402

pytestmark = pytest.mark.gui


def _two_discs() -> np.ndarray:
    image = disc_image()
    return np.maximum(image, disc_image(centre=(30, 135), radius=12))


def test_segment_everything_2d_then_reopen(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = annotator(viewer, ModelManager.load("fallback"), _two_discs())
    c, panel = widget.controller, widget.stack_panel
    gui_thread = threading.get_ident()
    seen = []
    panel._relay.advanced.connect(lambda *args: seen.append(args))
    assert panel.everything() is not None
    assert not panel.everything_button.isEnabled()
    c.wait()
    layer = viewer.layers[EVERYTHING_LAYER]
    assert set(np.unique(layer.data)) == {0, 1, 2}
    assert c.labels is layer  # the new layer is the one annotated now
    assert seen and seen[-1][1:] == (1, 1)
    assert threading.get_ident() == gui_thread
    label = int(layer.data[60, 70])
    c.reopen(label)
    assert c.object_id == label
    # Refine label: the automatic object becomes the object's first prompt (a mask), refined by later prompts
    small = int(layer.data[30, 135])
    before = layer.data == small
    c.refine_label(small)
    c.wait()
    assert c.object_id == small
    np.testing.assert_array_equal(layer.data == small, before)  # the mask prompt alone gives it back


def test_segment_everything_stack_and_cancel(make_napari_viewer):
    viewer = make_napari_viewer()
    stack = np.stack([_two_discs(), disc_image(), np.full((120, 160), 30, np.uint8)])
    widget = annotator(viewer, ModelManager.load("fallback"), stack)
    c, panel = widget.controller, widget.stack_panel
    panel.everything()
    c.wait()
    labels = viewer.layers[EVERYTHING_LAYER].data
    assert labels.shape == stack.shape
    assert sorted(np.unique(labels[0])) == [0, 1, 2] and sorted(np.unique(labels[1])) == [0, 3]
    assert not labels[2].any()
    # a cancelled run adds no layer
    n_layers = len(viewer.layers)
    panel.everything()
    panel.cancel()
    c.wait()
    assert len(viewer.layers) == n_layers or panel.last_job.delivered
