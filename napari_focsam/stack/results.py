"""The per-object results of ``napari-focsam segment``: one row per object and slice, written next to the labels.

Each row describes what the label stack holds for one object on one slice: its ``area`` in pixels (after overlaps
are resolved, so the areas of a slice add up to its labelled pixels), its bounding box ``y0, x0, y1, x1``
(inclusive) and centroid, where it came from (``source``: ``prompted`` from the prompts file, ``propagated``
through z), how many prompts the file gave it there (``prompts``: clicks, box, region, scribbles), and, when asked
for, the stability ``st`` of its mask (Stable-SAM's ST over jittered copies of its prompts, see
:mod:`napari_focsam.engine.stability`; empty where it was not computed: propagated slices). For a (T, Z, Y, X)
stack the rows also name ``t`` and ``z``; ``slice`` is always the flat slice number the prompts file uses.

The file is CSV (``.csv``) or JSON (``.json``: ``{"columns": [...], "rows": [{...}, ...]}``) and is written
atomically (a partial file never replaces a good one).
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.types import Prompts

__all__ = ["COLUMNS", "check_results_path", "object_rows", "prompt_count", "results_target", "write_results"]

COLUMNS = ("object_id", "slice", "t", "z", "source", "prompts", "area", "y0", "x0", "y1", "x1", "centroid_y",
           "centroid_x", "st")
SUFFIXES = (".csv", ".json")


def check_results_path(path: str | os.PathLike[str], overwrite: bool, inputs: Mapping[str, Any]) -> Path:
    """``path`` checked before any work starts: a .csv/.json file, none of ``inputs`` (name → path or other
    object: the prompts file, the stack, the labels), not existing unless ``overwrite``; its folder must exist."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"--results {path}: the results file must end in .csv or .json")
    for name, other in inputs.items():
        if isinstance(other, (str, os.PathLike)) and (
                path.absolute().resolve() == Path(other).expanduser().absolute().resolve()):
            raise ValueError(f"--results {path} is the {name}; choose another path (nothing was written)")
    if path.is_dir():
        raise ValueError(f"--results {path} is a folder; give a file name ending in .csv or .json")
    if path.exists() and not overwrite:
        raise FileExistsError(f"--results {path} exists; pass --overwrite to replace it")
    if not path.parent.exists():
        raise ValueError(f"--results {path}: the folder {path.parent} does not exist")
    return path


def results_target(path: str | os.PathLike[str] | None, stability: Any, overwrite: bool,
                   inputs: Mapping[str, Any]) -> Path | None:
    """A stack job's ``results`` path checked before any work starts (:func:`check_results_path`; None when no results
    were asked for); a ``stability`` without results is refused, since it goes into the results' rows."""
    if stability is not None and path is None:
        raise ValueError("the stability goes into the per-object results: give a results path too (--results)")
    return None if path is None else check_results_path(path, overwrite, inputs)


def prompt_count(prompts: Prompts | None) -> int:
    """The prompts an object was given on a slice: clicks, a box, a region and scribbles count one each."""
    if prompts is None:
        return 0
    return len(prompts.points) + (prompts.box is not None) + (prompts.mask is not None) + len(prompts.scribbles)


def object_rows(
    labels: np.ndarray,
    index: int,
    leading_shape: tuple[int, ...],
    prompts: Mapping[int, Prompts] | None = None,
    stability: Mapping[int, float] | None = None,
    source: str = "prompted",
) -> list[dict[str, Any]]:
    """The rows of one written label slice (Y, X): one per object id present, plus prompted objects that got no
    pixels (area 0, no box), in id order."""
    prompts, stability = prompts or {}, stability or {}
    lead = np.unravel_index(index, leading_shape) if len(leading_shape) > 1 else ()
    ids = set(int(i) for i in np.unique(labels) if i != 0) | set(prompts)
    rows = []
    for object_id in sorted(ids):
        ys, xs = np.nonzero(labels == object_id)
        given = prompts.get(object_id)
        row: dict[str, Any] = {
            "object_id": object_id, "slice": int(index),
            "t": int(lead[0]) if lead else None, "z": int(lead[1]) if lead else None,
            "source": "prompted" if given is not None else source, "prompts": prompt_count(given),
            "area": int(len(ys)),
        }
        if len(ys):
            row.update(y0=int(ys.min()), x0=int(xs.min()), y1=int(ys.max()), x1=int(xs.max()),
                       centroid_y=round(float(ys.mean()), 3), centroid_x=round(float(xs.mean()), 3))
        st = stability.get(object_id)
        row["st"] = None if st is None or not math.isfinite(st) else round(float(st), 6)
        rows.append({name: row.get(name) for name in COLUMNS})
    return rows


def write_results(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]], four_d: bool = False) -> Path:
    """Write ``rows`` (sorted by slice, then object) as CSV or JSON by ``path``'s suffix, atomically; ``t`` and ``z``
    only for (T, Z, Y, X) stacks."""
    path = Path(path).expanduser()
    columns = [c for c in COLUMNS if four_d or c not in ("t", "z")]
    ordered = sorted(rows, key=lambda r: (r["slice"], r["object_id"]))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            if path.suffix.lower() == ".json":
                json.dump({"columns": columns, "rows": [{c: r.get(c) for c in columns} for r in ordered]}, f,
                          indent=1)
            else:
                writer = csv.writer(f)
                writer.writerow(columns)
                for r in ordered:
                    writer.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
