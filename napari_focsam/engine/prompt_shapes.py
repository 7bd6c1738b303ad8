"""The geometry of the prompts that are not clicks: polygons, scribbles and masks, checked and rasterised.

Coordinates are (y, x) in pixels of the original image, a pixel's centre at its integer index, as everywhere in the
package. Polygons and scribbles may touch the image's outer edge: a vertex is inside when
``-0.5 <= y <= H - 0.5`` and ``-0.5 <= x <= W - 0.5``.

**Filling a polygon.** A pixel belongs to a polygon when its centre has a non-zero winding number (the *nonzero*
rule of SVG and PostScript). A lasso that crosses itself therefore stays filled where it loops over itself (a
figure eight is two filled lobes, a loop drawn twice is filled once), which is what a hand-drawn lasso means; the
even-odd rule would punch holes into it. The polygon is closed implicitly (last vertex to first). A centre exactly
on the outline follows the usual fill convention: on a top or left edge it is in, on a bottom or right edge out (two
polygons sharing an edge never share a pixel). A polygon with fewer than 3 distinct vertices, all vertices on one
line (zero area), or that covers no pixel centre is refused.

**Sampling a scribble.** A stroke of arc length L becomes ``n = clip(ceil(L / spacing), 1, max_points)`` points at
the centres of n equal arc-length pieces, so the end points (which users let run up to, or over, the object's edge)
are never taken. See :func:`sample_stroke`.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..models.geometry import ImageGeometry

#: side of SAM's low-resolution mask frame (the mask input and output of the decoder)
LOW_RES = 256


def as_vertices(vertices: Any, what: str, minimum: int) -> np.ndarray:
    """``vertices`` as a finite (N, 2) float64 array with at least ``minimum`` distinct points (else ValueError)."""
    try:
        array = np.array(vertices, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"a {what} is a list of (y, x) points, got {vertices!r:.80}") from None
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"a {what} is an (N, 2) array of (y, x) points, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"the {what}'s coordinates must be finite numbers")
    distinct = len(np.unique(array, axis=0))
    if distinct < minimum:
        hint = " (use a click for a single point)" if what == "scribble" else ""
        raise ValueError(f"a {what} needs at least {minimum} distinct points, got {distinct}{hint}")
    array.setflags(write=False)
    return array


def check_extent(points: np.ndarray, shape: tuple[int, int], what: str) -> None:
    """Refuse points outside the image's extent [-0.5, H - 0.5] x [-0.5, W - 0.5]."""
    h, w = shape
    outside = ~((points[:, 0] >= -0.5) & (points[:, 0] <= h - 0.5) & (points[:, 1] >= -0.5) & (points[:, 1] <= w - 0.5))
    if outside.any():
        y, x = points[np.argmax(outside)]
        raise ValueError(f"the {what} has {int(outside.sum())} point(s) outside the image of {h}×{w} pixels, "
                         f"e.g. (y={y:.1f}, x={x:.1f})")


def fill_polygon(vertices: Any, shape: tuple[int, int]) -> np.ndarray:
    """The (H, W) bool mask of the pixels whose centre the closed polygon winds around (nonzero rule).

    Checks the polygon first: at least 3 distinct finite vertices inside the image's extent, non-zero area, at least
    one pixel centre covered; otherwise ValueError.
    """
    poly = as_vertices(vertices, "polygon", 3)
    check_extent(poly, shape, "polygon")
    centred = poly - poly.mean(axis=0)
    if np.linalg.svd(centred, compute_uv=False)[1] <= 1e-9 * max(1.0, float(np.abs(centred).max())):
        raise ValueError("the polygon has zero area (all its vertices lie on one line)")
    h, w = shape
    mask = np.zeros((h, w), bool)
    y0, y1 = poly[:, 0], np.roll(poly[:, 0], -1)
    x0, x1 = poly[:, 1], np.roll(poly[:, 1], -1)
    rows = np.arange(max(0, math.ceil(poly[:, 0].min())), min(h - 1, math.floor(poly[:, 0].max())) + 1)
    if rows.size:
        # scanline: the edges crossing each row's centre line, with +1 upward / -1 downward (half-open in y)
        yc = rows[:, None].astype(np.float64)
        up = (y0 <= yc) & (y1 > yc)
        down = (y1 <= yc) & (y0 > yc)
        crossing = up | down
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (yc - y0) / (y1 - y0)
        xs = np.where(crossing, x0 + t * (x1 - x0), np.inf)
        direction = np.where(up, 1, np.where(down, -1, 0))
        cols = np.arange(w, dtype=np.float64)
        for i, row in enumerate(rows):
            edges = np.flatnonzero(crossing[i])
            if not edges.size:
                continue
            # winding number at each column centre = sum of directions of the crossings left of it
            order = np.argsort(xs[i, edges], kind="stable")
            positions, steps = xs[i, edges][order], direction[i, edges][order]
            winding = np.concatenate([[0], np.cumsum(steps)])[np.searchsorted(positions, cols, side="right")]
            mask[row] = winding != 0
    if not mask.any():
        raise ValueError("the polygon covers no pixel centre (it is thinner than a pixel)")
    return mask


def stroke_length(points: np.ndarray) -> float:
    return float(np.sqrt((np.diff(points, axis=0) ** 2).sum(axis=1)).sum())


def sample_stroke(points: np.ndarray, spacing: float, max_points: int) -> np.ndarray:
    """``n = clip(ceil(L / spacing), 1, max_points)`` points at the centres of n equal arc-length pieces of the
    polyline ``points`` (length L): for n = 1 its arc-length midpoint."""
    segment = np.sqrt((np.diff(points, axis=0) ** 2).sum(axis=1))
    cumulative = np.concatenate([[0.0], np.cumsum(segment)])
    length = cumulative[-1]
    n = int(np.clip(math.ceil(length / max(spacing, 1e-9)), 1, max_points))
    targets = (np.arange(n) + 0.5) * (length / n)
    return np.stack([np.interp(targets, cumulative, points[:, 0]), np.interp(targets, cumulative, points[:, 1])], 1)


def stroke_pixels(points: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The integer pixels (rows, cols) a polyline passes through (one per half-pixel step), clipped to ``shape``."""
    ys, xs = [], []
    for (ya, xa), (yb, xb) in itertools.pairwise(points):
        n = max(2, int(math.ceil(2 * max(abs(yb - ya), abs(xb - xa)))) + 1)
        ys.append(np.linspace(ya, yb, n))
        xs.append(np.linspace(xa, xb, n))
    y = np.clip(np.round(np.concatenate(ys)), 0, shape[0] - 1).astype(np.int64)
    x = np.clip(np.round(np.concatenate(xs)), 0, shape[1] - 1).astype(np.int64)
    return y, x


def as_mask(mask: Any, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A read-only (H, W) bool copy of a binary mask (bool, or numbers that are all 0 or 1); ValueError otherwise."""
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"a mask prompt is a 2D (H, W) array, got shape {array.shape}")
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise ValueError(f"the mask is {array.shape[0]}×{array.shape[1]} but the image is {shape[0]}×{shape[1]}")
    if array.dtype != bool:
        if not (np.issubdtype(array.dtype, np.number) and np.isin(array, (0, 1)).all()):
            raise ValueError("a mask prompt must be boolean or 0/1; for one label of a label image pass "
                             "labels == label_id")
        array = array != 0
    if not array.any():
        raise ValueError("the mask prompt is empty (no pixel set)")
    array = np.array(array, dtype=bool, copy=True)
    array.setflags(write=False)
    return array


def deepest_point(mask: np.ndarray) -> tuple[float, float]:
    """The interior point farthest from the mask's border (the image frame counts as border); among ties the one
    nearest to the ties' centroid, then the first in row-major order."""
    distance = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(distance >= distance.max())
    i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return float(ys[i]), float(xs[i])


def bounding_box(mask: np.ndarray) -> np.ndarray:
    """(y0, x0, y1, x1), inclusive pixel coordinates of the mask's set pixels."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.array([rows[0], cols[0], rows[-1], cols[-1]], dtype=np.float64)


def mask_to_low_res(mask: np.ndarray, geometry: ImageGeometry, scale: float, *, device: Any = "cpu",
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A mask as SAM's (1, 1, 256, 256) low-resolution logits, in the frame the decoder's own logits live in.

    The mask goes where the image goes in the model's input: padded to the model's pre-padded size (FocSAM's /32;
    none for SAM), resized (area-weighted) to the resized size, zero-padded to the square input, then averaged over
    the 4×4 input pixels of each low-resolution cell. A cell covered by the fraction f of object becomes
    ``scale * (2 f - 1)``: ``+scale`` inside, ``-scale`` outside and in the padding, graded on the boundary, so the
    model's own post-processing (bilinear up, crop, resize) gives back the mask's boundary to sub-cell accuracy.
    """
    (h, w), (ph, pw), (rh, rw), size = (geometry.original_size, geometry.padded_size, geometry.resized_size,
                                        geometry.input_size)
    m = torch.zeros((1, 1, ph, pw), dtype=torch.float32)
    m[0, 0, :h, :w] = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))
    if (rh, rw) != (ph, pw):
        m = F.interpolate(m, (rh, rw), mode="bilinear", align_corners=False, antialias=rh < ph or rw < pw)
    m = F.pad(m, (0, size - rw, 0, size - rh))
    fraction = F.avg_pool2d(m, size // LOW_RES)
    return (float(scale) * (2.0 * fraction - 1.0)).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------- napari Shapes data (no napari import)
#: napari shape types read as a region (filled) and as a stroke
REGION_SHAPES = ("polygon", "rectangle", "ellipse")
STROKE_SHAPES = ("path", "line")


def shape_to_prompt(vertices: Any, shape_type: str, *, close_within: float = 2.0) -> tuple[str, np.ndarray]:
    """One napari shape (vertices in image pixels (y, x), its ``shape_type``) as ``("polygon", vertices)`` or
    ``("scribble", points)``.

    ``polygon`` and ``rectangle`` are polygons; an ``ellipse`` (napari stores its bounding box's 4 corners) becomes a
    64-gon; a ``path`` whose ends are within ``close_within`` pixels is a closed lasso (a polygon), any other path
    or ``line`` a scribble.
    """
    points = np.asarray(vertices, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 2:
        raise ValueError(f"shape vertices must be an (N, 2) array, got shape {points.shape}")
    points = points[:, -2:]
    if shape_type in ("polygon", "rectangle"):
        return "polygon", points
    if shape_type == "ellipse":
        centre = points.mean(axis=0)
        radii = (points.max(axis=0) - points.min(axis=0)) / 2
        angle = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        return "polygon", centre + np.stack([radii[0] * np.sin(angle), radii[1] * np.cos(angle)], axis=1)
    if shape_type in STROKE_SHAPES:
        closed = (shape_type == "path" and len(points) >= 4
                  and float(np.hypot(*(points[0] - points[-1]))) <= close_within)
        return ("polygon", points) if closed else ("scribble", points)
    raise ValueError(f"napari shape type {shape_type!r} is not a prompt (use polygon, rectangle, ellipse, path "
                     "or line)")


def prompts_from_shapes(prompts: Any, data: Any, shape_types: Any, image_shape: tuple[int, int], *,
                        positive: bool = True) -> Any:
    """``prompts`` (a :class:`~napari_focsam.engine.types.Prompts`) with napari Shapes data added in order: regions
    filled into the object's region, strokes as scribbles marked ``positive`` or not. ``data``/``shape_types`` are
    a Shapes layer's ``data`` and ``shape_type`` lists, already in image pixel coordinates of one slice."""
    for vertices, shape_type in zip(data, shape_types):
        kind, points = shape_to_prompt(vertices, shape_type)
        if kind == "polygon":
            prompts = prompts.with_polygon(points, image_shape)
        else:
            check_extent(as_vertices(points, "scribble", 2), image_shape, "scribble")
            prompts = prompts.with_scribble(points, positive)
    return prompts
