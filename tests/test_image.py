"""From user images (any dtype, gray/RGB/RGBA, nD) to the model's uint8 RGB input."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_focsam.engine.image import take_slice, to_model_rgb


def test_uint8_rgb_passes_through_unchanged():
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = to_model_rgb(image)
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    assert np.array_equal(out, image)


def test_gray_uint8_is_repeated_into_three_channels():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = to_model_rgb(image)
    assert out.shape == (3, 4, 3) and all(np.array_equal(out[..., c], image) for c in range(3))


def test_rgba_drops_alpha():
    image = np.zeros((5, 6, 4), np.uint8)
    image[..., 0], image[..., 3] = 200, 17
    out = to_model_rgb(image)
    assert out.shape == (5, 6, 3) and (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_uint16_is_stretched_between_robust_percentiles():
    rng = np.random.default_rng(1)
    image = rng.integers(1000, 1200, (64, 64)).astype(np.uint16)
    image[0, 0] = 65535  # one hot pixel must not squash the contrast
    out = to_model_rgb(image)[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert np.percentile(out, 50) == pytest.approx(128, abs=20)


def test_contrast_limits_map_linearly_and_clip():
    image = np.array([[0.0, 0.25, 0.5, 1.0, 2.0]], dtype=np.float32)
    out = to_model_rgb(image, contrast_limits=(0.0, 1.0))[..., 0]
    assert out.tolist() == [[0, 64, 128, 255, 255]]
    uint8 = np.array([[10, 20, 30]], np.uint8)
    assert to_model_rgb(uint8, contrast_limits=(10, 30))[..., 0].tolist() == [[0, 128, 255]]


def test_constant_nan_and_bool_images():
    assert (to_model_rgb(np.full((4, 4), 7.5)) == 0).all()
    with_nan = np.array([[np.nan, 0.0], [1.0, np.inf]])
    with pytest.warns(UserWarning, match="NaN or infinite"):
        out = to_model_rgb(with_nan)[..., 0]
    assert out[0, 0] == 0 and out[1, 1] == 0 and out[1, 0] == 255
    assert to_model_rgb(np.array([[True, False]]))[..., 0].tolist() == [[255, 0]]


def test_bad_shapes_and_dtypes_are_explained():
    with pytest.raises(ValueError, match="one 2D slice"):
        to_model_rgb(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="RGB"):
        to_model_rgb(np.zeros((3, 4, 2)), rgb=True)
    with pytest.raises(ValueError, match="complex"):
        to_model_rgb(np.zeros((3, 4), complex))
    with pytest.raises(ValueError, match="empty"):
        to_model_rgb(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="finite"):
        to_model_rgb(np.zeros((3, 4)), contrast_limits=(0, np.nan))


def test_take_slice_of_numpy_zarr_and_rgb_stacks(tmp_path):
    stack = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5)
    assert np.array_equal(take_slice(stack, (1, 2)), stack[1, 2])
    stored = zarr.open_array(tmp_path / "s.zarr", mode="w", shape=stack.shape, dtype=stack.dtype, chunks=(1, 1, 4, 5))
    stored[:] = stack
    assert np.array_equal(take_slice(stored, (0, 1)), stack[0, 1])
    rgb_stack = np.zeros((3, 4, 5, 3), np.uint8)
    assert take_slice(rgb_stack, (2,), rgb=True).shape == (4, 5, 3)
    assert take_slice(np.zeros((4, 5)), ()).shape == (4, 5)
    with pytest.raises(IndexError, match="outside"):
        take_slice(stack, (2, 0))
    with pytest.raises(ValueError, match="leading indices"):
        take_slice(stack, (0,))
