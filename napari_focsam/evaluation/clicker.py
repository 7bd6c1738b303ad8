"""The click simulator of the FocSAM / InterFormer evaluation protocol, with exact distances.

Given the current prediction, the ground truth and the pixels clicked so far, the next click goes to the centre of
the larger error region:

1. ``FN = ~pred & gt`` and ``FP = pred & ~gt``, where ``pred = (pred == 1)`` and ``gt = (gt == 1)`` (so a value
   255 in ``gt`` counts as *not object*, exactly as the official code), and where the pixels already clicked and the
   optional ``ignore`` pixels are removed from both maps.
2. Each map gets its Euclidean distance transform to the nearest pixel outside it, computed on the map zero-padded
   by one pixel, so that the image border counts as outside.
3. The click is positive iff the largest FN distance is strictly larger than the largest FP distance (a tie is a
   negative click); no click at all when both maps are empty.
4. The candidates are the pixels of the chosen map at its maximal distance; one of them is the click.

**Exact distances.** The official code uses ``cv2.distanceTransform(DIST_L2, 0)``, whose float32 output carries
±1-ulp noise that even depends on memory alignment (up to ~1e-6 on these mask sizes), and then selects
``dist > max / (1 + eps_f32)``. Here the distances come from :func:`scipy.ndimage.distance_transform_edt`'s exact
feature transform and are kept as *integer squared distances*: the sign rule and the tie set are decided on
integers, so they are exact and reproducible everywhere. On the official golden cases the candidate sets are
identical and the distances agree within 1e-6 (the cv2 noise); see ``tests/test_evaluation_clicker.py``.

**Ties.** The official code picks a candidate with Python's ``random.choice`` under one global seed, so its pick
depends on everything evaluated before. Here the choice is made by an explicit :class:`numpy.random.Generator`
(uniform over the candidates, as the official distribution) that the runner seeds per object, so a result never
depends on the order of evaluation or on resuming; without a generator the first candidate in row-major order is
taken (fully deterministic, used by the unit tests).

**Ignore pixels.** ``ignore`` is an explicit mask: the simulator never clicks there and the ignored pixels bound the
error regions like clicked pixels do. Which pixels are ignored is the runner's policy (see
:mod:`napari_focsam.evaluation.protocol`): with ``ignore=None`` this module is exactly the official code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

POSITIVE = 1
NEGATIVE = 0
NO_CLICK = -1


@dataclass(frozen=True)
class Click:
    """One simulated click: pixel (y, x), its label, and the distance of that pixel to the error region's edge."""

    y: int
    x: int
    positive: bool
    distance: float

    @property
    def label(self) -> int:
        return POSITIVE if self.positive else NEGATIVE


@dataclass(frozen=True)
class ErrorAnalysis:
    """Everything the click rule looks at: exact squared distances, the label and the candidate pixels.

    ``fn_d2`` / ``fp_d2`` are (H, W) int64 squared Euclidean distances (0 outside the error maps); ``label`` is
    :data:`POSITIVE`, :data:`NEGATIVE` or :data:`NO_CLICK`; ``candidates`` is an (N, 2) int64 array of (y, x) in
    row-major order (empty when there is no click).
    """

    fn_d2: np.ndarray
    fp_d2: np.ndarray
    label: int
    candidates: np.ndarray

    @property
    def fn_max(self) -> float:
        return float(np.sqrt(self.fn_d2.max(initial=0)))

    @property
    def fp_max(self) -> float:
        return float(np.sqrt(self.fp_d2.max(initial=0)))

    @property
    def fn_dist(self) -> np.ndarray:
        return np.sqrt(self.fn_d2)

    @property
    def fp_dist(self) -> np.ndarray:
        return np.sqrt(self.fp_d2)


def squared_distance_to_outside(mask: np.ndarray) -> np.ndarray:
    """Exact squared Euclidean distance of every pixel of ``mask`` to the nearest pixel outside it (0 outside).

    The image border counts as outside (the mask is zero-padded by one pixel). Only the mask's bounding box plus
    that one-pixel ring is transformed, which gives the same result: the ring is all background and lies between
    every inside pixel and anything beyond it.
    """
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, dtype=np.int64)
    if not mask.any():
        return out
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = np.pad(mask[y0:y1, x0:x1], 1)
    # the feature transform gives, for each pixel, the index of its nearest background pixel (exact EDT)
    nearest = ndimage.distance_transform_edt(crop, return_distances=False, return_indices=True)
    grid = np.indices(crop.shape)
    d2 = ((nearest - grid).astype(np.int64) ** 2).sum(axis=0)
    out[y0:y1, x0:x1] = d2[1:-1, 1:-1]
    return out


def _clicked_mask(shape: tuple[int, int], clicked: Iterable[tuple[float, float]] | np.ndarray | None) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    if clicked is None:
        return mask
    points = np.asarray(list(clicked) if not isinstance(clicked, np.ndarray) else clicked, dtype=np.float64)
    if points.size == 0:
        return mask
    points = np.rint(points.reshape(-1, 2)).astype(np.int64)
    height, width = shape
    inside = (points[:, 0] >= 0) & (points[:, 0] < height) & (points[:, 1] >= 0) & (points[:, 1] < width)
    if not inside.all():
        raise ValueError(f"clicked pixels outside the {height}x{width} image: {points[~inside].tolist()}")
    mask[points[:, 0], points[:, 1]] = True
    return mask


def analyse_errors(
    pred: np.ndarray,
    gt: np.ndarray,
    clicked: Iterable[tuple[float, float]] | np.ndarray | None = None,
    ignore: np.ndarray | None = None,
) -> ErrorAnalysis:
    """The error maps, their exact distances, the label of the next click and its candidate pixels.

    ``pred`` and ``gt``: (H, W) arrays, object where the value is 1 (bool True counts as 1; gt 255 is *not* object).
    ``clicked``: (y, x) pixels already clicked (rounded to the nearest pixel). ``ignore``: optional (H, W) bool
    mask of pixels that are never error pixels.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"pred and gt must be (H, W) arrays of one shape, got {pred.shape} and {gt.shape}")
    valid = ~_clicked_mask(gt.shape, clicked)
    if ignore is not None:
        ignore = np.asarray(ignore, dtype=bool)
        if ignore.shape != gt.shape:
            raise ValueError(f"ignore has shape {ignore.shape}, expected {gt.shape}")
        valid &= ~ignore
    is_pred = pred == 1
    is_gt = gt == 1
    fn_d2 = squared_distance_to_outside(~is_pred & is_gt & valid)
    fp_d2 = squared_distance_to_outside(is_pred & ~is_gt & valid)
    fn_max, fp_max = int(fn_d2.max()), int(fp_d2.max())
    if fn_max == 0 and fp_max == 0:
        return ErrorAnalysis(fn_d2, fp_d2, NO_CLICK, np.zeros((0, 2), dtype=np.int64))
    if fn_max > fp_max:
        label, chosen, best = POSITIVE, fn_d2, fn_max
    else:
        label, chosen, best = NEGATIVE, fp_d2, fp_max
    candidates = np.argwhere(chosen == best).astype(np.int64)  # row-major order, as torch.nonzero
    return ErrorAnalysis(fn_d2, fp_d2, label, candidates)


def choose_candidate(candidates: np.ndarray, rng: np.random.Generator | None = None) -> tuple[int, int]:
    """One of the candidate pixels: uniform with ``rng`` (the official rule), the row-major first without."""
    if len(candidates) == 0:
        raise ValueError("no candidate pixels to choose from")
    index = 0 if rng is None else int(rng.integers(len(candidates)))
    y, x = candidates[index]
    return int(y), int(x)


def next_click(
    pred: np.ndarray,
    gt: np.ndarray,
    clicked: Iterable[tuple[float, float]] | np.ndarray | None = None,
    ignore: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> Click | None:
    """The next simulated click, or ``None`` when the prediction has no error left outside clicked/ignored pixels."""
    analysis = analyse_errors(pred, gt, clicked, ignore)
    if analysis.label == NO_CLICK:
        return None
    y, x = choose_candidate(analysis.candidates, rng)
    d2 = analysis.fn_d2 if analysis.label == POSITIVE else analysis.fp_d2
    return Click(y, x, analysis.label == POSITIVE, float(np.sqrt(d2[y, x])))


class ClickSimulator:
    """The clicks of one object, step after step: ``step(pred)`` adds the next click (or none) and returns it.

    The first call should get an empty prediction (the official loop starts from all zeros), which puts the first
    click at the most interior pixel of the object.
    """

    def __init__(
        self, gt: np.ndarray, ignore: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> None:
        self.gt = np.asarray(gt)
        self.ignore = ignore
        self.rng = rng
        self.clicks: list[Click] = []

    @property
    def points(self) -> np.ndarray:
        """(N, 2) float64 (y, x) of the clicks so far."""
        return np.array([[c.y, c.x] for c in self.clicks], dtype=np.float64).reshape(-1, 2)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 labels of the clicks so far: 1 positive, 0 negative."""
        return np.array([c.label for c in self.clicks], dtype=np.int64)

    def step(self, pred: np.ndarray) -> Click | None:
        click = next_click(pred, self.gt, [(c.y, c.x) for c in self.clicks], self.ignore, self.rng)
        if click is not None:
            self.clicks.append(click)
        return click
