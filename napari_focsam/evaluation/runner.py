"""The evaluation runner: the official click loop over every object of a dataset, with any predictor.

For each image the predictor embeds once (timed: the encoder); for each of its objects the loop runs exactly
``protocol.n_clicks`` steps, as the official ``interact_test`` (with ``protocol.first_prompt`` other than
``"click"``, step 1 uses a prompt simulated from the ground truth instead, :mod:`.first_prompts`, and the
simulator's clicks follow from step 2 on):

1. the simulator adds the next click from the previous prediction (an all-empty mask before the first step), or
   none when the prediction has no error left;
2. the predictor runs with all clicks so far and the previous step's state — also when no click was added — and its
   mask (original resolution, thresholded by the backend itself) gives the step's IoU and the next click.

Results go to ``<out>/<backend>/objects.jsonl`` one object at a time, so a run can be interrupted and resumed: the
objects already there are skipped (the protocol, dataset and model must be the same; the runner refuses otherwise).
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..engine.predictor import Predictor
from ..engine.types import ImageEmbedding, ObjectState, Prompts, unpack_embedding
from .clicker import ClickSimulator
from .datasets import EvalObject, SegmentationDataset
from .first_prompts import simulate_first_prompt
from .metrics import iou, noc_per_object
from .oracle import TargetAware
from .protocol import IGNORE_VALUE, Protocol
from .results import OBJECTS_CSV, OBJECTS_JSONL, ObjectResult, ResultWriter, read_results, write_csv
from .summary import CONFIG_JSON, SUMMARY_JSON, summarize, write_comparison

#: config entries that must match for a resumed run to append to existing results
_RESUME_KEYS = ("dataset", "fingerprint", "protocol")


def safe_name(name: str) -> str:
    """A folder name for a backend label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "backend"


def evaluate_object(
    predictor: Predictor,
    embedding: ImageEmbedding,
    gt: np.ndarray,
    protocol: Protocol,
    obj: EvalObject,
    encoder_s: float = 0.0,
) -> ObjectResult:
    """Run the click loop on one object (``gt`` uint8: 1 object, 0 background, 255 ignore)."""
    gt = np.asarray(gt)
    if not (gt == 1).any():
        raise ValueError(f"object {obj.key!r} has no object pixel")
    click_ignore, iou_ignore = protocol.ignore_masks(gt)
    simulator = ClickSimulator(gt, click_ignore, protocol.rng(obj.key))
    if isinstance(predictor, TargetAware):
        predictor.set_target(gt)
    pred = np.zeros(gt.shape, dtype=bool)
    prompts = Prompts()
    state: ObjectState | None = None
    ious: list[float] = []
    clicks: list[list[int] | None] = []
    timings: list[dict[str, float]] = []
    first = (None if protocol.first_prompt == "click"
             else simulate_first_prompt(protocol.first_prompt, gt, protocol.first_prompt_rng(obj.key)))
    for step in range(protocol.n_clicks):
        start = time.perf_counter()
        click = simulator.step(pred) if step or first is None else None
        click_s = time.perf_counter() - start
        if step == 0 and first is not None:
            prompts = first
        if click is not None:
            prompts = prompts.with_point(click.y, click.x, click.positive)
        clicks.append(None if click is None else [click.y, click.x, click.label])
        start = time.perf_counter()
        prediction = predictor.predict(embedding, prompts, state)
        predict_s = time.perf_counter() - start
        state = prediction.state
        pred = np.asarray(prediction.mask, dtype=bool)
        if pred.shape != gt.shape:
            raise ValueError(f"{predictor.name} returned a {pred.shape} mask for a {gt.shape} object {obj.key!r}")
        ious.append(iou(pred, gt, iou_ignore))
        timings.append({**{k: float(v) for k, v in prediction.timings.items()}, "predict": predict_s,
                        "click": click_s})
    return ObjectResult(
        key=obj.key, image_id=obj.image_id, label=obj.label, height=int(gt.shape[0]), width=int(gt.shape[1]),
        area=int(np.count_nonzero(gt == 1)), ignored=int(np.count_nonzero(gt == IGNORE_VALUE)), ious=ious,
        clicks=clicks, encoder_s=float(encoder_s), timings=timings,
    )


def embed_image(predictor: Predictor, image: np.ndarray, key: str) -> tuple[ImageEmbedding, float]:
    """The predictor's embedding of an (H, W, 3) uint8 image and the seconds it took (the encoder time)."""
    start = time.perf_counter()
    features, geometry, extras = unpack_embedding(predictor.embed(image))
    if isinstance(features, torch.Tensor) and features.device.type == "cuda":
        torch.cuda.synchronize(features.device)  # CUDA runs asynchronously: time the work, not its launch
    seconds = time.perf_counter() - start
    return ImageEmbedding(features=features, geometry=geometry, key=f"evaluation:{key}", extras=extras), seconds


@dataclass
class EvaluationRun:
    """What :func:`evaluate` did: where the results are, the summary, how many objects it computed or reused."""

    folder: Path
    summary: dict[str, Any]
    computed: int
    reused: int
    failed: list[tuple[str, str]]


def _check_config(folder: Path, config: dict[str, Any], overwrite: bool) -> None:
    path = folder / CONFIG_JSON
    if overwrite and folder.exists():
        for name in (OBJECTS_JSONL, OBJECTS_CSV, SUMMARY_JSON, CONFIG_JSON):
            (folder / name).unlink(missing_ok=True)
    elif path.is_file() and (folder / OBJECTS_JSONL).is_file():
        old = json.loads(path.read_text())
        diffs = [k for k in _RESUME_KEYS if old.get(k) != config.get(k)]
        if diffs:
            raise ValueError(
                f"{folder} holds results of another run (different {', '.join(diffs)}); choose another output "
                "folder or name, or overwrite them"
            )
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n")


def evaluate(
    predictor: Predictor,
    dataset: SegmentationDataset,
    out_dir: str | os.PathLike,
    protocol: Protocol | None = None,
    *,
    name: str | None = None,
    limit: int | None = None,
    ids: Sequence[str] | None = None,
    max_instances: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    metadata: dict[str, Any] | None = None,
) -> EvaluationRun:
    """Evaluate ``predictor`` on the selected objects of ``dataset`` into ``<out_dir>/<name>/``.

    ``limit``/``ids`` select images (an id ``<image>#<label>`` selects one instance); ``max_instances`` caps the
    objects per instance mask. Objects already in the folder's ``objects.jsonl`` are reused (resume). Returns the
    summary over the selected objects; ``<out_dir>/summary.md`` compares every backend of the folder.
    """
    protocol = protocol or Protocol()
    label = name or predictor.name
    folder = Path(out_dir) / safe_name(label)
    config = {
        "backend": label,
        "display_name": getattr(predictor, "display_name", label),
        "is_fallback": bool(getattr(predictor, "is_fallback", False)),
        "fingerprint": getattr(predictor, "fingerprint", label),
        "device": str(getattr(predictor, "device", "")),
        "dataset": str(dataset.root.resolve()),
        "dataset_name": dataset.name,
        "protocol": protocol.to_dict(),
        "napari_focsam": __version__,
        **(metadata or {}),
    }
    _check_config(folder, config, overwrite)
    objects = dataset.list_objects(dataset.select(limit, ids), keys=ids, max_instances=max_instances,
                                   skip_invalid=True)
    done = {k: r for k, r in read_results(folder / OBJECTS_JSONL).items() if r.n_steps == protocol.n_clicks}
    todo = [o for o in objects if o.key not in done]
    failed: list[tuple[str, str]] = []
    computed: dict[str, ObjectResult] = {}
    nocs: list[int] = []
    bar = _progress(len(objects), len(objects) - len(todo), label, progress)
    try:
        with ResultWriter(folder / OBJECTS_JSONL) as writer:
            cached: tuple[str, np.ndarray, ImageEmbedding, float] | None = None
            for obj in todo:
                try:
                    if cached is None or cached[0] != obj.image_id:
                        cached = None  # free the previous embedding before computing the next
                        image = dataset.load_image(obj.image_id)
                        mask = dataset.load_mask(obj.image_id)
                        if mask.shape != image.shape[:2]:
                            raise ValueError(f"mask {mask.shape} and image {image.shape[:2]} differ in size")
                        embedding, encoder_s = embed_image(predictor, image, obj.image_id)
                        cached = (obj.image_id, mask, embedding, encoder_s)
                    _, mask, embedding, encoder_s = cached
                    result = evaluate_object(predictor, embedding, dataset.target(obj, mask), protocol, obj,
                                             encoder_s)
                except (ValueError, OSError) as error:
                    failed.append((obj.key, str(error)))
                    warnings.warn(f"object {obj.key!r} skipped: {error}", stacklevel=2)
                    if bar is not None:
                        bar.update(1)
                    continue
                writer.write(result)
                computed[obj.key] = result
                _advance(bar, result, nocs)
    finally:
        if bar is not None:
            bar.close()
    everything = {**done, **computed}
    selected = [everything[o.key] for o in objects if o.key in everything]
    summary = summarize(selected, protocol)
    summary.update(backend=label, display_name=config["display_name"], dataset=dataset.name,
                   failed=[list(f) for f in failed])
    (folder / SUMMARY_JSON).write_text(json.dumps(summary, indent=2) + "\n")
    write_csv(folder / OBJECTS_CSV, selected, protocol.noc_thresholds)
    write_comparison(out_dir, dataset.name)
    return EvaluationRun(folder, summary, len(computed), len(objects) - len(todo), failed)


def _progress(total: int, initial: int, label: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=label, unit="obj", dynamic_ncols=True)


def _advance(bar: Any, result: ObjectResult, nocs: list[int]) -> None:
    if bar is None:
        return
    nocs.append(int(noc_per_object([result.ious], 0.9)[0]))
    bar.set_postfix_str(f"NoC@90 {np.mean(nocs):.2f} (this run)", refresh=False)
    bar.update(1)
