"""Segmentation by propagation from a prompts file: the prompted slices are keyframes, propagated through z.

For every object (and time point of a (T, Z, Y, X) stack): its slices with a positive click or a box are segmented
from their prompts (keyframes); its slices with negative clicks only mark it absent; then it is propagated through z
from the keyframes (:func:`~napari_focsam.stack.propagate.propagate_object`). The objects are independent, so on
Dask each object is one task.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..engine.session import ObjectSession
from ..engine.stability import Jitter
from ..engine.types import CancelToken, Prompts
from .batch import check_boxes, open_prompted_stack
from .common import JobSetup, ModelLike, Progress, ProgressCallback, job_setup, normalise_limits, prepare, store_in_use
from .distributed import DaskRunner, Runner
from .labels_io import LabelWriter, label_dtype
from .prompt_set import PromptSet
from .prompts_file import PromptRecord
from .propagate import DEFAULT_IOU_THRESHOLD, DEFAULT_MIN_CONTRAST, Crop, propagate_object
from .reader import StackReader, open_stack
from .results import object_rows, results_target, write_results
from .store import StackStore
from .worker import ModelConfig, manager_for, thread_count_invariant, use_store

__all__ = ["segment_with_propagation"]

Job = tuple[tuple[int, ...], int, dict[int, Prompts], list[int]]  # prefix, object id, keyframe prompts, absent z


def _jobs(prompt_set: PromptSet, leading_shape: tuple[int, ...]) -> list[Job]:
    grouped: dict[tuple[tuple[int, ...], int], tuple[dict[int, Prompts], list[int]]] = {}
    for index in prompt_set.slices:
        lead = np.unravel_index(index, leading_shape) if leading_shape else (0,)
        prefix, z = tuple(int(i) for i in lead[:-1]), int(lead[-1])
        for object_id, prompts in prompt_set.objects(index):
            frames, absent = grouped.setdefault((prefix, object_id), ({}, []))
            if prompts.has_object:
                frames[z] = prompts
            else:
                absent.append(z)
    return [(prefix, oid, frames, absent) for (prefix, oid), (frames, absent) in sorted(grouped.items())]


def run_job(manager: Any, stack: Any, job: Job, limits: tuple[float, float] | None, options: dict[str, Any],
            cancel: CancelToken | None = None
            ) -> tuple[tuple[int, ...], int, dict[int, Crop], list[str], dict[int, float]]:
    """Segment one object's keyframes from their prompts and propagate it; returns its crops by z (and, with a
    ``stability`` jitter in ``options``, the stability of its keyframe masks by z)."""
    prefix, object_id, frames, absent = job
    reader = open_stack(stack, rgb=options.get("rgb"), key=options.get("key"))
    jitter = options.get("stability")
    try:
        masks, stability = {}, {}
        for z, prompts in frames.items():
            image = prepare(reader, reader.flat((*prefix, z)), limits)
            session = ObjectSession(manager.predictor, manager.embed(image, cancel=cancel))
            masks[z] = session.sync(prompts, cancel=cancel)
            if jitter is not None:
                try:
                    stability[z] = session.stability(jitter, cancel=cancel).score
                except ValueError:  # nothing to jitter in the last step (a region or scribbles alone)
                    stability[z] = float("nan")
        result = propagate_object(reader, masks, manager, absent=absent, prefix=prefix,
                                  contrast_limits=limits, cancel=cancel, **{k: v for k, v in options.items()
                                                                            if k not in ("rgb", "key", "stability")})
        return prefix, object_id, result.masks, result.stops, stability
    finally:
        if reader is not stack:
            reader.close()


@thread_count_invariant()
def task_propagate(config: ModelConfig, store: tuple[str, str] | None, stack: Any, job: Job,
                   limits: tuple[float, float] | None, options: dict[str, Any]) -> Any:
    """The Dask task: one object on one worker (model and store loaded once per worker)."""
    manager = manager_for(config)
    use_store(manager, *(store or (None, None)))
    return run_job(manager, stack, job, limits, options)


@thread_count_invariant()
def segment_with_propagation(
    stack: Any,
    prompts: str | os.PathLike[str] | PromptSet | Iterable[PromptRecord],
    model: ModelLike = "fallback",
    *,
    output: str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | None = None,
    strategy: str = "auto",
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    min_contrast: float = DEFAULT_MIN_CONTRAST,
    max_distance: int | None = None,
    rgb: bool | None = None,
    contrast_limits: Sequence[float] | None = None,
    key: str | None = None,
    overwrite: bool = False,
    client: Any = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    results: str | os.PathLike[str] | None = None,
    stability: Jitter | None = None,
) -> Any:
    """Segment the prompted slices of every object and propagate each through z; returns the label stack.

    Output, store, model, Dask, progress (one step per object) and cancel as in
    :func:`~napari_focsam.stack.batch.segment_from_prompts`; strategy, IoU threshold, min contrast, max distance as in
    :func:`~napari_focsam.stack.propagate.propagate_object`. Where objects overlap, the smaller id keeps the pixel.
    ``results`` and ``stability`` as in :func:`~napari_focsam.stack.batch.segment_from_prompts` (the stability is
    computed on the prompted slices; propagated rows leave it empty).
    """
    results = results_target(results, stability, overwrite,
                             {"prompts file": prompts, "stack": stack, "labels": output})
    limits = normalise_limits(contrast_limits)
    with open_prompted_stack(stack, prompts, rgb=rgb, key=key) as (reader, prompt_set):
        jobs = _jobs(prompt_set, reader.leading_shape)
        options = {"strategy": strategy, "iou_threshold": iou_threshold, "min_contrast": min_contrast,
                   "max_distance": max_distance, "rgb": reader.rgb, "key": key, "stability": stability}
        with job_setup(model, client, workers, scheduler) as setup:
            check_boxes(prompt_set, setup)
            with store_in_use(setup, store) as opened:
                scores: dict[int, dict[int, float]] = {}
                crops = _propagate_jobs(setup, opened, stack, reader, jobs, limits, options,
                                        Progress(len(jobs), progress, cancel), cancel, scores)
        writer = LabelWriter(output, reader.leading_shape, reader.image_shape,
                             label_dtype(max(prompt_set.object_ids, default=1)), overwrite=overwrite)
        rows: list[dict[str, Any]] = []
        try:
            for index in sorted(crops):
                labels = np.zeros(reader.image_shape, writer.dtype)
                for object_id, crop in sorted(crops[index], key=lambda item: item[0]):
                    region = labels[crop.y0:crop.y0 + crop.data.shape[0], crop.x0:crop.x0 + crop.data.shape[1]]
                    region[crop.data & (region == 0)] = object_id
                writer.write(index, labels)
                if results is not None:
                    rows.extend(object_rows(labels, index, reader.leading_shape, dict(prompt_set.objects(index)),
                                            scores.get(index), source="propagated"))
            out = writer.finish()
            if results is not None:
                write_results(results, rows, four_d=len(reader.leading_shape) > 1)
            return out
        except BaseException:
            writer.abort()
            raise


def _propagate_jobs(setup: JobSetup, opened: StackStore | None, stack: Any, reader: StackReader, jobs: list[Job],
                    limits: tuple[float, float] | None, options: dict[str, Any], tracker: Progress,
                    cancel: CancelToken | None,
                    scores: dict[int, dict[int, float]]) -> dict[int, list[tuple[int, Crop]]]:
    """Run every object's job on the set-up runner; the crops of every slice, with their object ids."""
    runner = setup.runner
    crops: dict[int, list[tuple[int, Crop]]] = {}
    try:
        remote_stack = reader if setup.serial else _for_workers(runner, stack, reader)
        for job in jobs:
            tracker.check()
            if setup.serial:
                runner.submit(run_job, setup.manager, reader, job, limits, options, cancel)
            else:
                runner.submit(task_propagate, setup.config, None if opened is None else
                              (str(opened.path), opened.store_id), remote_stack, job, limits, options)
            for done in runner.results(wait=runner.full):
                _collect(done, reader, crops, tracker, scores)
        for done in runner.drain():
            _collect(done, reader, crops, tracker, scores)
    except BaseException:
        runner.cancel()
        raise
    return crops


def _collect(done: Any, reader: Any, crops: dict[int, list[tuple[int, Crop]]], tracker: Progress,
             scores: dict[int, dict[int, float]]) -> None:
    prefix, object_id, masks, _stops, stability = done
    for z, crop in masks.items():
        crops.setdefault(reader.flat((*prefix, z)), []).append((object_id, crop))
    for z, score in stability.items():
        scores.setdefault(reader.flat((*prefix, z)), {})[object_id] = score
    tracker.report()


def _for_workers(runner: Runner, stack: Any, reader: Any) -> Any:
    """What the workers read the stack from: its path, or the array itself (a numpy array is sent once)."""
    if isinstance(stack, (str, os.PathLike)):
        return os.fspath(stack)
    if isinstance(stack, np.ndarray):
        assert isinstance(runner, DaskRunner)
        return runner.client.scatter(stack, broadcast=True)
    return reader.source if reader.reads_pages else reader.array
