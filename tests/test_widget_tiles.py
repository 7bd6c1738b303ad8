"""The widget on a large image: clicks answered from the tile under them (lazily embedded), undo and redo."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from _widget_support import annotator, disc_image  # noqa: E402

from napari_focsam import ModelManager  # noqa: E402
from napari_focsam.engine.tiles import tiled_image_for  # noqa: E402
from napari_focsam.engine.work import TileSettings  # noqa: E402


@pytest.fixture
def fallback() -> ModelManager:
    return ModelManager.load("fallback")


def test_a_large_image_is_clicked_on_through_its_tiles(make_napari_viewer, fallback):
    image = disc_image((1400, 1500), centre=(700, 770), radius=30)  # over twice the fallback's 512: tiled
    viewer = make_napari_viewer()
    widget = annotator(viewer, fallback, image)
    c = widget.controller
    assert c.tiles.applies(fallback, image, (), False)
    c.click(700, 770)
    c.wait()
    labels = np.asarray(c.labels.data)
    disc = np.zeros(image.shape, bool)
    disc[image == 200] = True
    iou = ((labels == 1) & disc).sum() / ((labels == 1) | disc).sum()
    assert iou > 0.9
    tiled = tiled_image_for(fallback, c.image.data, (), False, tuple(c.image.contrast_limits))
    assert tiled.computed == [tiled.grid.tile_at(700, 770)]  # the whole image was never embedded
    c.click(100, 100, positive=False)  # outside the object's view: it moves to a view holding both
    c.wait()
    c.undo()
    assert np.array_equal(np.asarray(c.labels.data) == 1, labels == 1)
    assert len(c.points.data) == 1


def test_tiling_settings_are_checked():
    with pytest.raises(ValueError, match="smaller than its halo"):
        TileSettings(tile=64, halo=128)
    with pytest.raises(ValueError, match="threshold must be at least 1"):
        TileSettings(threshold=0)
    assert not TileSettings(enabled=False).applies(None, np.zeros((9000, 9000)), (), False)
