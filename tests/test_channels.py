"""Multi-channel images into the model's three channels: each chosen channel through its limits and colour, summed
as napari's additive blending shows them."""

from __future__ import annotations

import numpy as np
import pytest

from napari_focsam.engine.channels import ChannelMix, default_mix, mix_channels
from napari_focsam.engine.fallback import FallbackPredictor
from napari_focsam.engine.manager import ModelManager


def test_defaults_by_channel_count() -> None:
    assert default_mix(1).colours == ((1.0, 1.0, 1.0),)
    assert default_mix(2).colours == ((0, 1, 0), (1, 0, 1))  # green + magenta: white where both are bright
    assert default_mix(3).colours == ((1, 0, 0), (0, 1, 0), (0, 0, 1))
    assert default_mix(6).channels == (0, 1, 2)


def test_the_mix_is_the_sum_of_each_channel_in_its_colour() -> None:
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 1000, (4, 20, 30)).astype(np.float32)
    mix = ChannelMix([3, 1], colours=["green", (1.0, 0.0, 0.5)], contrast_limits=[(0, 1000), (200, 700)])
    out = mix_channels(data, mix)
    a = np.clip(data[3] / 1000, 0, 1)
    b = np.clip((data[1] - 200) / 500, 0, 1)
    expected = np.stack([b, a, 0.5 * b], axis=-1)
    np.testing.assert_array_equal(out, np.clip(np.rint(expected * 255), 0, 255).astype(np.uint8))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    # channels last works the same
    np.testing.assert_array_equal(mix_channels(np.moveaxis(data, 0, -1), mix, channel_axis=-1), out)


def test_the_choice_colours_and_limits_change_the_embedding_key() -> None:
    rng = np.random.default_rng(1)
    data = rng.integers(0, 4000, (3, 32, 32)).astype(np.uint16)
    manager = ModelManager(FallbackPredictor())
    keys = {manager.key_for(mix_channels(data, mix)) for mix in (
        ChannelMix([0, 1]), ChannelMix([0, 2]), ChannelMix([0, 1], colours=["red", "blue"]),
        ChannelMix([0, 1], contrast_limits=[(0, 4000), (0, 2000)]))}
    assert len(keys) == 4
    obj = manager.new_object(mix_channels(data, ChannelMix([0, 1])), rgb=True)
    assert obj.click(16, 16).shape == (32, 32)


def test_only_the_chosen_channels_are_read() -> None:
    zarr = pytest.importorskip("zarr")
    data = np.arange(5 * 16 * 16, dtype=np.float32).reshape(5, 16, 16)
    store = zarr.zeros((5, 16, 16), chunks=(1, 16, 16), dtype=np.float32)
    store[:] = data
    read: list[object] = []

    class Recording:
        shape, dtype = store.shape, store.dtype

        def __getitem__(self, key):
            read.append(key)
            return store[key]

    out = mix_channels(Recording(), ChannelMix([4, 2]))
    assert [k[-1] for k in read] == [4, 2]
    np.testing.assert_array_equal(out, mix_channels(data, ChannelMix([4, 2])))


@pytest.mark.parametrize("kwargs, message", [
    ({"channels": []}, "at least one channel"),
    ({"channels": [0, 0]}, "chosen twice"),
    ({"channels": [0.5]}, "whole numbers"),
    ({"channels": [0, 1], "colours": ["green"]}, "2 channels but 1 colours"),
    ({"channels": [0], "colours": ["teal"]}, "unknown colour 'teal'"),
    ({"channels": [0], "colours": [(2, 0, 0)]}, "RGB triple of numbers in 0..1"),
    ({"channels": [0], "contrast_limits": [(0, np.nan)]}, "two finite numbers"),
    ({"channels": [0], "contrast_limits": [(0, 1), (0, 1)]}, "1 channels but 2 contrast limits"),
])
def test_bad_choices_say_what_is_wrong(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ChannelMix(**kwargs)


def test_a_channel_outside_the_image_and_a_wrong_shape_are_refused() -> None:
    with pytest.raises(ValueError, match=r"channel 3 does not exist: the image has 2 channels \(0..1\)"):
        mix_channels(np.zeros((2, 8, 8)), ChannelMix([0, 3]))
    with pytest.raises(ValueError, match="3 axes"):
        mix_channels(np.zeros((8, 8)))
