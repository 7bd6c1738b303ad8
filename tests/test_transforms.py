"""Preprocessing, coordinate and mask transforms of both conventions, against their references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from napari_focsam.models.sam import PIXEL_MEAN, PIXEL_STD
from napari_focsam.models.transforms import FocsamTransform, SamTransform, box_yx_to_xy, yx_to_xy


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_yx_to_xy_is_the_one_swap():
    assert yx_to_xy(np.array([[1.0, 2.0], [3.0, 4.0]])).tolist() == [[2.0, 1.0], [4.0, 3.0]]
    assert box_yx_to_xy(np.array([1, 2, 3, 4])).tolist() == [2, 1, 4, 3]


@pytest.mark.parametrize("size", [(321, 481), (480, 854), (1024, 1024), (37, 1500)])
def test_sam_transform_matches_sam_predictor_preprocessing(size):
    image = _image(*size)
    transform = SamTransform()
    ours = transform.image_to_input(image, torch.device("cpu"), torch.float32)
    # segment-anything: ResizeLongestSide on the uint8 image, then Sam.preprocess (normalise, pad)
    resized = ResizeLongestSide(1024).apply_image(image)
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None]
    mean = torch.tensor(PIXEL_MEAN).view(-1, 1, 1)
    std = torch.tensor(PIXEL_STD).view(-1, 1, 1)
    x = (x - mean) / std
    h, w = x.shape[-2:]
    ref = F.pad(x, (0, 1024 - w, 0, 1024 - h))
    assert torch.equal(ours, ref)
    geometry = transform.geometry(size)
    assert geometry.resized_size == (h, w) and geometry.padded_size == size

    points = np.array([[10.0, 20.0], [size[0] - 1, size[1] - 1]])
    ref_xy = ResizeLongestSide(1024).apply_coords(points[:, ::-1].copy(), size)
    np.testing.assert_allclose(transform.points_to_input(points, geometry), ref_xy, rtol=1e-6)


def test_sam_postprocess_matches_sam_model():
    from segment_anything.modeling import Sam

    transform = SamTransform()
    geometry = transform.geometry((321, 481))
    logits = torch.randn(1, 1, 256, 256)
    ours = transform.logits_to_original(logits, geometry)
    ref = Sam.postprocess_masks(_FakeSam(), logits, geometry.resized_size, geometry.original_size)
    assert torch.equal(ours, ref)


class _FakeSam:
    """Just enough of ``Sam`` for its ``postprocess_masks`` (which only reads the encoder's img_size)."""

    class image_encoder:  # noqa: N801
        img_size = 1024


def test_focsam_geometry_pads_to_32_then_resizes():
    transform = FocsamTransform()
    geometry = transform.geometry((321, 481))
    assert geometry.padded_size == (352, 512)
    assert geometry.resized_size == (704, 1024)
    assert transform.geometry((1024, 1024)).resized_size == (1024, 1024)


@pytest.mark.parametrize("size", [(100, 150), (1100, 900)])  # up- and down-scaling (antialiasing would matter)
def test_focsam_image_is_bgr_with_rgb_statistics_no_antialias(size):
    image = _image(*size, seed=3)
    transform = FocsamTransform()
    ours = transform.image_to_input(image, torch.device("cpu"), torch.float64)
    geometry = transform.geometry(image.shape[:2])
    bgr = torch.as_tensor(image[..., ::-1].copy()).permute(2, 0, 1)[None].float()
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    x = (bgr - mean) / std  # channel 0 is blue, normalised with the red statistics, as the official code does
    (h, w), (ph, pw) = size, geometry.padded_size
    x = F.pad(x, (0, pw - w, 0, ph - h)).double()
    x = F.interpolate(x, geometry.resized_size, mode="bilinear", align_corners=False)
    ref = F.pad(x, (0, 1024 - x.shape[-1], 0, 1024 - x.shape[-2]))
    assert ours.dtype == torch.float64
    assert torch.equal(ours, ref)


def test_focsam_coordinates_scale_by_resized_over_padded_in_float32():
    transform = FocsamTransform()
    geometry = transform.geometry((321, 481))  # padded 352x512 -> 704x1024: factor 2 both ways
    xy = transform.points_to_input(np.array([[100.0, 200.0]]), geometry)
    assert xy.dtype == np.float32
    assert xy.tolist() == [[400.0, 200.0]]


def test_focsam_postprocess_crops_resizes_to_padded_then_crops():
    transform = FocsamTransform()
    geometry = transform.geometry((321, 481))
    logits = torch.randn(1, 1, 256, 256, dtype=torch.float64)
    out = transform.logits_to_original(logits, geometry)
    up = F.interpolate(logits, (1024, 1024), mode="bilinear", align_corners=False)[..., :704, :1024]
    ref = F.interpolate(up, (352, 512), mode="bilinear", align_corners=False)[..., :321, :481]
    assert out.shape == (1, 1, 321, 481)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("shape", [(768, 1024), (1024, 1024), (300, 1024), (1024, 17), (1, 1024), (1023, 1023)])
def test_upsampled_crop_is_the_full_upsampling_cropped(shape):
    from napari_focsam.models.transforms import upsampled_crop

    logits = torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(0))
    full = torch.nn.functional.interpolate(logits, (1024, 1024), mode="bilinear", align_corners=False)
    assert torch.equal(upsampled_crop(logits, 1024, shape), full[..., : shape[0], : shape[1]])


@pytest.mark.parametrize("original", [(768, 1024), (512, 512), (300, 2000), (4000, 3000)])
def test_post_processing_equals_the_plain_interpolation_chain(original):
    from napari_focsam.models.transforms import FocsamTransform, SamTransform

    logits = torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(1))
    interp = torch.nn.functional.interpolate
    for transform in (SamTransform(), FocsamTransform()):
        geometry = transform.geometry(original)
        up = interp(logits, (1024, 1024), mode="bilinear", align_corners=False)
        (rh, rw), (h, w) = geometry.resized_size, geometry.original_size
        if isinstance(transform, SamTransform):
            expected = interp(up[..., :rh, :rw], (h, w), mode="bilinear", align_corners=False)
        else:
            expected = interp(up[..., :rh, :rw], geometry.padded_size, mode="bilinear",
                              align_corners=False)[..., :h, :w]
        assert torch.equal(transform.logits_to_original(logits, geometry), expected)
