"""The weight-free fallback's watershed markers, and the refinement of the boundary in a band around it.

All coordinates are (y, x) pixels of the working resolution (see :mod:`.fallback`). The markers are drawn in
order, each over the previous: the prior background (the box's outside, else the image frame), the box's centre,
the region and scribbles (see :mod:`.fallback_prompts`), then every click as a disk that never reaches more than a
fraction of the way to the nearest click of the other label.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from .fallback_prompts import BACKGROUND, OBJECT, draw_dense_markers, to_working
from .types import Prompts

Box = tuple[int, int, int, int]


def to_working_pixels(points: np.ndarray, original: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(y, x) original pixel coordinates -> integer working-resolution pixels, clipped into the image."""
    scaled = to_working(points, original, size)
    return np.clip(np.round(scaled), 0, np.array([size[0] - 1, size[1] - 1])).astype(np.int64)


def box_rows_cols(box: np.ndarray, scale: tuple[float, float], size: tuple[int, int]) -> Box:
    """The inclusive pixel range (y0, x0, y1, x1) whose centres lie in ``box`` after scaling by ``scale``.

    ``box`` is (y0, x0, y1, x1) in inclusive original pixels; a pixel i of the scaled grid has its centre at
    original ``(i + 0.5) / s - 0.5``. A box narrower than one scaled pixel keeps the pixel under its centre.
    """
    out = []
    for axis in range(2):
        lo, hi = float(box[axis]), float(box[axis + 2])
        s = scale[axis]
        first = int(np.ceil((lo + 0.5) * s - 0.5 - 1e-9))
        last = int(np.floor((hi + 0.5) * s - 0.5 + 1e-9))
        if first > last:
            first = last = int(np.round(((lo + hi) / 2 + 0.5) * s - 0.5))
        first = int(np.clip(first, 0, size[axis] - 1))
        last = int(np.clip(last, first, size[axis] - 1))
        out.append((first, last))
    return out[0][0], out[1][0], out[0][1], out[1][1]


def draw_disk(markers: np.ndarray, y: int, x: int, radius: float, value: int) -> None:
    """Set the pixels within ``radius`` of (y, x) to ``value`` (in place)."""
    height, width = markers.shape
    reach = int(np.floor(radius))
    y0, y1 = max(0, y - reach), min(height, y + reach + 1)
    x0, x1 = max(0, x - reach), min(width, x + reach + 1)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    markers[y0:y1, x0:x1][(yy - y) ** 2 + (xx - x) ** 2 <= radius * radius] = value


def _nearest(points: np.ndarray, y: float, x: float) -> float:
    """The distance from (y, x) to the nearest of ``points`` (at least one)."""
    return float(np.sqrt(((points - (y, x)) ** 2).sum(axis=1)).min())


def background_prior(
    coarse: np.ndarray, points: np.ndarray, labels: np.ndarray, box: Box | None, *, box_margin: float,
    frame_gate: float,
) -> np.ndarray:
    """The prior background markers: everything outside the box grown by ``box_margin``, else the image frame.

    Frame pixels that touch a low-edge region (``coarse < frame_gate``) holding a positive click are left out:
    an object that runs into the image edge with no boundary of its own is not cut at the frame.
    """
    size = coarse.shape
    if box is not None:
        y0, x0, y1, x1 = box
        grow = max(1, int(round(box_margin * max(y1 - y0 + 1, x1 - x0 + 1))))
        background = np.ones(size, bool)
        background[max(0, y0 - grow) : y1 + grow + 1, max(0, x0 - grow) : x1 + grow + 1] = False
        if background.any():
            return background
    background = np.zeros(size, bool)
    background[0, :] = background[-1, :] = True
    background[:, 0] = background[:, -1] = True
    positive = points[labels == 1]
    if frame_gate > 0 and len(positive):
        components, _ = ndi.label(coarse < frame_gate)
        ids = np.unique(components[positive[:, 0], positive[:, 1]])
        ids = ids[ids > 0]
        if len(ids):
            background &= ~ndi.binary_dilation(np.isin(components, ids))
    return background


def watershed_markers(
    coarse: np.ndarray,
    points: np.ndarray,
    labels: np.ndarray,
    box: Box | None,
    prompts: Prompts,
    original: tuple[int, int],
    *,
    click_radius: float,
    opposite_fraction: float,
    region_band: float,
    box_margin: float,
    frame_gate: float,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Watershed markers: the prior background (see :func:`background_prior`), the region and scribbles (see
    :mod:`.fallback_prompts`), then the clicks' disks (radius ``click_radius``) in order; and the seeds the
    refinement keeps."""
    markers = np.zeros(coarse.shape, np.int32)
    markers[background_prior(coarse, points, labels, box, box_margin=box_margin, frame_gate=frame_gate)] = BACKGROUND
    dense = prompts.mask is not None or bool(prompts.scribbles)
    if box is not None and not dense:
        # a box: assume the object covers the box's centre (under the clicks, short of any negative click),
        # unless a positive click near the centre already marks the object there
        y0, x0, y1, x1 = box
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        central = 0.25 * min(y1 - y0 + 1, x1 - x0 + 1)
        radius = min(click_radius, central)
        negatives, positives = points[labels == 0], points[labels == 1]
        if len(negatives):
            radius = min(radius, opposite_fraction * _nearest(negatives, cy, cx))
        if len(positives) and _nearest(positives, cy, cx) <= central:
            radius = 0.0
        if radius > 0:
            draw_disk(markers, cy, cx, radius, OBJECT)
    seeds: list[tuple[int, int]] = []
    if dense:
        seeds = draw_dense_markers(markers, prompts, original, region_band, 0.5 * click_radius)
    for (y, x), label in zip(points, labels):
        radius = click_radius
        opposite = points[labels != label]
        if len(opposite):
            radius = min(radius, max(1.0, opposite_fraction * _nearest(opposite, y, x)))
        draw_disk(markers, y, x, radius, OBJECT if label == 1 else BACKGROUND)
    return markers, seeds


def marker_seeds(points: np.ndarray, labels: np.ndarray, box: Box | None) -> np.ndarray:
    """The marker centres: the clicks, or the box centre for a box alone."""
    if box is not None and not (labels == 1).any():
        y0, x0, y1, x1 = box
        return np.vstack([points.reshape(-1, 2), [[(y0 + y1) // 2, (x0 + x1) // 2]]]).astype(np.int64)
    return points


def refine_boundary(
    fine: np.ndarray, objects: np.ndarray, markers: np.ndarray, seeds: np.ndarray, width: int
) -> np.ndarray:
    """Re-run the watershed on the fine edge map inside a band of ``width`` pixels around the boundary of
    ``objects``.

    ``seeds`` are the marker centres (y, x): the 3 x 3 pixels around each keep their marker, so a click is never
    overruled by the refinement.
    """
    inner = ndi.binary_erosion(objects, iterations=width, border_value=1)
    outer = ~ndi.binary_dilation(objects, iterations=width)
    band = ~(inner | outer)
    if not band.any():
        return objects
    markers2 = np.where(inner, OBJECT, np.where(outer, BACKGROUND, 0)).astype(np.int32)
    for y, x in seeds:
        ys, xs = slice(max(0, y - 1), y + 2), slice(max(0, x - 1), x + 2)
        keep = markers[ys, xs] > 0
        markers2[ys, xs][keep] = markers[ys, xs][keep]
    # flood the band only: with ``mask`` the watershed skips the (many) marker pixels away from the band
    region = ndi.binary_dilation(band)
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    ys, xs = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    flooded = watershed(fine[ys, xs], markers2[ys, xs], mask=region[ys, xs]) == OBJECT
    refined = objects.copy()
    refined[ys, xs][band[ys, xs]] = flooded[band[ys, xs]]
    return refined
