"""Zoom-in refinement in a real viewer: a small object on a large image is decoded on its zoom after the first click
(automatically, or with "Refine detail"), undo leaves the zoom, a click outside the zoom goes back to the slice."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from _widget_support import annotator  # noqa: E402

from napari_focsam.engine.manager import ModelManager  # noqa: E402
from napari_focsam.engine.work import TileSettings  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def manager() -> ModelManager:
    return ModelManager.load("fallback")


def _canvas(side=2048, centre=(1000, 1200), radius=6):
    yy, xx = np.mgrid[:side, :side]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2
    noise = np.random.default_rng(0).normal(0, 8, (side, side))
    return (np.where(disc, 220, 30) + noise).clip(0, 255).astype(np.uint8), disc


def _iou(a, b) -> float:
    return (a & b).sum() / (a | b).sum()


def test_a_small_object_is_zoomed_after_its_first_click_and_undo_leaves_the_zoom(make_napari_viewer, manager):
    image, disc = _canvas()
    widget = annotator(make_napari_viewer(), manager, image)
    c = widget.controller
    c.tiles = TileSettings(enabled=False)  # the whole slice resized to the model's input (tiles are at full size)
    assert c.auto_zoom and widget.zoom_box.isChecked()
    c.click(1000, 1200)
    c.wait()
    coarse = c.labels.data == 1
    assert _iou(coarse, disc) < 0.5 and not c.zooms  # seen at 512 px: a coarse blob
    c.click(1001, 1201)
    c.wait()
    fine = c.labels.data == 1
    assert ((), 1) in c.zooms and _iou(fine, disc) > 0.9
    c.undo()
    assert not c.zooms and np.array_equal(c.labels.data == 1, coarse) and len(c.points.data) == 1
    c.click(1001, 1201)
    c.wait()
    assert _iou(c.labels.data == 1, disc) > 0.9
    c.click(300, 300, positive=False)  # far outside the zoom: the whole slice again
    c.wait()
    assert not c.zooms
    c.commit()
    assert not c.zooms and c.object_id == 2


def test_refine_detail_zooms_on_request(make_napari_viewer, manager):
    image, disc = _canvas()
    widget = annotator(make_napari_viewer(), manager, image)
    c = widget.controller
    c.tiles = TileSettings(enabled=False)
    widget.zoom_box.setChecked(False)
    assert not c.auto_zoom
    c.click(1000, 1200)
    c.wait()
    c.click(1001, 1201)
    c.wait()
    assert not c.zooms and _iou(c.labels.data == 1, disc) < 0.5
    widget.buttons["refine_detail"].click()
    c.wait()
    assert ((), 1) in c.zooms and _iou(c.labels.data == 1, disc) > 0.9
    c.cancel()
    assert not c.zooms and not (c.labels.data == 1).any()
