"""Tiled embeddings (:mod:`napari_focsam.engine.tiles`, :mod:`napari_focsam.engine.tile_grid`): which tile answers,
equivalence with the untiled pipeline on the tile's crop, objects on tile borders, lazy embedding, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_focsam import ModelManager
from napari_focsam.engine.tile_grid import TileGrid, check_tiling, default_tiling, should_tile
from napari_focsam.engine.tiles import TiledImage, level_zero
from napari_focsam.engine.types import Prompts
from napari_focsam.engine.views import View, view_around


def discs(shape, centres, radius=30, seed=0):
    """A textured background with bright discs: something every model gives some mask for."""
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 60, shape, dtype=np.uint8)
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 220
    return image


@pytest.fixture(scope="module")
def sam_tiny():
    return ModelManager.load("sam_tiny", allow_random_weights=True, device="cpu", precision="float32")


@pytest.fixture(scope="module")
def focsam_tiny():
    return ModelManager.load("focsam_tiny", allow_random_weights=True, device="cpu", precision="float32")


def crop_of(image, view):
    return np.ascontiguousarray(image[view.slices])


def test_grid_cores_partition_the_image_and_views_keep_the_input_side():
    grid = TileGrid((2000, 2600), 768, 128)
    assert grid.shape == (3, 4) and len(grid) == 12 and grid.view_side == 1024
    cover = np.zeros(grid.image_shape, np.int32)
    for tile in grid:
        y0, x0, y1, x1 = grid.core(tile)
        cover[y0:y1, x0:x1] += 1
        view = grid.view(tile)
        assert view.shape == (1024, 1024)  # shifted inside the image at its edges: same scale everywhere
        vy0, vx0, vy1, vx1 = view.region
        assert vy0 <= y0 and vx0 <= x0 and y1 <= vy1 and x1 <= vx1
        assert view.core == (y0, x0, y1, x1)
    assert (cover == 1).all()
    assert grid.view((1, 1)).region == (768 - 128, 768 - 128, 1536 + 128, 1536 + 128)
    assert grid.view((2, 3)).region == (2000 - 1024, 2600 - 1024, 2000, 2600)
    assert grid.tile_at(767.4, 768) == (0, 1) and grid.tile_at(767.6, 0) == (1, 0)
    assert grid.around((0, 0)) == [(0, 1), (1, 0), (1, 1)]
    assert len(grid.around((1, 1))) == 8
    small = TileGrid((500, 700), 768, 128)
    assert small.shape == (1, 1) and small.view((0, 0)).region == (0, 0, 500, 700)
    assert default_tiling(1024) == (768, 128, 2048) and default_tiling(512) == (384, 64, 1024)
    assert should_tile((2049, 10), 1024) and not should_tile((2048, 2048), 1024)
    assert should_tile((600, 600), 1024, threshold=512)


def test_the_tile_whose_core_holds_the_prompts_centre_answers():
    grid = TileGrid((3000, 3000), 768, 128)
    assert grid.tile_for(Prompts([[100, 100], [900, 100]], [1, 1])) == (0, 0)  # centre at y = 500
    assert grid.tile_for(Prompts([[100, 100], [1500, 100]], [1, 0])) == (1, 0)  # negatives count too
    assert grid.tile_for(Prompts(box=(700, 700, 900, 900))) == (1, 1)
    region = np.zeros((3000, 3000), bool)
    region[1600:1700, 2400:2500] = True
    assert grid.tile_for(Prompts(mask=region)) == (2, 3)
    assert grid.tile_for(Prompts(scribbles=(([[10, 2000], [20, 2100]],),))) == (0, 2)


@pytest.mark.parametrize("model", ["sam_tiny", "focsam_tiny"])
def test_a_tiled_image_gives_the_untiled_pipeline_on_the_crop(model, request):
    manager = request.getfixturevalue(model)
    image = discs((2100, 2300), [(1200, 1300), (300, 300)])
    tiled = TiledImage(manager, image, prefetch=0)
    obj = tiled.new_object()
    first = obj.click(1200, 1300)
    got = obj.click(1240, 1330, positive=False)  # FocSAM: the refiner runs at this 2nd click
    view = tiled.grid.view((1, 1))
    assert obj.tile == (1, 1) and obj.view == view and got.region == view.region
    crop = crop_of(image, view)
    oy, ox = view.offset
    want = manager.segment(crop, [(1200 - oy, 1300 - ox), (1240 - oy, 1330 - ox)], [1, 0])
    assert np.array_equal(got.mask, want)
    assert np.array_equal(first.mask, manager.segment(crop, [(1200 - oy, 1300 - ox)]))
    assert np.array_equal(obj.undo().mask, first.mask)
    assert tiled.computed == [(1, 1)]


def test_boxes_scribbles_and_regions_are_answered_from_their_tile(sam_tiny):
    image = discs((2100, 2300), [(1200, 1300)])
    tiled = TiledImage(sam_tiny, image, prefetch=0)
    view = tiled.grid.view((1, 1))
    oy, ox = view.offset
    box = (1160, 1260, 1240, 1340)
    got = tiled.new_object().set_box(box)
    local = Prompts(box=np.array(box, float) - [oy, ox, oy, ox])
    assert np.array_equal(got.mask, sam_tiny.segment_prompts(crop_of(image, view), local))
    obj = tiled.new_object()
    got = obj.add_scribble([[1190, 1290], [1210, 1310]])
    local = Prompts(scribbles=(([[1190 - oy, 1290 - ox], [1210 - oy, 1310 - ox]],),))
    assert np.array_equal(got.mask, sam_tiny.segment_prompts(crop_of(image, view), local))
    region = np.zeros(image.shape, bool)
    region[1190:1210, 1290:1310] = True
    got = obj.set_mask(region)
    plain = sam_tiny.new_object(crop_of(image, view))  # the same steps on the crop: scribble, then region
    plain.add_scribble([[1190 - oy, 1290 - ox], [1210 - oy, 1310 - ox]])
    assert np.array_equal(got.mask, plain.set_mask(region[view.slices]))
    assert set(tiled.computed + tiled.from_cache) == {(1, 1)}  # (the module's cache may hold it already)


def test_only_the_tiles_under_the_prompts_are_embedded(sam_tiny):
    image = discs((4000, 4000), [(1000, 1000), (3500, 200)])
    tiled = TiledImage(sam_tiny, image, prefetch=0)
    assert len(tiled.grid) == 36
    tiled.new_object().click(1000, 1000)
    tiled.new_object().click(1100, 900)  # the same tile again: from the cache
    assert tiled.computed == [(1, 1)] and tiled.from_cache == [(1, 1)]
    tiled.new_object().click(3500, 200)
    assert tiled.computed == [(1, 1), (4, 0)]


def test_prefetch_embeds_the_neighbours_in_the_background(sam_tiny):
    image = discs((2400, 2400), [(100, 100)])
    tiled = TiledImage(sam_tiny, image, tile=768, halo=128, prefetch=1)
    tiled.new_object().click(100, 100)
    tiled._prefetch_thread.join()
    assert tiled.computed == [(0, 0), (0, 1), (1, 0), (1, 1)]
    tiled.prefetch_rings = 0
    tiled.new_object().click(900, 900)  # a prefetched tile: no computation
    assert tiled.computed == [(0, 0), (0, 1), (1, 0), (1, 1)] and tiled.from_cache == [(1, 1)]
    tiled.prefetch_rings = 2
    tiled.new_object().click(1700, 1700)
    tiled.stop_prefetch()  # cancels what is left and waits
    assert tiled._prefetch_thread is not None and not tiled._prefetch_thread.is_alive()


@pytest.mark.parametrize("x", [768, 760, 776])
def test_an_object_on_a_tile_border_equals_it_segmented_from_a_view_centred_on_it(x):
    fallback = ModelManager.load("fallback")  # 512 px views: tiles of 384 + 2 x 64
    image = discs((2000, 2000), [(600, x)], radius=25, seed=3)
    x_border = 384 * 2
    tiled = TiledImage(fallback, image, prefetch=0)
    obj = tiled.new_object()
    got = obj.click(600, x).full()
    assert obj.tile == tiled.grid.tile_at(600, x) and obj.tile[1] == (1 if x < x_border else 2)
    centred = view_around((600, x, 600, x), image.shape, 512)
    want = np.zeros(image.shape, bool)
    want[centred.slices] = fallback.segment(crop_of(image, centred), [(600 - centred.offset[0],
                                                                      x - centred.offset[1])])
    iou = (got & want).sum() / (got | want).sum()
    assert want.sum() > 1000 and iou >= 0.99
    assert got[:, x_border - 10].any() and got[:, x_border + 10].any()  # it crosses the border


def test_an_object_on_a_tile_border_sam_mechanics(sam_tiny):
    image = discs((2000, 2000), [(600, 768)], radius=40)
    tiled = TiledImage(sam_tiny, image, prefetch=0)
    obj = tiled.new_object()
    got = obj.click(600, 768)
    view = tiled.grid.view((0, 1))  # x = 768 starts core column 1; its view reaches back 128 px over the border
    assert obj.tile == (0, 1) and got.region == view.region and view.contains(600, 768 - 128)
    assert np.array_equal(got.mask, sam_tiny.segment(crop_of(image, view), [(600, 768 - view.offset[1])]))


def test_a_prompt_outside_the_view_moves_the_object_and_write_clears_what_it_left(sam_tiny):
    image = discs((3000, 3000), [(1000, 1000)])
    tiled = TiledImage(sam_tiny, image, prefetch=0)
    obj = tiled.new_object()
    obj.click(1000, 1000)
    labels = np.zeros(image.shape, np.uint16)
    labels[0, 0] = 9
    obj.write(labels, 5)
    first = obj.view
    got = obj.click(2500, 2500, positive=False)  # outside the first view: all prompts go to a view holding both
    assert obj.view != first and obj.tile is None and obj.view.shape[0] > 1024
    both = Prompts([[1000, 1000], [2500, 2500]], [1, 0])
    assert np.array_equal(got.mask, sam_tiny.segment_prompts(crop_of(image, obj.view),
                                                              obj.view.prompts_to_view(both)))
    obj.write(labels, 5)
    full = got.full()
    assert np.array_equal(labels == 5, full) and labels[0, 0] == 9
    assert obj.undo().region == first.region and obj.view == first and len(obj.prompts) == 1
    assert np.array_equal(obj.redo().mask, got.mask) and len(obj.prompts) == 2


def test_stack_slices_and_multiscale_levels():
    fallback = ModelManager.load("fallback")
    stack = np.stack([discs((1200, 1300), [(600, 600)], seed=s) for s in range(3)])
    tiled = TiledImage(fallback, stack, index=(2,), prefetch=0)
    got = tiled.new_object().click(600, 600)
    view = tiled.grid.view(tiled.grid.tile_at(600, 600))
    assert np.array_equal(got.mask, fallback.segment(crop_of(stack[2], view), [np.subtract((600, 600),
                                                                                           view.offset)]))
    base = stack[0]
    levels = [base, base[::2, ::2]]
    assert level_zero(levels) is base
    assert TiledImage(fallback, levels).shape == (1200, 1300)
    sixteen = stack[0].astype(np.uint16) * 10
    assert TiledImage(fallback, [sixteen, sixteen[::4, ::4]]).contrast_limits is not None


def test_bad_tilings_and_prompts_are_refused(sam_tiny):
    with pytest.raises(ValueError, match="a tile of 100 px is smaller than its halo of 128 px"):
        check_tiling(100, 128)
    with pytest.raises(ValueError, match="at least 1 pixel"):
        TileGrid((100, 100), 0, 0)
    with pytest.raises(ValueError, match="halo must be 0 or more"):
        TileGrid((100, 100), 64, -1)
    with pytest.raises(ValueError, match="whole number of pixels"):
        TiledImage(sam_tiny, np.zeros((100, 100), np.uint8), tile=64.5)
    with pytest.raises(ValueError, match="outside the 1 x 1 grid"):
        TileGrid((100, 100), 128, 0).view((1, 0))
    with pytest.raises(ValueError, match="give index= for the leading axes"):
        TiledImage(sam_tiny, np.zeros((3, 100, 100), np.uint8))
    with pytest.raises(IndexError, match="slice index 5"):
        TiledImage(sam_tiny, np.zeros((3, 100, 100), np.uint8), index=(5,))
    with pytest.raises(ValueError, match="click on the object first"):
        TiledImage(sam_tiny, np.zeros((100, 100), np.uint8)).new_object().sync(Prompts())
    with pytest.raises(ValueError, match="threshold must be at least 1 pixel"):
        should_tile((100, 100), 1024, threshold=0)
    with pytest.raises(ValueError, match="at least one level"):
        level_zero([])
    assert isinstance(TileGrid((100, 100), 64, 8).view((1, 1)), View)
