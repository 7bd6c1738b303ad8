"""Plots of an output folder (matplotlib, Agg backend, PNG), comparing every backend evaluated into it.

* ``miou_vs_clicks.png``: mean IoU after each click, one curve per backend;
* ``noc.png``: NoC@85/90/95 bars, grouped by threshold;
* ``delta_iou.png``: histogram of the consecutive-click IoU drops of at least 1 % (the paper's Figure 4).

All backends are compared on the objects they have in common (:func:`.summary.compare_folder`). matplotlib is an
optional dependency (``pip install napari-focsam[plot]``); :func:`plot_folder` raises ImportError without it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import delta_iou
from .protocol import Protocol
from .results import iou_matrix
from .summary import backend_dirs, compare_folder, load_backend

MIOU_PNG = "miou_vs_clicks.png"
NOC_PNG = "noc.png"
DELTA_PNG = "delta_iou.png"


def pyplot() -> Any:
    """matplotlib's pyplot on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _common_ious(out_dir: Path, keys: Sequence[str]) -> dict[str, tuple[np.ndarray, Protocol]]:
    """Per backend folder name: the (objects, clicks) IoUs on the common keys and the protocol."""
    found = {}
    for folder in backend_dirs(out_dir):
        config, results = load_backend(folder)
        if not all(k in results for k in keys):
            continue
        found[folder.name] = (iou_matrix([results[k] for k in keys]), Protocol.from_dict(config.get("protocol", {})))
    return found


def plot_miou_curves(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for row in rows:
        curve = 100 * np.asarray(row["miou_curve"])
        ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", markersize=3, label=row["display_name"])
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mean IoU (%)")
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.set_title(title or "mean IoU vs clicks")
    return _save(plt, fig, ax, path)


def plot_noc_bars(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    plt = pyplot()
    thresholds = list(rows[0]["noc"])
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(thresholds))
    for i, row in enumerate(rows):
        values = [row["noc"][t] for t in thresholds]
        bars = ax.bar(x + (i - (len(rows) - 1) / 2) * width, values, width, label=row["display_name"])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, [f"NoC@{t}" for t in thresholds])
    ax.set_ylabel(f"clicks (max {rows[0]['n_clicks']})")
    ax.set_title(title or "number of clicks (lower is better)")
    return _save(plt, fig, ax, path)


def plot_delta_iou(
    ious: dict[str, tuple[np.ndarray, Protocol]], names: dict[str, str], path: Path, title: str = ""
) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    bins = np.linspace(-100, -1, 34)
    total = 0
    for folder, (matrix, protocol) in ious.items():
        drops, _ = delta_iou(matrix, protocol.delta_threshold)
        total += drops.size
        label = f"{names.get(folder, folder)} ({drops.size} drops, {matrix.shape[0]} objects)"
        ax.hist(100 * np.clip(drops, -1.0, None), bins=bins, alpha=0.55, label=label)
    if total == 0:
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "no drop of 1 % or more", transform=ax.transAxes, ha="center", color="gray")
    else:
        ax.set_ylim(bottom=0)
    ax.set_xlabel("ΔIoU between consecutive clicks (%), drops of at least 1 %")
    ax.set_ylabel("count")
    ax.set_title(title or "stability: IoU drops after a click (fewer is better)")
    return _save(plt, fig, ax, path)


def _save(plt: Any, fig: Any, ax: Any, path: Path) -> Path:
    """Add the legend, write the figure to ``path`` and close it."""
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_folder(out_dir: str | os.PathLike, title: str = "") -> list[Path]:
    """Write the three PNGs for every backend of ``out_dir`` (on their common objects); returns their paths."""
    out = Path(out_dir)
    rows, keys = compare_folder(out)
    if not rows:
        return []
    suffix = f" — {title}" if title else ""
    note = f"{len(keys)} objects{suffix}"
    paths = [
        plot_miou_curves(rows, out / MIOU_PNG, f"mean IoU vs clicks ({note})"),
        plot_noc_bars(rows, out / NOC_PNG, f"NoC, lower is better ({note})"),
    ]
    names = {row["backend"]: row["display_name"] for row in rows}
    ious = {k: v for k, v in _common_ious(out, keys).items() if k in names}
    paths.append(plot_delta_iou(ious, names, out / DELTA_PNG, f"ΔIoU drops ≤ −1 % ({note})"))
    return paths
