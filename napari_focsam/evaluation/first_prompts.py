"""Simulated first prompts from the ground truth: the SegNext Table 3 protocol, extended to polygons and masks.

The object is ``gt == 1`` (ignore pixels count as background, as in the click simulator). Every rule is
deterministic given the object's generator (seeded from the protocol's seed and the object's key):

* ``click``: no first prompt here; the official click simulator places the first click (the centre of the object).
* ``box``: the object's bounding box, each of its four sides moved by Gaussian noise of standard deviation 10 % of
  the box's side length along that axis, at most 20 pixels (SAM's own box-noise rule in training), rounded to whole
  pixels and clipped to the image.
* ``polygon``: the outline of the object's largest connected component (the 0.5 iso-line of the mask, so vertices
  lie on pixel edges), simplified by Douglas-Peucker with the smallest tolerance (doubling from 0.5 pixel) that
  leaves at most ``POLYGON_VERTICES`` vertices; filled with the nonzero rule like a lasso.
* ``scribble``: a stroke along the object's skeleton: the longest geodesic path through the skeleton of its largest
  component, with ``SCRIBBLE_TRIM`` of its length cut at each end (skeleton branches run into the object's corners),
  as a polyline through every ``max(1, len / 32)``-th pixel; an object whose skeleton is a single pixel gets a
  2-pixel horizontal stroke through its deepest point.
* ``mask``: the object eroded, dilated or coarsened (one of the three, chosen uniformly per object) by
  ``r = max(2, round(MASK_ERROR * sqrt(area)))`` pixels: erosion and dilation with a disk of radius r (an erosion
  that would empty the mask is halved until it does not), coarsening by averaging r×r blocks, thresholding at 0.5
  and upsampling by repetition (a low-resolution annotation).
"""

from __future__ import annotations

from collections import deque

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import approximate_polygon, find_contours
from skimage.morphology import disk, skeletonize

from ..engine.prompt_shapes import deepest_point, polygon_crossings
from ..engine.types import Prompts

FIRST_PROMPTS = ("click", "box", "polygon", "scribble", "mask")
BOX_NOISE = 0.1
BOX_NOISE_MAX = 20.0
POLYGON_VERTICES = 12
SCRIBBLE_TRIM = 0.15
MASK_ERROR = 0.05


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (1 + int(np.argmax(sizes)))


def simulate_box(obj: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = obj.shape
    rows, cols = np.flatnonzero(obj.any(1)), np.flatnonzero(obj.any(0))
    y0, y1, x0, x1 = float(rows[0]), float(rows[-1]), float(cols[0]), float(cols[-1])
    sy, sx = y1 - y0 + 1, x1 - x0 + 1
    noise = rng.normal(0.0, BOX_NOISE, 4) * np.array([sy, sx, sy, sx])
    noise = np.clip(noise, -BOX_NOISE_MAX, BOX_NOISE_MAX)
    box = np.round(np.array([y0, x0, y1, x1]) + noise)
    box[[0, 2]] = np.clip(box[[0, 2]], 0, h - 1)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, w - 1)
    return box


def simulate_polygon(obj: np.ndarray, max_vertices: int = POLYGON_VERTICES) -> np.ndarray:
    component = largest_component(obj)
    contours = find_contours(np.pad(component, 1).astype(np.float32), 0.5)
    contour = max(contours, key=len) - 1.0
    h, w = obj.shape
    contour[:, 0] = np.clip(contour[:, 0], -0.5, h - 0.5)
    contour[:, 1] = np.clip(contour[:, 1], -0.5, w - 0.5)
    tolerance = 0.5
    while True:
        simplified = _simplified(contour, tolerance)
        if len(simplified) <= max_vertices or tolerance > max(h, w):
            break
        tolerance *= 2
    while tolerance > 0.5 and polygon_crossings(simplified):  # a user's polygon never crosses itself
        tolerance /= 2
        simplified = _simplified(contour, tolerance)
    if len(np.unique(simplified, axis=0)) < 3:  # a sliver: its bounding box
        rows, cols = np.flatnonzero(component.any(1)), np.flatnonzero(component.any(0))
        y0, y1, x0, x1 = rows[0] - 0.5, rows[-1] + 0.5, cols[0] - 0.5, cols[-1] + 0.5
        simplified = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])
    return simplified


def _simplified(contour: np.ndarray, tolerance: float) -> np.ndarray:
    simplified = approximate_polygon(contour, tolerance)
    return simplified[:-1] if np.allclose(simplified[0], simplified[-1]) else simplified


def _farthest(skeleton: np.ndarray, start: tuple[int, int]) -> tuple[tuple[int, int], dict]:
    """Breadth-first search over the 8-connected skeleton: the last pixel reached and the parents."""
    h, w = skeleton.shape
    parents: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
    queue = deque([start])
    last = start
    while queue:
        last = queue.popleft()
        y, x = last
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                n = (y + dy, x + dx)
                if 0 <= n[0] < h and 0 <= n[1] < w and skeleton[n] and n not in parents:
                    parents[n] = last
                    queue.append(n)
    return last, parents


def simulate_scribble(obj: np.ndarray) -> np.ndarray:
    component = largest_component(obj)
    skeleton = skeletonize(component)
    ys, xs = np.nonzero(skeleton)
    if len(ys) < 2:
        y, x = deepest_point(component)
        w = obj.shape[1]
        return np.array([[y, max(0.0, x - 1)], [y, min(w - 1.0, x + 1)]])
    first, _ = _farthest(skeleton, (int(ys[0]), int(xs[0])))
    end, parents = _farthest(skeleton, first)
    path = []
    node = end
    while node is not None:
        path.append(node)
        node = parents[node]
    path = np.array(path, dtype=np.float64)
    trim = int(SCRIBBLE_TRIM * len(path))
    if len(path) - 2 * trim >= 2:
        path = path[trim: len(path) - trim]
    step = max(1, len(path) // 32)
    keep = np.r_[np.arange(0, len(path), step), len(path) - 1]
    stroke = path[np.unique(keep)]
    if len(np.unique(stroke, axis=0)) < 2:
        stroke = path[[0, -1]]
    return stroke


def simulate_mask(obj: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    mode = ("erode", "dilate", "coarse")[int(rng.integers(3))]
    r = max(2, int(round(MASK_ERROR * np.sqrt(obj.sum()))))
    if mode == "dilate":
        return ndi.binary_dilation(obj, structure=disk(r)), mode
    if mode == "erode":
        while r >= 1:
            eroded = ndi.binary_erosion(obj, structure=disk(r))
            if eroded.any():
                return eroded, mode
            r //= 2
        return obj.copy(), mode
    h, w = obj.shape
    ph, pw = -(-h // r) * r, -(-w // r) * r
    blocks = np.pad(obj, ((0, ph - h), (0, pw - w))).reshape(ph // r, r, pw // r, r).mean(axis=(1, 3)) >= 0.5
    coarse = np.repeat(np.repeat(blocks, r, axis=0), r, axis=1)[:h, :w]
    return (coarse if coarse.any() else obj.copy()), mode


def simulate_first_prompt(kind: str, gt: np.ndarray, rng: np.random.Generator) -> Prompts | None:
    """The first prompt of ``kind`` for the object ``gt == 1``; None for ``click`` (the click simulator's job)."""
    if kind not in FIRST_PROMPTS:
        raise ValueError(f"unknown first prompt {kind!r}; choose from {', '.join(FIRST_PROMPTS)}")
    obj = np.asarray(gt) == 1
    if kind == "click":
        return None
    if kind == "box":
        return Prompts().with_box(simulate_box(obj, rng))
    if kind == "polygon":
        return Prompts().with_polygon(simulate_polygon(obj), obj.shape)
    if kind == "scribble":
        return Prompts().with_scribble(simulate_scribble(obj), positive=True)
    return Prompts().with_mask(simulate_mask(obj, rng)[0])
