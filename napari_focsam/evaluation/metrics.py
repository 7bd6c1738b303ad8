"""The metrics of the FocSAM paper: IoU, NoC@85/90/95, mIoU@k, the ΔIoU stability statistics and SPC.

Everything here works on plain arrays: ``ious`` is an (objects, clicks) array of the IoU after each step.

* **IoU** (:func:`iou`): foreground IoU of ``pred == 1`` against ``gt == 1`` on the whole image, as the official
  ``calculate_binary_iou_single_sample`` without an ignore index, i.e. a 255 pixel is background. ``ignore`` is an
  explicit option (the RITM convention drops those pixels from both masks); the default ``None`` is the paper's.
  An empty union (no object, nothing predicted) gives 0.0, as the official function.
* **NoC@t** (:func:`noc`): the first click whose IoU reaches ``t``; the last click's IoU is set to 1.0 first, so an
  object that never gets there counts as the maximum number of clicks (the official ``ClickTestLoop.compute_noc``:
  "capped at 20"). **NoF@t** (:func:`nof`, not reported by the official code): objects that never reach ``t``.
* **mIoU@k** (:func:`miou_at`): mean IoU after click ``k`` (1-based), the official ``click01 … click20``.
* **ΔIoU** (:func:`delta_iou`, paper §4.3 and Figure 4): for every object, from the second click on, the difference
  between consecutive IoUs; only the drops of at least 1 % (ΔIoU ≤ −0.01: "filtering out ΔIoU greater than
  −1 %") are kept and summarised by :func:`delta_iou_stats`.
* **SPC** (:func:`spc`, paper Table 1): seconds per click = (encoder time + decoder time + refiner time of all the
  clicks) / number of clicks, averaged over objects; the decoder-only SPC (the paper's number in parentheses, "the
  actual interaction time") and the refiner and encoder parts are reported separately.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .protocol import DELTA_IOU_THRESHOLD


def iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Foreground IoU of ``pred == 1`` and ``gt == 1``; ``ignore`` pixels (bool mask) are left out when given."""
    pred = np.asarray(pred) == 1
    gt = np.asarray(gt) == 1
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt have different shapes: {pred.shape} and {gt.shape}")
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        pred, gt = pred[keep], gt[keep]
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 0.0
    return float(np.count_nonzero(pred & gt)) / float(union)


def _as_matrix(ious: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    matrix = np.asarray(ious, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[None]
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError(f"ious must be an (objects, clicks) array, got shape {matrix.shape}")
    return matrix


def noc_per_object(ious: np.ndarray | Sequence[Sequence[float]], threshold: float) -> np.ndarray:
    """Clicks each object needs to reach ``threshold`` (1-based), capped at the number of clicks."""
    capped = _as_matrix(ious).copy()
    capped[:, -1] = 1.0
    return np.argmax(capped >= threshold, axis=1).astype(np.int64) + 1


def noc(ious: np.ndarray | Sequence[Sequence[float]], threshold: float) -> float:
    """Mean number of clicks to reach ``threshold``, capped at the number of clicks (the official NoC)."""
    return float(np.mean(noc_per_object(ious, threshold)))


def nof(ious: np.ndarray | Sequence[Sequence[float]], threshold: float) -> int:
    """Number of objects that never reach ``threshold`` within the clicks (Number of Failures)."""
    return int(np.count_nonzero(~(_as_matrix(ious) >= threshold).any(axis=1)))


def miou_at(ious: np.ndarray | Sequence[Sequence[float]], click: int) -> float:
    """Mean IoU after click ``click`` (1-based)."""
    matrix = _as_matrix(ious)
    if not 1 <= click <= matrix.shape[1]:
        raise ValueError(f"click {click} is outside 1..{matrix.shape[1]}")
    return float(np.mean(matrix[:, click - 1]))


def mean_iou_curve(ious: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Mean IoU after each click: the curve of the IoU-vs-clicks plot."""
    return _as_matrix(ious).mean(axis=0)


def delta_iou(
    ious: np.ndarray | Sequence[Sequence[float]], threshold: float = DELTA_IOU_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """The significant drops: (values, object row) of each ΔIoU_k = IoU_k − IoU_{k−1} (k ≥ 2) ≤ ``threshold``."""
    matrix = _as_matrix(ious)
    deltas = np.diff(matrix, axis=1)
    rows, _ = np.nonzero(deltas <= threshold)
    return deltas[deltas <= threshold], rows


@dataclass(frozen=True)
class DeltaIoUStats:
    """Summary of the drops of :func:`delta_iou` (the paper's Figure 4 shows their histogram)."""

    n_objects: int
    n_transitions: int  # consecutive click pairs looked at: objects x (clicks - 1)
    n_drops: int
    drop_rate: float  # n_drops / n_transitions
    objects_with_drop: float  # fraction of objects with at least one drop
    mean_drop: float  # mean ΔIoU of the drops (negative), 0.0 when there is none
    median_drop: float
    worst_drop: float  # the most negative ΔIoU, 0.0 when there is none

    def to_dict(self) -> dict[str, float | int]:
        return dict(self.__dict__)


def delta_iou_stats(
    ious: np.ndarray | Sequence[Sequence[float]], threshold: float = DELTA_IOU_THRESHOLD
) -> DeltaIoUStats:
    matrix = _as_matrix(ious)
    drops, rows = delta_iou(matrix, threshold)
    n_objects, n_clicks = matrix.shape
    transitions = n_objects * (n_clicks - 1)
    return DeltaIoUStats(
        n_objects=n_objects,
        n_transitions=transitions,
        n_drops=int(drops.size),
        drop_rate=float(drops.size / transitions) if transitions else 0.0,
        objects_with_drop=float(np.unique(rows).size / n_objects),
        mean_drop=float(drops.mean()) if drops.size else 0.0,
        median_drop=float(np.median(drops)) if drops.size else 0.0,
        worst_drop=float(drops.min()) if drops.size else 0.0,
    )


@dataclass(frozen=True)
class SecondsPerClick:
    """The paper's SPC and its parts, in seconds per click (averaged over all clicks of all objects)."""

    spc: float  # (encoder + decoder + refiner) / clicks: the paper's SPC
    encoder: float  # encoder time spread over the clicks
    decoder: float  # the paper's decoder-only SPC ("the actual interaction time")
    refiner: float  # the focus refiner, spread over the clicks (it runs once per object)
    postprocess: float  # upsampling and thresholding to the original size (not in the paper's SPC)
    interaction: float  # the whole predict() call per click, what a user waits after a click

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def spc(
    encoder_seconds: Iterable[float],
    step_timings: Iterable[Sequence[Mapping[str, float]]],
) -> SecondsPerClick:
    """SPC from each object's encoder time and its per-step timing dicts.

    A step's dict has the predictor's keys (``decoder``, ``refiner``, ``postprocess``) plus ``predict`` (the wall
    time of the whole call). A backend that reports neither ``decoder`` nor ``refiner`` (e.g. the fallback) has its
    whole predict time counted as decoder time.
    """
    encoder = float(sum(encoder_seconds))
    totals = {"decoder": 0.0, "refiner": 0.0, "postprocess": 0.0, "predict": 0.0}
    clicks = 0
    for steps in step_timings:
        for timing in steps:
            clicks += 1
            wall = float(timing.get("predict", 0.0))
            if "decoder" in timing or "refiner" in timing:
                totals["decoder"] += float(timing.get("decoder", 0.0))
                totals["refiner"] += float(timing.get("refiner", 0.0))
            else:
                totals["decoder"] += wall - float(timing.get("postprocess", 0.0))
            totals["postprocess"] += float(timing.get("postprocess", 0.0))
            totals["predict"] += wall
    if clicks == 0:
        return SecondsPerClick(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    per = {k: v / clicks for k, v in totals.items()}
    enc = encoder / clicks
    return SecondsPerClick(
        spc=enc + per["decoder"] + per["refiner"],
        encoder=enc,
        decoder=per["decoder"],
        refiner=per["refiner"],
        postprocess=per["postprocess"],
        interaction=per["predict"],
    )
