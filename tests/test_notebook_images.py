"""The notebook annotator on microscopy images: world coordinates (scale, translate, affine; anisotropic stacks),
channels, zoom-in refinement and tiles, through the Python API and the browser's messages (recorded at the comm)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("anywidget")

from test_notebook_widget import Browser, discs

from napari_focsam.engine.channels import ChannelMix
from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.types import CancelToken, Prompts
from napari_focsam.engine.work import TileSettings, compute_object
from napari_focsam.notebook import Annotator
from napari_focsam.notebook.geometry import Geometry


def _iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


# ---------------------------------------------------------------------------------------------- world coordinates
def test_world_clicks_map_to_the_pixels_and_the_widget_gets_the_aspect():
    plain = Annotator(discs(), "fallback").wait()
    plain.click(40, 50)
    plain.wait()
    ann = Annotator(discs(), "fallback", scale=(0.5, 0.25), translate=(10, 20), units="µm").wait()
    browser = Browser(ann)
    ann.click(10 + 40 * 0.5, 20 + 50 * 0.25, world=True)  # the same pixel, given in µm
    ann.wait()
    np.testing.assert_array_equal(ann.labels, plain.labels)
    assert ann.controller.prompt_state()["points"] == [[40.0, 50.0, 1]]
    np.testing.assert_allclose(ann.to_pixels((30.0, 32.5)), (40, 50))
    np.testing.assert_allclose(ann.to_world((40, 50)), (30.0, 32.5))
    (obj,) = ann.objects
    assert obj.size == pytest.approx(obj.pixels * 0.125)  # µm² of a 0.5 × 0.25 µm pixel
    browser(type="hello")
    state = browser.of("state")[-1][0]
    assert state["pixel_size"] == [0.5, 0.25] and state["units"] == "µm" and not state["identity"]
    assert state["world"] == [[0.5, 0.0, 10.0], [0.0, 0.25, 20.0]]  # (y, x, 1) of a pixel → world (y, x)
    ann.box(10 + 20 * 0.5, 20 + 30 * 0.25, 10 + 60 * 0.5, 20 + 70 * 0.25, world=True)
    ann.wait()
    assert ann.controller.prompt_state()["box"] == [20.0, 30.0, 60.0, 70.0]
    for a in (plain, ann):
        a.close()


def test_anisotropic_stack_and_an_affine_with_shear():
    stack = np.stack([discs(centres=((30 + 10 * z, 50),)) for z in range(4)])
    ann = Annotator(stack, "fallback", scale=(2.0, 0.5, 0.25)).wait()
    np.testing.assert_allclose(ann.to_pixels((6.0, 20.0, 12.5)), (3, 40, 50))
    ann.slice = 3
    ann.wait()
    ann.click(30.0, 12.5, world=True)  # world y, x on the shown slice (3)
    ann.wait()
    assert ann.controller.prompt_state()["points"] == [[60.0, 50.0, 1]]
    assert [(o.label, o.slices) for o in ann.objects] == [(1, (3,))]
    assert ann.objects[0].size == pytest.approx(ann.objects[0].pixels * 0.25)  # µm³ of 2 × 0.5 × 0.25
    ann.commit()
    ann.click_at((2.2, 25.0, 12.5))  # µm: z 1.1 → slice 1, pixel (50, 50)
    ann.wait()
    assert ann.slice == 1 and ann.controller.prompt_state()["points"] == [[50.0, 50.0, 1]]
    assert [(o.label, o.slices) for o in ann.objects] == [(1, (3,)), (2, (1,))]
    with pytest.raises(ValueError, match="outside the stack of 4 slices"):
        ann.click_at((9.0, 25.0, 12.5))
    with pytest.raises(ValueError, match="has 3 coordinates, got 2"):
        ann.click_at((25.0, 12.5))
    ann.close()
    # y_world = y + 0.5 z: the same world y is another pixel row on each slice
    geometry = Geometry.of(3, affine=[[1, 0, 0], [0.5, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(geometry.plane_to_pixels([[41.0, 7.0]], z=2), [[40.0, 7.0]])
    np.testing.assert_allclose(geometry.plane_to_pixels([[41.0, 7.0]], z=0), [[41.0, 7.0]])
    rotation = np.array([[0.0, -1.0, 5.0], [1.0, 0.0, 2.0], [0.0, 0.0, 1.0]])  # 90°, then a shift
    flat = Geometry.of(2, scale=(2, 3), affine=rotation)
    points = np.array([[1.0, 2.0], [10.0, -4.0]])
    np.testing.assert_allclose(flat.to_pixels(flat.to_world(points)), points)
    assert flat.pixel_size == (2.0, 3.0) and flat.voxel == pytest.approx(6.0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"scale": (0, 1)}, "positive pixel size on every axis, got 0 on axis y"),
    ({"scale": (1, -0.5)}, "got -0.5 on axis x"),
    ({"scale": (1, 1, 1)}, "scale needs 2 values (y, x)"),
    ({"translate": (np.nan, 0)}, "translate must be finite"),
    ({"affine": [[1, 2], [2, 4]]}, "cannot be inverted"),
    ({"affine": np.eye(4)}, "the affine of a 2D image is a 2×2, 2×3 or 3×3 matrix"),
])
def test_bad_geometry_is_a_clear_message(kwargs, message):
    ann = Annotator(discs(), "fallback", **kwargs)
    assert message in (ann.error or "")
    browser = Browser(ann)
    browser(type="hello")
    assert browser.of("state")[-1][0]["error"].startswith("Cannot annotate:")
    ann.close()


# ---------------------------------------------------------------------------------------------------- channels
def _channels() -> np.ndarray:
    """Three channels: the discs, a dim copy of one disc, noise."""
    first = discs()
    second = np.full_like(first, 10)
    second[discs(centres=((70, 115),)) > 100] = 90
    noise = np.random.default_rng(0).integers(0, 40, first.shape).astype(np.uint8)
    return np.stack([first, second, noise])


def test_channel_choice_is_what_the_model_sees_and_part_of_the_key():
    image = _channels()
    ann = Annotator(image, "fallback", channel_axis=0, channels=[0]).wait()
    browser = Browser(ann)
    assert ann.channel_mix == ChannelMix([0], ["gray"], [(0.0, 255.0)])
    key_first = ann.controller._keys[()]
    ann.click(40, 50)
    ann.wait()
    expected = ModelManager.load("fallback").segment(np.repeat(image[0][..., None], 3, axis=2), [(40, 50)])
    np.testing.assert_array_equal(ann.labels == 1, expected)  # the gray channel, seen as it is
    ann.commit()
    ann.set_channels([1], contrast_limits=[(10, 90)])
    ann.wait()
    key_second = ann.controller._keys[()]
    assert key_second != key_first and ann.channel_mix.contrast_limits == ((10.0, 90.0),)
    browser(type="channels", channels=[0, 1])
    ann.wait()
    assert ann.channel_mix.channels == (0, 1) and ann.channel_mix.colours == ((0.0, 1.0, 0.0), (1.0, 0.0, 1.0))
    assert ann.controller._keys[()] not in (key_first, key_second)
    image_message = browser.of("image")[-1][0]
    assert image_message["channels"] == {"count": 3, "chosen": [0, 1]} and image_message["rgb"]
    browser(type="channels", channels=[0, 7])
    assert "channel 7 does not exist: the image has 3 channels (0..2)" in browser.status()
    with pytest.raises(ValueError, match="channel 3 does not exist"):
        ann.set_channels([3])
    with pytest.raises(ValueError, match="low < high"):
        ann.set_channels([0], contrast_limits=[(5, 5)])
    assert ann.channel_mix.channels == (0, 1)
    ann.close()


def test_channels_of_a_stack_read_one_plane_and_bad_channel_input():
    da = pytest.importorskip("dask.array")
    stack = np.stack([_channels() for _ in range(3)]).transpose(0, 2, 3, 1)  # (Z, H, W, C)
    lazy = da.from_array(stack, chunks=(1, 120, 160, 1))
    ann = Annotator(lazy, "fallback", channel_axis=-1).wait()  # default: all three, red, green, blue
    assert ann.channel_mix.channels == (0, 1, 2) and ann.controller.source.depth == 3
    ann.slice = 2
    ann.wait()
    ann.click(70, 115)
    ann.wait()
    assert [(o.label, o.slices) for o in ann.objects] == [(1, (2,))]
    ann.close()
    assert "channel 5 does not exist" in Annotator(_channels(), channel_axis=0, channels=[5]).error
    assert "channel_axis 4 is not an axis" in Annotator(_channels(), channel_axis=4).error
    assert "not RGB itself" in Annotator(_channels(), channel_axis=0, rgb=True).error
    assert "give channel_axis=" in Annotator(discs(), channels=[0]).error


# ------------------------------------------------------------------------------------------- zoom-in refinement
def _canvas(side=2048, centre=(1000, 1200), radius=6):
    yy, xx = np.mgrid[:side, :side]
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2
    noise = np.random.default_rng(0).normal(0, 8, (side, side))
    return (np.where(disc, 220, 30) + noise).clip(0, 255).astype(np.uint8), disc


@pytest.fixture(scope="module")
def canvas():
    return _canvas()


def test_a_small_object_is_zoomed_after_its_first_click_and_undo_leaves_the_zoom(canvas):
    image, disc = canvas
    ann = Annotator(image, "fallback", tiles=False).wait()
    browser = Browser(ann)
    ann.click(1000, 1200)
    ann.wait()
    coarse = ann.labels == 1
    assert _iou(coarse, disc) < 0.5 and ann.zoomed is None  # seen at 512 px: a coarse blob
    ann.click(1001, 1201)
    ann.wait()
    assert ann.zoomed is not None and _iou(ann.labels == 1, disc) > 0.9
    info = browser.of("update")[-1][0]["info"]
    assert info["zoom"] == list(ann.zoomed) and info["can_undo"]
    zoom_threads = {thread for kind, thread in browser.threads if kind == "labels"}
    assert zoom_threads and all(t.startswith("focsam-job") for t in zoom_threads)  # never the comm thread
    browser(type="undo")
    assert ann.zoomed is None and np.array_equal(ann.labels == 1, coarse)
    assert ann.controller.prompt_state()["points"] == [[1000.0, 1200.0, 1]]
    ann.click(1001, 1201)
    ann.wait()
    assert _iou(ann.labels == 1, disc) > 0.9
    ann.click(1003, 1199)  # inside the zoom: decoded there, one more step
    ann.wait()
    assert ann.zoomed is not None
    ann.undo()
    assert ann.zoomed is not None and ann.controller.prompt_state()["points"] == [
        [1000.0, 1200.0, 1], [1001.0, 1201.0, 1]]  # the very numbers clicked, not the zoom's rescaled ones
    ann.redo()
    assert len(ann.controller.prompt_state()["points"]) == 3
    ann.click(300, 300, positive=False)  # far outside the zoom: the whole slice again
    ann.wait()
    assert ann.zoomed is None
    ann.commit()
    assert ann.zoomed is None and ann.object_id == 2
    ann.close()


def test_refine_detail_on_request_and_its_refusals(canvas):
    image, disc = canvas
    ann = Annotator(image, "fallback", tiles=False, auto_zoom=False).wait()
    browser = Browser(ann)
    browser(type="refine")
    assert "click on the object first" in browser.status()
    ann.click(1000, 1200)
    ann.wait()
    ann.click(1001, 1201)
    ann.wait()
    assert ann.zoomed is None and _iou(ann.labels == 1, disc) < 0.5
    browser(type="refine")
    ann.wait()
    assert ann.zoomed is not None and _iou(ann.labels == 1, disc) > 0.9
    browser(type="refine")
    assert "refined on its zoom already" in browser.status()
    browser(type="auto_zoom", on=True)
    assert ann.auto_zoom and browser.of("update")[-1][0]["info"]["auto_zoom"]
    browser(type="cancel")
    assert ann.zoomed is None and not (ann.labels == 1).any()
    ann.close()


# ----------------------------------------------------------------------------------------------------- tiles
def test_a_large_image_is_annotated_in_tiles_with_undo_and_redo():
    image = discs(shape=(1100, 1300), centres=((300, 400), (800, 1000)), radius=30)
    ann = Annotator(image, "fallback").wait()  # fallback: 512 px input, so tiles above 1,024 px
    browser = Browser(ann)
    assert ann.tiled and ann.tiles == TileSettings()
    ann.click(300, 400)
    ann.wait()
    manager = ann.manager
    expected = compute_object(manager, image, (), False, ann.contrast_limits, 99, Prompts([(300, 400)], [1]),
                              CancelToken(), tiles=TileSettings()).mask
    np.testing.assert_array_equal(ann.labels == 1, expected)
    assert _iou(ann.labels == 1, discs(shape=(1100, 1300), centres=((300, 400),), radius=30) > 100) > 0.9
    ann.click(320, 400, positive=False)
    ann.wait()
    info = browser.of("update")[-1][0]["info"]
    assert info["tiled"] and info["can_undo"] and not info["can_redo"]
    browser(type="undo")
    np.testing.assert_array_equal(ann.labels == 1, expected)
    assert browser.of("update")[-1][0]["info"]["can_redo"]
    browser(type="redo")
    assert ann.controller.prompt_state()["points"] == [[300.0, 400.0, 1], [320.0, 400.0, 0]]
    browser(type="refine")
    assert "annotated in tiles" in browser.status()
    ann.tiles = False
    ann.wait()
    assert not ann.tiled
    ann.close()


# ------------------------------------------------------------------------------------------- the shown window
def _tall(height=4400, width=300) -> np.ndarray:
    return discs(shape=(height, width), centres=((150, 150), (4000, 100)), radius=25)


def test_a_slice_too_large_to_show_whole_is_seen_through_a_window_with_an_overview():
    image = _tall()
    ann = Annotator(image, "fallback", window_side=512).wait()
    browser = Browser(ann)
    assert ann.window == (1944, 0, 2456, 300)  # centred; as wide as the image
    browser(type="hello")
    state, buffers = browser.of("state")[-1]
    assert state["window"] == [1944, 0, 2456, 300] and (state["height"], state["width"]) == image.shape
    import io

    from PIL import Image

    assert Image.open(io.BytesIO(buffers[0])).size == (300, 512)  # only the window's picture travels
    overview, (png,) = browser.of("overview")[-1]
    assert overview["window"] == [1944, 0, 2456, 300] and overview["full"] == [4400, 300]
    assert max(Image.open(io.BytesIO(png)).size) <= 256
    browser(type="window", y=100, x=150)  # a click on the overview: the window moves (clipped to the slice)
    assert ann.window == (0, 0, 512, 300) and browser.of("image")[-1][0]["window"] == [0, 0, 512, 300]
    browser(type="click", y=150, x=150, positive=True, seq=1)
    ann.wait()
    assert ann.labels[150, 150] == 1 and not ann.labels[2000:].any()
    patch, buffers = browser.of("labels")[-1]
    y0, x0, y1, x1 = patch["box"]  # window pixels (here the window starts at the slice's corner)
    from napari_focsam.notebook.overlay import rle_decode

    np.testing.assert_array_equal(rle_decode(buffers[0], buffers[1], (y1 - y0, x1 - x0)), ann.labels[y0:y1, x0:x1])
    ann.commit()
    ann.show_at(4000, 100)
    assert ann.window == (3744, 0, 4256, 300)
    ann.click(4000, 100)
    ann.wait()
    patch, buffers = browser.of("labels")[-1]
    wy = ann.window[0]
    y0, x0, y1, x1 = patch["box"]
    np.testing.assert_array_equal(rle_decode(buffers[0], buffers[1], (y1 - y0, x1 - x0)),
                                  ann.labels[wy + y0:wy + y1, x0:x1])
    ann.delete(1)  # a change outside the window: nothing of it is sent
    assert browser.of("labels")[-1][0]["box"] == [0, 0, 512, 300]
    ann.window = (100, 50, 300, 250)
    assert browser.of("image")[-1][0]["window"] == [100, 50, 300, 250]
    with pytest.raises(ValueError, match="not a non-empty rectangle inside the 4400×300 image"):
        ann.window = (0, 0, 5000, 10)
    with pytest.raises(ValueError, match="at most 4096 pixels a side"):
        ann.window = (0, 0, 4200, 10)
    ann.close()
    small = Annotator(discs(), "fallback")
    assert small.window == (0, 0, 120, 160) and small.controller.overview_message() is None
    small.close()
    assert "window_side must be between" in Annotator(image, window_side=8).error


def test_the_window_reads_only_its_pixels():
    image = _tall()
    ann = Annotator(image, "fallback", window_side=256, contrast_limits=(0, 255))
    source = ann.controller.source
    whole = source.display((), (0, 255))
    np.testing.assert_array_equal(source.display((), (0, 255), (100, 20, 356, 276)), whole[100:356, 20:276])
    np.testing.assert_array_equal(source.display((), (0, 255), step=17), whole[::17, ::17])
    mixed_ann = Annotator(np.stack([image, image // 2]), "fallback", channel_axis=0, channels=[1, 0])
    channels = mixed_ann.controller.source
    mixed = channels.display((), (0, 1))
    np.testing.assert_array_equal(channels.display((), (0, 1), (8, 9, 40, 50)), mixed[8:40, 9:50])
    for a in (ann, mixed_ann):
        a.close()


def test_a_large_multi_channel_slice_is_tiled_reading_only_its_tiles():
    nuclei = discs(shape=(1100, 1300), centres=((300, 400), (800, 1000)), radius=30)
    image = np.stack([nuclei, np.full_like(nuclei, 40), 255 - nuclei])
    ann = Annotator(image, "fallback", channel_axis=0, channels=[0, 2])
    ann.wait()
    mixed = ann.controller.source.display((), (0, 1))  # the whole slice as the model sees it
    assert ann.tiled and mixed.shape == (1100, 1300, 3)
    ann.click(300, 400)
    ann.wait()
    expected = compute_object(ann.manager, mixed, (), True, (0, 255), 99, Prompts([(300, 400)], [1]),
                              CancelToken(), tiles=TileSettings()).mask
    np.testing.assert_array_equal(ann.labels == 1, expected)  # the same tiles of the same pixels
    source = ann.controller.source
    np.testing.assert_array_equal(source.mixed[100:200, 300:420], mixed[100:200, 300:420])
    np.testing.assert_array_equal(source.mixed[7, 9], mixed[7, 9])
    ann.close()


def test_tiled_clicks_write_their_region_keep_blocks_and_prefetch_around():
    from napari_focsam.engine.tiles import tiled_image_for
    from napari_focsam.notebook.tiled_writes import BlockBase

    image = discs(shape=(2600, 2600), centres=((300, 400), (2000, 2100)), radius=30)
    labels = np.zeros(image.shape, np.int32)
    labels[280:300, 380:420] = 7  # an object already there, partly under the new one
    ann = Annotator(image, "fallback", labels=labels).wait()
    browser = Browser(ann)
    ann.click(300, 400)
    ann.wait()
    base = ann.controller._bases[((), 8)]
    assert isinstance(base, BlockBase) and 0 < base.nbytes <= 4 * 512 * 512 * 4  # not a copy of the slice
    assert (ann.labels == 7).sum() == (labels == 7).sum()  # committed objects are not overwritten
    patch = browser.of("labels")[-1][0]
    y0, x0, y1, x1 = patch["box"]
    assert (y1 - y0) * (x1 - x0) < 200 * 200  # only the changed box of the view travels
    tiled = tiled_image_for(ann.manager, image, (), False, ann.contrast_limits)
    assert len(tiled.computed) > 1  # the tiles around the object's were embedded in the background
    ann.controller.overwrite = True
    ann.click(290, 400)
    ann.wait()
    assert (ann.labels == 7).sum() < (labels == 7).sum()
    ann.cancel()
    np.testing.assert_array_equal(ann.labels, labels)  # cancel gives back every pixel, object 7's included
    ann.close()
