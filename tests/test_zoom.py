"""Zoom-in refinement (engine/zoom.py): the zoom's geometry, a small object segmented better on the zoom than on a
large canvas with the fallback, the coarse mask kept outside the zoom, undo, the automatic rule."""

from __future__ import annotations

import numpy as np
import pytest

from napari_focsam import ModelManager
from napari_focsam.engine.types import Prompts
from napari_focsam.engine.zoom import Zoom, ZoomedObject, mask_box, should_zoom


@pytest.fixture(scope="module")
def manager() -> ModelManager:
    return ModelManager.load("fallback")


def _canvas(side=2048, centre=(1000, 1200), radius=6):
    yy, xx = np.mgrid[:side, :side]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2
    noise = np.random.default_rng(0).normal(0, 8, (side, side))
    return (np.where(disc, 220, 30) + noise).clip(0, 255).astype(np.uint8), disc


def test_the_zoom_maps_pixel_centres_and_masks_both_ways():
    zoom = Zoom.around((100, 200, 119, 219), (1000, 1000), 512)  # a 20-px box, +50 % of it on every side
    assert zoom.region == (90, 190, 130, 230) and zoom.shape == (40, 40) and zoom.factor == 512 / 40
    assert np.allclose(zoom.to_zoom([[90, 190], [129, 229]]), [[5.9, 5.9], [505.1, 505.1]])  # pixel centres
    assert min(Zoom.around((100, 200, 104, 204), (1000, 1000), 512).shape) >= 24  # at least MIN_SIDE
    mask = np.zeros((1000, 1000), bool)
    mask[100:120, 200:220] = True
    assert np.array_equal(zoom.mask_from_zoom(zoom.mask_to_zoom(mask)), mask[zoom.slices])
    edge = Zoom.around((0, 990, 5, 999), (1000, 1000), 512)  # shifted inside the image
    assert edge.region[0] == 0 and edge.region[3] == 1000 and edge.shape == (24, 24)
    assert mask_box(mask) == (100, 200, 119, 219) and mask_box(np.zeros((3, 3), bool)) is None


def test_a_small_object_is_segmented_on_its_zoom_and_pasted_back(manager):
    image, disc = _canvas()
    coarse_obj = manager.new_object(image)
    coarse = coarse_obj.click(1000, 1200)
    coarse_iou = (coarse & disc).sum() / (coarse | disc).sum()
    assert should_zoom(coarse)  # a 12-px object on a 2048² canvas
    zoomed = ZoomedObject.open(manager, image, coarse, coarse_obj.prompts, mask_input=False)
    mask = zoomed.mask
    assert zoomed.zoom.side == 512 and zoomed.zoom.factor > 3
    assert (mask & disc).sum() / (mask | disc).sum() > max(0.9, coarse_iou + 0.3)
    outside = np.ones(disc.shape, bool)
    outside[zoomed.zoom.slices] = False
    assert np.array_equal(mask[outside], coarse[outside])  # written only inside the zoom
    more = Prompts(np.array([[1000.0, 1200.0], [1000.0, 1230.0]]), np.array([1, 0]))
    assert not zoomed.can_undo  # the opening step is the zoom's first
    zoomed.sync(more)
    assert zoomed.can_undo
    assert np.array_equal(zoomed.undo(), mask)  # the step before, exactly


def test_the_zoom_with_the_coarse_mask_as_region_and_what_is_refused(manager):
    image, _ = _canvas(side=512, centre=(250, 300))
    obj = manager.new_object(image)
    coarse = obj.click(250, 300)
    zoomed = ZoomedObject.open(manager, image, coarse, obj.prompts)
    assert zoomed.mask_input and zoomed.session.prompts.mask is not None
    with pytest.raises(ValueError, match="nothing to zoom on"):
        ZoomedObject.open(manager, image, np.zeros((512, 512), bool), Prompts())
    assert not should_zoom(np.ones((100, 100), bool)) and not should_zoom(np.zeros((9, 9), bool))
    small = np.zeros((2048, 2048), bool)
    small[1000:1012, 1000:1012] = True
    assert should_zoom(small, input_side=512) and not should_zoom(small[:512, 1000 - 256:1000 + 256], input_side=512)
