"""Mixed channels on slices large enough to tile: each view reads and mixes only its region of the chosen channels,
the tiled result equals the untiled pipeline on the view's crop, and the tiles' keys name the channel choice."""

from __future__ import annotations

import numpy as np
import pytest

from napari_focsam import ModelManager
from napari_focsam.engine.channels import ChannelMix, ChannelStack, MixedPlane
from napari_focsam.engine.tiles import tiled_image_for
from napari_focsam.engine.types import CancelToken, Prompts
from napari_focsam.engine.work import TileSettings, compute_object


@pytest.fixture(scope="module")
def fallback() -> ModelManager:
    return ModelManager.load("fallback")


def _channels(shape=(1400, 1500), centre=(700, 770), radius=30, seed=0) -> list[np.ndarray]:
    """Three uint16 channels: noise, a bright disc in channel 1 only, a gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    noise = rng.integers(100, 600, shape).astype(np.uint16)
    disc = np.full(shape, 300, np.uint16)
    disc[..., (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2] = 3500
    gradient = np.broadcast_to((xx * 2).astype(np.uint16), shape).copy()
    return [noise, disc, gradient]


@pytest.mark.parametrize("stacked", [False, True])
def test_a_tiled_mixed_channel_click_equals_the_untiled_pipeline_on_its_crop(fallback, stacked):
    arrays = _channels((4, 1400, 1500) if stacked else (1400, 1500))
    index = (2,) if stacked else ()
    mix = ChannelMix([1, 0], ["green", "magenta"], [(0, 4000), (0, 3000)])
    stack = ChannelStack(arrays, mix)
    tiles = TileSettings()
    assert tiles.applies(fallback, stack, index, True)  # over twice the fallback's 512 px: tiled
    prompts = Prompts(np.array([[700.0, 770.0]]), np.array([1]))
    result = compute_object(fallback, stack, index, True, (0.0, 255.0), 1, prompts, CancelToken(), tiles=tiles,
                            region_only=True)
    view = result.tiled.view
    assert result.mask.shape == view.mask.shape != (1400, 1500)  # the view's region only, not the slice
    whole = compute_object(fallback, stack, index, True, (0.0, 255.0), 1, prompts, CancelToken(), tiles=tiles)
    assert np.array_equal(whole.mask, view.full())  # without region_only: the slice's mask

    crop = stack.take(index)[view.slices]  # the untiled pipeline: the whole slice mixed, then cropped
    y0, x0 = view.region[:2]
    expected = fallback.new_object(crop, rgb=True).click(700 - y0, 770 - x0)
    assert np.array_equal(result.mask, expected)
    assert result.mask[700 - y0, 770 - x0] and 0.8 < result.mask.sum() / (np.pi * 30**2) < 1.2
    tiled = tiled_image_for(fallback, stack, index, True, None)
    tiled.stop_prefetch()  # the call without region_only embeds the ring around on a thread of its own
    assert tiled.computed[0] == result.tiled.tile  # the tile under the click first, the slice never mixed whole


def test_the_tiles_keys_name_the_channel_choice(fallback):
    same = _channels()[1]
    arrays = [same, same.copy(), _channels()[2]]  # channels 0 and 1 hold the same pixels
    keys = {}
    for name, mix in {"0": ChannelMix([0], ["green"], [(0, 4000)]), "1": ChannelMix([1], ["green"], [(0, 4000)]),
                      "limits": ChannelMix([0], ["green"], [(0, 2000)]),
                      "colour": ChannelMix([0], ["magenta"], [(0, 4000)])}.items():
        tiled = tiled_image_for(fallback, ChannelStack(arrays, mix), (), True, None)
        keys[name] = tiled.embed_tile((1, 2)).key
        again = tiled_image_for(fallback, ChannelStack(arrays, mix), (), True, None)  # a new stack, same choice
        assert again is tiled
    assert len(set(keys.values())) == 4  # channels 0 and 1 mix to the same pixels, yet are two keys
    plane = MixedPlane(ChannelStack(arrays, ChannelMix([0], ["green"], [(0, 4000)])))
    assert np.array_equal(plane[100:200, 300:420], ChannelStack(arrays, plane.stack.mix).take(())[100:200, 300:420])


def test_mixed_planes_refuse_bad_input_with_a_message():
    arrays = _channels((3, 64, 64))
    with pytest.raises(ValueError, match="channel 3 does not exist: the image has 3 channels"):
        ChannelStack(arrays, ChannelMix([0, 3]))
    with pytest.raises(ValueError, match="need 1 leading indices"):
        MixedPlane(ChannelStack(arrays), ())
    with pytest.raises(IndexError, match="read by region"):
        MixedPlane(ChannelStack(arrays), (0,))[0:10, 0:10, 1]


def test_open_limits_are_taken_from_the_first_region_and_kept():
    arrays = _channels()
    plane = MixedPlane(ChannelStack(arrays, ChannelMix([1, 2])))  # no limits given
    plane[600:800, 700:900]
    first = list(plane.limits)
    plane[0:100, 0:100]
    assert plane.limits == first and all(lim is not None for lim in first)


class _ChannelOf:
    """A lazy channel of a (C, H, W) array, made anew for every request (as a front-end may read its channels)."""

    def __init__(self, data, c):
        self.data, self.c = data, c
        self.shape, self.dtype = data.shape[1:], data.dtype

    def __getitem__(self, key):
        return self.data[(self.c,) + (key if isinstance(key, tuple) else (key,))]


def test_channel_views_made_anew_for_each_request_keep_one_tiled_image(fallback):
    data = np.stack(_channels())
    mix = ChannelMix([1, 0], ["green", "magenta"], [(0, 4000), (0, 3000)])

    def stack(source=data):
        return ChannelStack([_ChannelOf(source, c) for c in range(3)], mix)

    first = tiled_image_for(fallback, stack(), (), True, None)
    assert tiled_image_for(fallback, stack(), (), True, None) is first  # the same channels: the same objects
    assert tiled_image_for(fallback, stack(data.copy()), (), True, None) is not first  # other data
    tiles = TileSettings()
    for n, point in enumerate(([700.0, 770.0], [705.0, 772.0])):
        prompts = Prompts(np.array([[700.0, 770.0], point][: n + 1]), np.ones(n + 1, int))
        compute_object(fallback, stack(), (), True, (0.0, 255.0), 5, prompts, CancelToken(), tiles=tiles)
    assert first.object(5, create=False).current.session.n_steps == 2  # one object, its two steps
    first.stop_prefetch()


def test_the_notebook_annotator_tiles_a_large_image_with_a_channel_axis():
    pytest.importorskip("anywidget")
    from napari_focsam.notebook import Annotator

    data = np.stack(_channels())
    ann = Annotator(data, "fallback", channel_axis=0, channels=[1, 0]).wait()
    try:
        assert ann.tiled
        ann.click(700, 770)
        ann.wait()
        ann.click(702, 775)
        ann.wait()
        after_two = ann.labels == 1
        disc = np.zeros(after_two.shape, bool)
        disc[(np.mgrid[:1400, :1500][0] - 700) ** 2 + (np.mgrid[:1400, :1500][1] - 770) ** 2 < 30**2] = True
        assert (after_two & disc).sum() / (after_two | disc).sum() > 0.8
        ann.undo()  # the object's steps are kept across clicks: undo goes back one
        ann.wait()
        assert ann.controller.prompt_state()["points"] == [[700.0, 770.0, 1]]
    finally:
        ann.close()
