"""Views (:mod:`napari_focsam.engine.views`): a rectangle of a large image embedded on its own, prompts shifted in
and masks pasted back."""

from __future__ import annotations

import numpy as np
import pytest

from napari_focsam import ModelManager
from napari_focsam.engine.types import Prompts
from napari_focsam.engine.views import View, ViewObject, embed_view, input_side, view_around, view_key


def _discs(shape=(700, 900), centres=((300, 420), (100, 100)), radius=40):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 30, np.uint8)
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 220
    return image


@pytest.fixture(scope="module")
def sam_tiny():
    return ModelManager.load("sam_tiny", allow_random_weights=True, device="cpu", precision="float32")


@pytest.mark.parametrize("model", ["fallback", "sam_tiny"])
def test_a_view_equals_the_pipeline_on_its_crop(model, sam_tiny):
    manager = sam_tiny if model == "sam_tiny" else ModelManager.load("fallback")
    image = _discs()
    view = View(image.shape, (200, 300, 520, 640))
    obj = ViewObject.open(manager, image, view)
    got = obj.click(300, 420)
    obj.click(330, 470, positive=False)
    got = obj.mask
    crop = np.ascontiguousarray(image[200:520, 300:640])
    want = manager.segment(crop, [(100, 120), (130, 170)], [1, 0])
    assert got.region == (200, 300, 520, 640)
    assert np.array_equal(got.mask, want)
    full = got.full()
    assert full.shape == image.shape and np.array_equal(full[200:520, 300:640], want)
    assert not full[:200].any() and not full[:, :300].any()
    np.testing.assert_allclose(obj.prompts.points, [[300, 420], [330, 470]])
    # undo and redo move in full-image coordinates too
    assert np.array_equal(obj.undo().mask, manager.segment(crop, [(100, 120)]))
    assert np.array_equal(obj.redo().mask, want)


def test_prompt_kinds_are_shifted_into_the_view(sam_tiny):
    image = _discs()
    view = View(image.shape, (200, 300, 520, 640))
    region = np.zeros(image.shape, bool)
    region[280:320, 400:440] = True
    prompts = Prompts([[300, 420]], [1], box=(260, 380, 340, 460), mask=region,
                      scribbles=(([[250, 350], [260, 360]],),))
    local = view.prompts_to_view(prompts)
    np.testing.assert_allclose(local.points, [[100, 120]])
    np.testing.assert_allclose(local.box, [60, 80, 140, 160])
    np.testing.assert_allclose(local.scribbles[0].points, [[50, 50], [60, 60]])
    assert local.mask.shape == view.shape and local.mask.sum() == region.sum()
    obj = ViewObject.open(sam_tiny, image, view)
    got = obj.sync(prompts)
    crop = np.ascontiguousarray(image[200:520, 300:640])
    assert np.array_equal(got.mask, sam_tiny.segment_prompts(crop, local))


def test_view_around_centres_and_stays_inside():
    assert view_around((500, 500, 520, 540), (2000, 3000), 1024).region == (0, 9, 1024, 1033)
    v = view_around((1000, 1500, 1000, 1500), (4000, 4000), 1024)
    assert v.shape == (1024, 1024) and v.contains(1000, 1500)
    assert abs((v.region[0] + v.region[2] - 1) / 2 - 1000) <= 0.5
    edge = view_around((10, 3990, 20, 3995), (4000, 4000), 1024)
    assert edge.region == (0, 4000 - 1024, 1024, 4000)
    small = view_around((10, 10, 20, 20), (300, 200), 1024)
    assert small.region == (0, 0, 300, 200)
    big = view_around((100, 100, 2100, 400), (4000, 4000), 1024, margin=10)
    assert big.region[0] <= 90 and big.region[2] >= 2111 and big.shape[1] == 1024


def test_view_keys_name_the_rectangle(sam_tiny):
    image = np.zeros((600, 600), np.uint8)
    a, b = View(image.shape, (0, 0, 300, 300)), View(image.shape, (300, 300, 600, 600))
    ea, eb = embed_view(sam_tiny, image, a), embed_view(sam_tiny, image, b)
    assert ea.key != eb.key and ea.key == view_key(sam_tiny, np.zeros((300, 300, 3), np.uint8), a)
    assert embed_view(sam_tiny, image, a) is not None and sam_tiny.last_embed.from_cache
    assert input_side(sam_tiny.predictor) == 1024
    assert input_side(ModelManager.load("fallback").predictor) == 512


def test_write_touches_the_region_only():
    labels = np.full((50, 60), 7, np.int32)
    labels[10:20, 10:20] = 3
    view = View(labels.shape, (5, 5, 25, 25))
    mask = np.zeros(view.shape, bool)
    mask[10:15, 10:15] = True
    view.paste(mask).write(labels, 3)
    assert (labels[15:20, 15:20] == 3).all()
    assert labels[10, 10] == 0  # the object shrank inside the region
    assert (labels[:5] == 7).all() and (labels[25:] == 7).all()


def test_bad_views_and_prompts_are_refused():
    with pytest.raises(ValueError, match="inside the 100 x 100 image"):
        View((100, 100), (0, 0, 101, 50))
    with pytest.raises(ValueError, match="non-empty"):
        View((100, 100), (10, 10, 10, 50))
    with pytest.raises(ValueError, match="four integers"):
        View((100, 100), (0, 0, 10.5, 50))
    with pytest.raises(ValueError, match="core"):
        View((100, 100), (10, 10, 50, 50), core=(0, 0, 20, 20))
    view = View((100, 100), (10, 10, 50, 50))
    with pytest.raises(ValueError, match=r"click at \(60, 20\) is outside the view"):
        view.prompts_to_view(Prompts([[60, 20]], [1]))
    region = np.zeros((100, 100), bool)
    region[40:60, 40:60] = True
    with pytest.raises(ValueError, match="reaches outside the view"):
        view.mask_to_view(region)
    with pytest.raises(ValueError, match="belongs to a"):
        view.read(np.zeros((90, 100)))
    with pytest.raises(ValueError, match="a mask of this view is"):
        view.paste(np.zeros((5, 5), bool))
