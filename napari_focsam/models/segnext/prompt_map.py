"""SegNext's dense prompt map: every prompt kind as disks or a mask channel in the 1024² input frame.

The map has three channels in the order of the official code: ``[previous mask, positive disks, negative disks]``.

* **Clicks** (the official path): a click at original pixel (y, x) moves to ``(floor(y·S/H + ½), floor(x·S/W + ½))``
  in the S × S frame (S = 1024; rows and columns scale separately, since the image is stretched to a square) and
  becomes a disk of radius 5 (``dy² + dx² <= 25``, clipped at the border) in its sign's channel. Positive and
  negative disks may overlap. Clicks between pixels are first rounded to the nearest pixel (halves up).
* **Box** (the paper: four negative clicks at its corners): negative disks at (y0, x0), (y0, x1), (y1, x0),
  (y1, x1) of the inclusive pixel box.
* **Polygon** (the paper: negative clicks, like the box): :func:`polygon_points` gives negative clicks at its
  vertices. A polygon drawn as the object's *region* (our filled-polygon prompt) is a mask, as below.
* **Scribble** (the paper: a set of clicks in the sign's channel): the stroke is mapped into the S × S frame and
  sampled every half pixel along each segment; every sample rounded to a pixel is a disk centre, so the stroke
  becomes a band of width 11 px (in that frame) in the positive or negative channel.
* **Mask** (the paper: the third channel): at the step that sets or changes a region prompt, the region (1 inside,
  0 outside) replaces the previous probability in the previous-mask channel; later steps feed their prediction
  back as usual.

The previous-mask channel holds the previous step's **probability** at the original size (zeros before the first
step), resized bilinearly (``align_corners=False``) to S × S, not thresholded.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F

#: the official disk radius (``norm_radius``) in the input frame
RADIUS = 5
#: sampling step along a scribble, in input-frame pixels
SCRIBBLE_STEP = 0.5


def round_pixels(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, 2) (y, x) original coordinates → nearest integer pixels (halves up), inside the image."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    pixels = np.floor(points + 0.5).astype(np.int64)
    pixels[:, 0] = pixels[:, 0].clip(0, shape[0] - 1)
    pixels[:, 1] = pixels[:, 1].clip(0, shape[1] - 1)
    return pixels


def scale_pixels(pixels: np.ndarray, shape: tuple[int, int], size: int = 1024) -> np.ndarray:
    """Integer (y, x) original pixels → the S × S frame: ``floor(v·S/n + ½)`` per axis, in exact integer arithmetic
    (``(2·S·v + n) // (2·n)``), which equals the official float formula for every n ≤ 4096."""
    pixels = np.asarray(pixels, dtype=np.int64).reshape(-1, 2)
    h, w = int(shape[0]), int(shape[1])
    out = np.empty_like(pixels)
    out[:, 0] = (2 * size * pixels[:, 0] + h) // (2 * h)
    out[:, 1] = (2 * size * pixels[:, 1] + w) // (2 * w)
    return out


def points_nd(pixels: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """The official click tensor layout (2M, 3): rows (y, x, index), positives first then negatives, each group
    padded with (-1, -1, -1) to M = max(#pos, #neg, 1). Only used to check the layout against the official one."""
    pixels = np.asarray(pixels, dtype=np.int64).reshape(-1, 2)
    positive = np.asarray(positive, dtype=bool).reshape(-1)
    index = np.arange(len(pixels))
    groups = [np.column_stack([pixels[sel], index[sel]]) for sel in (positive, ~positive)]
    m = max(len(groups[0]), len(groups[1]), 1)
    rows = [np.vstack([g, np.full((m - len(g), 3), -1, np.int64)]) for g in groups]
    return np.vstack(rows).astype(np.int64)


def _stencil(radius: int) -> np.ndarray:
    d = np.arange(-radius, radius + 1)
    return d[:, None] ** 2 + d[None, :] ** 2 <= radius * radius


def paint_disks(target: np.ndarray, centres: np.ndarray, radius: int = RADIUS) -> np.ndarray:
    """OR disks of ``radius`` (``dy² + dx² <= r²``) at integer (y, x) ``centres`` into the bool map ``target``."""
    stencil = _stencil(radius)
    h, w = target.shape
    for cy, cx in np.asarray(centres, dtype=np.int64).reshape(-1, 2):
        y0, y1 = max(cy - radius, 0), min(cy + radius + 1, h)
        x0, x1 = max(cx - radius, 0), min(cx + radius + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        target[y0:y1, x0:x1] |= stencil[y0 - cy + radius:y1 - cy + radius, x0 - cx + radius:x1 - cx + radius]
    return target


def box_points(box: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The four corners (y, x) of an inclusive (y0, x0, y1, x1) box, as original pixels (negative clicks)."""
    y0, x0, y1, x1 = np.asarray(box, dtype=np.float64).reshape(4)
    return round_pixels(np.array([[y0, x0], [y0, x1], [y1, x0], [y1, x1]]), shape)


def polygon_points(vertices: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A polygon's vertices as original pixels (negative clicks, the paper's polygon encoding)."""
    return round_pixels(np.unique(round_pixels(vertices, shape), axis=0), shape)


def stroke_centres(points: np.ndarray, shape: tuple[int, int], size: int = 1024,
                   step: float = SCRIBBLE_STEP) -> np.ndarray:
    """Disk centres in the S × S frame along a polyline of (y, x) original coordinates (see the module)."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    scale = np.array([size / shape[0], size / shape[1]])
    frame = pts * scale
    samples = [frame[:1]]
    for a, b in pairwise(frame):
        n = max(1, int(np.ceil(np.hypot(*(b - a)) / step)))
        t = np.arange(1, n + 1)[:, None] / n
        samples.append(a + (b - a) * t)
    centres = np.floor(np.vstack(samples) + 0.5).astype(np.int64).clip(0, size - 1)
    return np.unique(centres, axis=0)


def disk_channels(positive: np.ndarray, negative: np.ndarray, size: int = 1024,
                  radius: int = RADIUS) -> np.ndarray:
    """(2, S, S) bool [positive, negative] maps from disk centres already in the S × S frame."""
    maps = np.zeros((2, size, size), dtype=bool)
    paint_disks(maps[0], positive, radius)
    paint_disks(maps[1], negative, radius)
    return maps


def previous_channel(previous: torch.Tensor | None, size: int, *, dtype: torch.dtype,
                     device: torch.device) -> torch.Tensor:
    """(1, 1, S, S): a (1, 1, H, W) probability or region resized bilinearly, or zeros."""
    if previous is None:
        return torch.zeros(1, 1, size, size, dtype=dtype, device=device)
    return F.interpolate(previous.to(device=device, dtype=dtype), (size, size), mode="bilinear",
                         align_corners=False)


def prompt_map(disks: np.ndarray, previous: torch.Tensor | None, *, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
    """The (1, 3, S, S) map [previous, positive, negative] from (2, S, S) disks and the previous-mask input."""
    size = disks.shape[-1]
    prev = previous_channel(previous, size, dtype=dtype, device=device)
    clicks = torch.from_numpy(disks).to(device=device, dtype=dtype)[None]
    return torch.cat([prev, clicks], dim=1)
