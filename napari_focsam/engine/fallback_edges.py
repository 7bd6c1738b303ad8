"""The weight-free fallback's embedding: colour edge maps of an RGB image at a reduced working resolution.

The image is converted to CIE Lab (lightness down-weighted by the caller, so shading matters less than colour);
an edge map is the Euclidean norm over the channels of the Sobel gradient of the Gaussian-smoothed image. Maps are
normalised by their 90th percentile (floored), so maps of different images and scales are comparable and can be
summed. See :mod:`.fallback` for how the predictor uses them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

#: floor of the gradient normaliser (Lab units after Sobel): keeps the noise of near-constant images from being
#: blown up into edges
MIN_GRADIENT_SCALE = 2.0


def as_rgb_uint8(image: Any) -> np.ndarray:
    """Return ``image`` as a contiguous (H, W, 3) uint8 array; accept gray (H, W) and RGBA (H, W, 4) as well."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"empty image of shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        else:
            values = arr.astype(np.float64)
            if np.issubdtype(arr.dtype, np.floating) and np.nanmax(values, initial=0.0) <= 1.0:
                values = values * 255.0
            arr = np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(arr)


def resize_bilinear(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of an (N, C, H, W) float tensor; anti-aliased when it shrinks."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    shrink = size[0] < t.shape[-2] or size[1] < t.shape[-1]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def working_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An (H, W, 3) uint8 image resized to ``size`` as an (h, w, 3) float32 image in [0, 1]."""
    with torch.no_grad():
        t = torch.from_numpy(rgb if rgb.flags.writeable else rgb.copy())
        t = t.permute(2, 0, 1).unsqueeze(0).to(torch.float32)
        t = resize_bilinear(t, size).clamp_(0.0, 255.0).div_(255.0)
        return t[0].permute(1, 2, 0).numpy()


def colour_gradient(lab: np.ndarray, sigma: float) -> np.ndarray:
    """Euclidean norm over the channels of the Sobel gradient of the Gaussian-smoothed (h, w, C) image."""
    total = np.zeros(lab.shape[:2], np.float32)
    for c in range(lab.shape[2]):
        channel = lab[:, :, c]
        if sigma > 0:
            channel = ndi.gaussian_filter(channel, sigma, mode="nearest")
        gy = ndi.sobel(channel, axis=0, mode="nearest")
        gx = ndi.sobel(channel, axis=1, mode="nearest")
        total += gy * gy + gx * gx
    return np.sqrt(total)


def normalised(gradient: np.ndarray) -> np.ndarray:
    """Divide by the 90th percentile (floored), so maps of different images and scales are comparable."""
    scale = max(float(np.percentile(gradient, 90)), MIN_GRADIENT_SCALE)
    return gradient / np.float32(scale)
