"""Summaries of an evaluation: one backend's metrics, and a comparison table of every backend in an output folder.

An output folder holds one sub-folder per backend (``<out>/<backend>/objects.jsonl`` …). :func:`compare_folder`
compares the backends on the objects they *all* have, so that a backend run on a subset cannot skew the table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import delta_iou_stats, mean_iou_curve, miou_at, noc, nof, spc
from .protocol import Protocol
from .results import OBJECTS_JSONL, ObjectResult, iou_matrix, read_results

SUMMARY_JSON = "summary.json"
CONFIG_JSON = "config.json"
COMPARISON_MD = "summary.md"


def summarize(results: Sequence[ObjectResult], protocol: Protocol) -> dict[str, Any]:
    """NoC, NoF, mIoU@k, the mean-IoU curve, ΔIoU statistics and SPC of a set of object results."""
    results = list(results)
    if not results:
        return {"n_objects": 0}
    ious = iou_matrix(results)
    n_clicks = ious.shape[1]
    thresholds = protocol.noc_thresholds
    return {
        "n_objects": len(results),
        "n_clicks": n_clicks,
        "noc": {_pct(t): noc(ious, t) for t in thresholds},
        "nof": {_pct(t): nof(ious, t) for t in thresholds},
        "miou": {str(k): miou_at(ious, k) for k in protocol.miou_clicks if k <= n_clicks},
        "miou_curve": mean_iou_curve(ious).tolist(),
        "delta_iou": delta_iou_stats(ious, protocol.delta_threshold).to_dict(),
        "spc": spc([r.encoder_s for r in results], [r.timings for r in results]).to_dict(),
        "clicks_placed_mean": float(np.mean([r.n_clicks_placed for r in results])),
    }


def _pct(threshold: float) -> str:
    return str(round(threshold * 100))


def backend_dirs(out_dir: str | os.PathLike) -> list[Path]:
    """The backend folders of an output folder (those with results), sorted by name."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if (p / OBJECTS_JSONL).is_file())


def load_backend(folder: Path) -> tuple[dict[str, Any], dict[str, ObjectResult]]:
    config_path = folder / CONFIG_JSON
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return config, read_results(folder / OBJECTS_JSONL)


def compare_folder(out_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str]]:
    """Summaries of every backend in ``out_dir`` restricted to the objects common to all, and those object keys."""
    loaded = [(folder, *load_backend(folder)) for folder in backend_dirs(out_dir)]
    loaded = [item for item in loaded if item[2]]
    if not loaded:
        return [], []
    common = set.intersection(*(set(results) for _, _, results in loaded))
    order = [k for k in loaded[0][2] if k in common]
    rows = []
    for folder, config, results in loaded:
        protocol = Protocol.from_dict(config.get("protocol", {}))
        subset = [results[k] for k in order]
        lengths = {r.n_steps for r in subset}
        if len(lengths) > 1:  # e.g. a folder mixing 20- and 100-click runs of one backend: skip, do not guess
            continue
        summary = summarize(subset, protocol)
        summary["backend"] = folder.name
        summary["display_name"] = config.get("display_name", folder.name)
        summary["is_fallback"] = bool(config.get("is_fallback", False))
        rows.append(summary)
    return rows, order


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of NoC, mIoU@k, ΔIoU drops and SPC, one row per backend."""
    if not rows:
        return "(no results)\n"
    noc_keys = list(rows[0]["noc"])
    miou_keys = list(rows[0]["miou"])
    header = (["backend", "objects"] + [f"NoC@{k}" for k in noc_keys] + [f"NoF@{k}" for k in noc_keys]
              + [f"mIoU@{k}" for k in miou_keys] + ["ΔIoU drops/object", "SPC s (decoder)"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        delta = row["delta_iou"]
        drops = delta["n_drops"] / max(delta["n_objects"], 1)
        timing = row["spc"]
        cells = ([row["display_name"], str(row["n_objects"])] + [f"{row['noc'][k]:.2f}" for k in noc_keys]
                 + [str(row["nof"][k]) for k in noc_keys] + [f"{100 * row['miou'][k]:.2f}" for k in miou_keys]
                 + [f"{drops:.2f}", f"{timing['spc']:.3f} ({timing['decoder']:.3f})"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_comparison(out_dir: str | os.PathLike, dataset_name: str = "") -> Path | None:
    """Write ``<out>/summary.md`` comparing every backend of the folder; returns its path (None if empty)."""
    rows, keys = compare_folder(out_dir)
    if not rows:
        return None
    title = f"# Evaluation{f' on {dataset_name}' if dataset_name else ''}: {len(keys)} objects, " \
            f"{rows[0]['n_clicks']} clicks\n\n"
    note = ("NoC@t: mean clicks to reach IoU t (capped at the number of clicks); NoF@t: objects never reaching t; "
            "mIoU@k in %; ΔIoU drops: consecutive-click IoU drops of at least 1 % per object (paper §4.3); "
            "SPC: seconds per click = (encoder + decoder + refiner) / clicks, decoder-only in parentheses.\n")
    path = Path(out_dir) / COMPARISON_MD
    path.write_text(title + markdown_table(rows) + "\n" + note)
    return path
