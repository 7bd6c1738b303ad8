"""Stable-SAM's noisy-prompt protocol (Tables 1-2 of the paper): mIoU, mBIoU and mST per prompt type.

For every object and prompt type, ``draws`` prompts of that type are simulated from the ground truth, each is
given to the model as the object's only step, and the masks are scored:

* ``gt_box``: the bounding box of the object's pixels (the same prompt every draw, so its ST is 1 unless robust
  mode jitters it);
* ``noisy_box``: that box perturbed by :func:`~napari_focsam.engine.stability.jitter_prompts` at level
  ``box_noise`` (default 0.4, Stable-SAM's training noise: centre within 0.4 of the box's height / width, height
  and width within a factor 1 ± 0.4), clipped to the image;
* ``1_point``, ``3_points``, ``5_points``: that many positive clicks drawn uniformly, without replacement, from
  the object's pixels (value 1; GrabCut's unknown band is never drawn).

Scores: **mIoU** the mean IoU (the paper's foreground IoU), **mBIoU** the mean boundary IoU (Cheng et al. 2021:
the IoU of the inner bands of width ``d = max(1, round(band * image diagonal))`` pixels of the two masks; ``band``
is 0.02, that paper's default; the image border counts as boundary), **mST** the mean over objects of Stable-SAM's
ST over the ``draws`` masks of that object and type (Eq. 1; the paper uses 20 draws). With robust mode, each step
is :func:`~napari_focsam.engine.stability.robust_predict` with the given jitter. Everything is seeded by
``(seed, object key, type, draw)``. Models that take clicks only (FocSAM) are evaluated on the click types.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..engine.predictor import Predictor
from ..engine.stability import Jitter, jitter_prompts, robust_predict, st_score
from ..engine.types import ImageEmbedding, Prompts
from .datasets import SegmentationDataset
from .metrics import iou
from .runner import embed_image, safe_name

PROMPT_TYPES = ("gt_box", "noisy_box", "1_point", "3_points", "5_points")
BOX_TYPES = ("gt_box", "noisy_box")
NOISY_JSONL = "noisy.jsonl"
NOISY_JSON = "noisy_summary.json"
NOISY_MD = "noisy_summary.md"
MODES = ("plain", "robust")


@dataclass(frozen=True)
class NoisyProtocol:
    """The settings of one noisy-prompt run (stored with its results)."""

    types: tuple[str, ...] = PROMPT_TYPES
    draws: int = 5
    box_noise: float = 0.4
    band: float = 0.02
    robust: Jitter | None = field(default_factory=Jitter)
    seed: int = 42

    def __post_init__(self) -> None:
        unknown = [t for t in self.types if t not in PROMPT_TYPES]
        if unknown:
            raise ValueError(f"unknown prompt types {unknown}; choose from {PROMPT_TYPES}")
        if self.draws < 2:
            raise ValueError(f"ST needs at least 2 draws per object and type, got {self.draws}")
        if not 0.0 < self.box_noise <= 1.0:
            raise ValueError(f"the box noise must be in (0, 1], got {self.box_noise}")
        if not 0.0 < self.band < 0.5:
            raise ValueError(f"the boundary band must be in (0, 0.5) of the image diagonal, got {self.band}")
        object.__setattr__(self, "types", tuple(self.types))

    def rng(self, key: str, kind: str, draw: int) -> np.random.Generator:
        digest = hashlib.sha256(f"{self.seed}|{key}|{kind}|{draw}".encode()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["types"] = list(self.types)
        return out


def gt_box(gt: np.ndarray) -> np.ndarray:
    """(y0, x0, y1, x1), inclusive, of the object's pixels (value 1)."""
    ys, xs = np.nonzero(gt == 1)
    return np.array([ys.min(), xs.min(), ys.max(), xs.max()], dtype=np.float64)


def simulate_prompt(gt: np.ndarray, kind: str, rng: np.random.Generator, box_noise: float = 0.4) -> Prompts:
    """One prompt of type ``kind`` for the object ``gt == 1`` (see the module docstring)."""
    if not (gt == 1).any():
        raise ValueError("the object has no pixel")
    if kind in BOX_TYPES:
        box = gt_box(gt)
        if kind == "gt_box":
            return Prompts(box=box)
        if box[2] <= box[0] or box[3] <= box[1]:  # a one-pixel-thin object: its box cannot be jittered
            return Prompts(box=box)
        seed = int(rng.integers(2**31))
        jitter = Jitter(copies=2, noise=box_noise, seed=seed)
        return jitter_prompts(Prompts(box=box), gt.shape, float((gt == 1).sum()), jitter)[0]
    n = int(kind.split("_")[0])
    ys, xs = np.nonzero(gt == 1)
    pick = rng.choice(len(ys), size=min(n, len(ys)), replace=False)
    return Prompts(np.stack([ys[pick], xs[pick]], axis=1), np.ones(len(pick), np.int64))


def boundary_iou(pred: np.ndarray, gt: np.ndarray, band: float = 0.02) -> float:
    """Boundary IoU (Cheng et al. 2021) of two masks: IoU of their inner bands of ``band`` × the image diagonal."""
    pred, gt = np.asarray(pred) == 1, np.asarray(gt) == 1
    d = max(1, int(round(band * float(np.hypot(*gt.shape)))))

    def inner(mask: np.ndarray) -> np.ndarray:
        distance = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        return mask & (distance <= d)

    a, b = inner(pred), inner(gt)
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b)) / union


def evaluate_object_noisy(
    predictor: Predictor, embedding: ImageEmbedding, gt: np.ndarray, key: str, protocol: NoisyProtocol,
) -> list[dict[str, Any]]:
    """The rows of one object: per type and mode, its mean IoU and BIoU over the draws and their ST."""
    rows = []
    types = [t for t in protocol.types if predictor.supports_boxes or t not in BOX_TYPES]
    modes = MODES if protocol.robust is not None else MODES[:1]
    for kind in types:
        prompts = [simulate_prompt(gt, kind, protocol.rng(key, kind, i), protocol.box_noise)
                   for i in range(protocol.draws)]
        for mode in modes:
            masks = []
            for p in prompts:
                if mode == "plain":
                    masks.append(predictor.predict(embedding, p, None).mask)
                else:
                    assert protocol.robust is not None  # the robust mode runs with a jitter only
                    masks.append(robust_predict(predictor, embedding, p, None, protocol.robust).mask)
            rows.append({
                "key": key, "type": kind, "mode": mode,
                "iou": float(np.mean([iou(m, gt) for m in masks])),
                "biou": float(np.mean([boundary_iou(m, gt, protocol.band) for m in masks])),
                "st": st_score(np.stack(masks)),
            })
    return rows


def summarize_noisy(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{type: {mode: {"miou", "mbiou", "mst", "n"}}}`` in percent (n: objects)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for kind in PROMPT_TYPES:
        for mode in MODES:
            sel = [r for r in rows if r["type"] == kind and r["mode"] == mode]
            if sel:
                out.setdefault(kind, {})[mode] = {
                    "miou": 100 * float(np.mean([r["iou"] for r in sel])),
                    "mbiou": 100 * float(np.mean([r["biou"] for r in sel])),
                    "mst": 100 * float(np.mean([r["st"] for r in sel])),
                    "n": len(sel),
                }
    return out


def noisy_table(summary: dict[str, dict[str, dict[str, float]]], title: str = "") -> str:
    """The summary as a Markdown table (one row per prompt type, plain and robust side by side)."""
    lines = [f"### {title}" if title else "", "",
             "| prompt | objects | mIoU | mBIoU | mST | mIoU robust | mBIoU robust | mST robust |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, modes in summary.items():
        plain, robust = modes["plain"], modes.get("robust")
        cells = [kind.replace("_", " "), str(int(plain["n"]))]
        cells += [f"{plain[k]:.1f}" for k in ("miou", "mbiou", "mst")]
        cells += [f"{robust[k]:.1f}" if robust else "-" for k in ("miou", "mbiou", "mst")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines).lstrip() + "\n"


def evaluate_noisy(
    predictor: Predictor,
    dataset: SegmentationDataset,
    out_dir: str | os.PathLike,
    protocol: NoisyProtocol | None = None,
    *,
    name: str | None = None,
    limit: int | None = None,
    ids: Sequence[str] | None = None,
    max_instances: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the protocol on the selected objects into ``<out_dir>/<name>/noisy*`` and return the summary."""
    protocol = protocol or NoisyProtocol()
    label = name or predictor.name
    folder = Path(out_dir) / safe_name(label)
    folder.mkdir(parents=True, exist_ok=True)
    objects = dataset.list_objects(dataset.select(limit, ids), keys=ids, max_instances=max_instances,
                                   skip_invalid=True)
    if not objects:
        raise ValueError(f"no object to evaluate in {dataset.root} (check the masks and the selection)")
    rows: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(objects), desc=f"{label} (noisy prompts)", unit="obj", dynamic_ncols=True)
    cached: tuple[str, np.ndarray, ImageEmbedding] | None = None
    try:
        for obj in objects:
            try:
                if cached is None or cached[0] != obj.image_id:
                    cached = None
                    image, mask = dataset.load_image(obj.image_id), dataset.load_mask(obj.image_id)
                    if mask.shape != image.shape[:2]:
                        raise ValueError(f"mask {mask.shape} and image {image.shape[:2]} differ in size")
                    cached = (obj.image_id, mask, embed_image(predictor, image, obj.image_id)[0])
                _, mask, embedding = cached
                rows += evaluate_object_noisy(predictor, embedding, dataset.target(obj, mask), obj.key, protocol)
            except (ValueError, OSError) as error:
                failed.append((obj.key, str(error)))
                warnings.warn(f"object {obj.key!r} skipped: {error}", stacklevel=2)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    with open(folder / NOISY_JSONL, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    summary: dict[str, Any] = {"backend": label, "dataset": dataset.name, "protocol": protocol.to_dict(),
               "results": summarize_noisy(rows), "failed": [list(x) for x in failed]}
    (folder / NOISY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    title = f"{getattr(predictor, 'display_name', label)} on {dataset.name}"
    (folder / NOISY_MD).write_text(noisy_table(summary["results"], title))
    return summary


def plot_noisy(summary: dict[str, Any], path: Path) -> Path:
    """Grouped bars: mIoU and mST per prompt type, plain and robust."""
    from .plots import pyplot

    plt = pyplot()
    results = summary["results"]
    kinds = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric, label in zip(axes, ("miou", "mst"), ("mIoU (%)", "mST (%)")):
        for j, mode in enumerate(MODES):
            values = [results[k].get(mode, {}).get(metric, np.nan) for k in kinds]
            ax.bar(np.arange(len(kinds)) + (j - 0.5) * 0.38, values, width=0.38, label=mode)
        ax.set_xticks(np.arange(len(kinds)), [k.replace("_", " ") for k in kinds])
        ax.set_ylabel(label)
        ax.set_ylim(0, 100)
    axes[0].legend()
    fig.suptitle(f"{summary['backend']} on {summary['dataset']}: noisy prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
