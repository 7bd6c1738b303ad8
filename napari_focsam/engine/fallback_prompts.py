"""How the weight-free fallback turns region (mask, label, polygon) and scribble prompts into watershed markers.

At the fallback's working resolution (see :mod:`.fallback`), drawn after the background prior and before the clicks
(so a click overrides them):

* a **region** is resampled to the working size (area-weighted, kept where at least half a working pixel is
  covered); its interior eroded by ``b`` pixels becomes object marker, a ring from ``b`` to ``2 b`` pixels outside it
  becomes background marker, and the band of ``b`` pixels on each side of its outline is left to the watershed,
  which puts the boundary on the strongest edges there. ``b = max(1, region_band * sqrt(area))`` (area in working
  pixels) so the band follows the region's size; a region too thin to erode keeps a disk at its deepest point.
* a **scribble** is drawn as a line of half a click's radius (at least one pixel), object or background marker.

``region_band`` was chosen by the evaluation with simulated mask prompts (``napari-focsam evaluate --first-prompt
mask``, docs/evaluation.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from .prompt_shapes import deepest_point, stroke_pixels
from .types import Prompts

OBJECT = 1
BACKGROUND = 2


def working_region(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The region at the working resolution: area-weighted resampling, at least half a pixel covered."""
    if tuple(mask.shape) == tuple(size):
        return np.asarray(mask, bool)
    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    shrink = size[0] < mask.shape[0] or size[1] < mask.shape[1]
    small = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrink)[0, 0].numpy() >= 0.5
    if not small.any():  # thinner than a working pixel: keep the pixel under its deepest point
        y, x = deepest_point(mask)
        row = min(size[0] - 1, int(y * size[0] / mask.shape[0]))
        small[row, min(size[1] - 1, int(x * size[1] / mask.shape[1]))] = True
    return small


def to_working(points: np.ndarray, original: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(y, x) original pixel coordinates → (float) working-resolution coordinates."""
    out = np.empty_like(points, dtype=np.float64)
    for axis in range(2):
        out[:, axis] = (points[:, axis] + 0.5) * (size[axis] / original[axis]) - 0.5
    return out


def draw_dense_markers(markers: np.ndarray, prompts: Prompts, original: tuple[int, int], region_band: float,
                       scribble_radius: float) -> list[tuple[int, int]]:
    """Draw the region and scribble markers into ``markers`` (working resolution, in place); returns the seed
    pixels (y, x) that the boundary refinement must keep."""
    size = markers.shape
    seeds: list[tuple[int, int]] = []
    if prompts.mask is not None:
        region = working_region(prompts.mask, size)
        b = max(1, int(round(region_band * np.sqrt(region.sum()))))
        inner = ndi.binary_erosion(region, iterations=b, border_value=1)
        near = ndi.binary_dilation(region, iterations=b)
        ring = ndi.binary_dilation(near, iterations=b) & ~near
        markers[ring] = BACKGROUND
        y, x = deepest_point(region)
        if inner.any():
            markers[inner] = OBJECT
        else:
            markers[int(y), int(x)] = OBJECT
        seeds.append((int(y), int(x)))
    radius = max(1.0, scribble_radius)
    for scribble in prompts.scribbles:
        ys, xs = stroke_pixels(to_working(scribble.points, original, size), size)
        line = np.zeros(size, bool)
        line[ys, xs] = True
        if radius >= 1.5:
            disk = np.hypot(*np.mgrid[-int(radius):int(radius) + 1, -int(radius):int(radius) + 1]) <= radius
            line = ndi.binary_dilation(line, structure=disk)
        markers[line] = OBJECT if scribble.positive else BACKGROUND
        seeds.extend(zip(ys.tolist()[:: max(1, len(ys) // 8)], xs.tolist()[:: max(1, len(xs) // 8)]))
    return seeds
