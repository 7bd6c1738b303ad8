"""Per-object evaluation results and their files: one JSON line per object (the resumable record) and a CSV view.

A backend's folder holds ``objects.jsonl`` (appended object by object and flushed, so an interrupted run loses at
most the object in progress), ``objects.csv`` (rewritten at the end, one row per object with its NoC and IoU per
click), ``config.json`` and ``summary.json``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import noc_per_object

OBJECTS_JSONL = "objects.jsonl"
OBJECTS_CSV = "objects.csv"


@dataclass
class ObjectResult:
    """The evaluation of one object: IoU after each step, the clicks and the timings.

    ``clicks``: one entry per step, ``[y, x, label]`` (label 1 positive, 0 negative) or ``None`` for a step that
    added no click (both error maps empty); the model still ran at that step, as in the official loop.
    ``encoder_s``: the image's embedding time (objects sharing an image each carry it: the paper's protocol embeds
    once per sample). ``timings``: per step, the predictor's own keys (``decoder``, ``refiner``, ``postprocess``)
    plus ``predict`` (wall time of the call) and ``click`` (the simulator's time).
    """

    key: str
    image_id: str
    label: int | None
    height: int
    width: int
    area: int  # object pixels (gt == 1)
    ignored: int  # gt == 255 pixels
    ious: list[float]
    clicks: list[list[int] | None]
    encoder_s: float
    timings: list[dict[str, float]] = field(default_factory=list)

    @property
    def n_steps(self) -> int:
        return len(self.ious)

    @property
    def n_clicks_placed(self) -> int:
        return sum(c is not None for c in self.clicks)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObjectResult:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**fields)


def read_results(path: str | os.PathLike) -> dict[str, ObjectResult]:
    """The results stored in an ``objects.jsonl`` (by key; a truncated last line from a crash is ignored)."""
    path = Path(path)
    results: dict[str, ObjectResult] = {}
    if not path.is_file():
        return results
    with path.open() as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                result = ObjectResult.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue  # an interrupted write: that object is simply evaluated again
            results[result.key] = result
    return results


class ResultWriter:
    """Appends results to an ``objects.jsonl``, one flushed line per object."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._handle = self.path.open("a")

    def _repair(self) -> None:
        """Drop a partial last line left by a crash, so that new lines start on a line of their own."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            self.path.write_bytes(data[: data.rfind(b"\n") + 1])

    def write(self, result: ObjectResult) -> None:
        self._handle.write(result.to_json() + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iou_matrix(results: Sequence[ObjectResult]) -> np.ndarray:
    """(objects, steps) IoU array; all results must have the same number of steps."""
    lengths = {r.n_steps for r in results}
    if len(lengths) > 1:
        raise ValueError(f"results with different numbers of clicks: {sorted(lengths)}")
    if not results:
        return np.zeros((0, 0))
    return np.array([r.ious for r in results], dtype=np.float64)


def _step_sum(result: ObjectResult, key: str) -> float:
    return float(sum(t.get(key, 0.0) for t in result.timings))


def write_csv(path: str | os.PathLike, results: Iterable[ObjectResult], thresholds: Sequence[float]) -> None:
    """One row per object: identity, size, NoC per threshold, clicks placed, times, IoU after every click."""
    results = list(results)
    n_steps = max((r.n_steps for r in results), default=0)
    noc_names = [f"noc{round(t * 100)}" for t in thresholds]
    header = ["key", "image_id", "label", "height", "width", "area", "ignored", *noc_names, "clicks_placed",
              "encoder_s", "decoder_s", "refiner_s", "predict_s"] + [f"iou_{k}" for k in range(1, n_steps + 1)]
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for r in results:
            nocs = [int(noc_per_object([r.ious], t)[0]) for t in thresholds] if r.ious else [""] * len(thresholds)
            writer.writerow([
                r.key, r.image_id, "" if r.label is None else r.label, r.height, r.width, r.area, r.ignored,
                *nocs, r.n_clicks_placed, f"{r.encoder_s:.6f}", f"{_step_sum(r, 'decoder'):.6f}",
                f"{_step_sum(r, 'refiner'):.6f}", f"{_step_sum(r, 'predict'):.6f}",
                *(f"{v:.6f}" for v in r.ious),
            ])
