"""The weight-free fallback's automatic mode: seeded watershed instances, offline and fast.

For images of separate blob-like objects on a plain background (nuclei, cells, beads, grains):

1. the image's luminance, lightly smoothed (Gaussian, ``sigma`` pixels);
2. foreground by Otsu's threshold, on the side of it that covers less of the image (bright nuclei on a dark field
   and dark nuclei on a bright one both work), holes filled, specks below ``min_area`` removed;
3. one seed per object: the regional maxima of the smoothed distance to the background that stand out by at least
   ``h`` pixels (h-maxima), so touching round objects get one seed each;
4. a watershed of the negated distance from the seeds, within the foreground; objects below ``min_area`` dropped.

It knows nothing about what the objects are; :func:`instance_scores` measures it against instance ground truth
(``docs/automatic.md`` gives the matching rule and the figures on DSB2018).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .._cancel import CancelToken, check_cancel

__all__ = ["WatershedOptions", "instance_scores", "watershed_instances"]


@dataclass(frozen=True)
class WatershedOptions:
    sigma: float = 1.0
    h: float = 1.0
    min_area: int = 15

    def __post_init__(self) -> None:
        if self.sigma < 0 or self.h <= 0 or self.min_area < 0:
            raise ValueError("sigma and min_area must be >= 0 and h > 0")


def _drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """``labels`` with the objects of fewer than ``min_area`` pixels set to 0."""
    areas = np.bincount(labels.ravel())
    small = areas < min_area
    small[0] = False
    return np.where(small[labels], 0, labels)


def _luminance(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if image.ndim != 2:
        raise ValueError(f"automatic segmentation takes a 2D gray or RGB image, got shape {image.shape}")
    return image.astype(np.float64)


def watershed_instances(
    image: np.ndarray, options: WatershedOptions = WatershedOptions(), *, cancel: CancelToken | None = None
) -> np.ndarray:
    """An (H, W) uint32 instance image of a 2D gray or RGB(A) image (see the module docstring); 0 is background."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    gray = _luminance(image)
    if not np.isfinite(gray).all():
        gray = np.nan_to_num(gray, nan=float(np.nanmin(gray)) if np.isfinite(gray).any() else 0.0)
    smooth = ndi.gaussian_filter(gray, options.sigma) if options.sigma > 0 else gray
    labels = np.zeros(gray.shape, np.uint32)
    if smooth.max() - smooth.min() <= 1e-12:
        return labels
    threshold = threshold_otsu(smooth)
    foreground = smooth > threshold
    if foreground.mean() > 0.5:
        foreground = ~foreground
    foreground = ndi.binary_fill_holes(foreground)
    if options.min_area:
        foreground = _drop_small(ndi.label(foreground)[0], options.min_area) > 0
    check_cancel(cancel)
    if not foreground.any():
        return labels
    distance = ndi.gaussian_filter(ndi.distance_transform_edt(foreground), 1.0)
    seeds, _ = ndi.label(h_maxima(distance, options.h) & foreground)
    check_cancel(cancel)
    # objects without any seed (too small or flat for h) keep one seed: their own component
    components, _ = ndi.label(foreground)
    unseeded = np.setdiff1d(np.unique(components[foreground]), np.unique(components[seeds > 0]))
    if len(unseeded):
        extra = np.isin(components, unseeded)
        seeds = np.where(extra, components + seeds.max(), seeds)
    result = watershed(-distance, seeds, mask=foreground)
    if options.min_area:
        result = _drop_small(result, options.min_area)
    # consecutive ids 1..N in raster order of first appearance
    ids = np.unique(result)
    ids = ids[ids > 0]
    lookup = np.zeros(int(result.max()) + 1, np.uint32)
    lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    return lookup[result]


def instance_scores(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Instance matching of two label images.

    Each ground-truth object is matched to the predicted object it overlaps with the highest IoU. ``mean_iou``:
    that IoU averaged over the ground-truth objects (0 for an object no prediction touches). ``f1``: a true
    positive is a pair with IoU above ``threshold`` (0.5 makes the pairs one-to-one), ``F1 = 2TP / (2TP + FP + FN)``
    over the predicted (FP) and ground-truth (FN) objects left unpaired.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {truth.shape} differ in shape")
    t_ids, t_inv = np.unique(truth, return_inverse=True)
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    joint = np.zeros((len(t_ids), len(p_ids)), np.int64)
    np.add.at(joint, (t_inv.ravel(), p_inv.ravel()), 1)
    t_area, p_area = joint.sum(1), joint.sum(0)
    t_fg, p_fg = t_ids != 0, p_ids != 0
    inter = joint[np.ix_(t_fg, p_fg)]
    union = t_area[t_fg][:, None] + p_area[p_fg][None, :] - inter
    ious = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    n_truth, n_pred = int(t_fg.sum()), int(p_fg.sum())
    best = ious.max(1) if n_pred else np.zeros(n_truth)
    tp = int((ious > threshold).sum()) if n_pred and n_truth else 0
    f1 = 2 * tp / (2 * tp + (n_pred - tp) + (n_truth - tp)) if (n_pred or n_truth) else 1.0
    return {"mean_iou": float(best.mean()) if n_truth else 1.0, "f1": float(f1), "tp": tp, "n_truth": n_truth,
            "n_pred": n_pred}
