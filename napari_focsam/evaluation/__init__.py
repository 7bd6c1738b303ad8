"""Evaluation with simulated clicks, as in the FocSAM paper: NoC@85/90/95, mIoU@k, ΔIoU stability and SPC.

* :mod:`.clicker`: the official click simulator with exact distances;
* :mod:`.metrics`: IoU, NoC, NoF, mIoU@k, ΔIoU, seconds per click;
* :mod:`.protocol`: the settings (clicks, ignore pixels, tie breaking);
* :mod:`.datasets`: dataset folders (images/, masks/, ids.txt; binary or instance masks);
* :mod:`.runner`: the click loop over a dataset with any predictor, resumable; :mod:`.oracle` for tests;
* :mod:`.results` / :mod:`.summary` / :mod:`.plots`: the files, the tables and the PNGs;
* :mod:`.cli`: ``napari-focsam evaluate``.

No napari or Qt import here: this package runs headless.
"""

from __future__ import annotations

from .clicker import Click, ClickSimulator, analyse_errors, next_click
from .datasets import EvalObject, SegmentationDataset
from .metrics import delta_iou, delta_iou_stats, iou, miou_at, noc, nof, spc
from .oracle import OracleBackend
from .protocol import Protocol
from .runner import EvaluationRun, evaluate, evaluate_object

__all__ = [
    "Click",
    "ClickSimulator",
    "EvalObject",
    "EvaluationRun",
    "OracleBackend",
    "Protocol",
    "SegmentationDataset",
    "analyse_errors",
    "delta_iou",
    "delta_iou_stats",
    "evaluate",
    "evaluate_object",
    "iou",
    "miou_at",
    "next_click",
    "noc",
    "nof",
    "spc",
]
