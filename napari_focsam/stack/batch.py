"""Batch segmentation from a prompts file: every object on every slice it has prompts on → one label stack."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..engine.stability import Jitter
from ..engine.types import CancelToken
from .common import JobSetup, ModelLike, Progress, ProgressCallback, job_setup, normalise_limits, prepare, store_in_use
from .labels_io import LabelWriter, label_dtype
from .prompt_set import PromptSet, build_prompt_set
from .prompts_file import PromptRecord, PromptsFileError, read_prompts
from .reader import StackReader, open_stack
from .results import object_rows, results_target, write_results
from .store import StackStore
from .worker import segment_objects, task_segment, thread_count_invariant

__all__ = ["load_prompt_set", "segment_from_prompts"]


def load_prompt_set(prompts: str | os.PathLike[str] | PromptSet | Iterable[PromptRecord],
                    reader: StackReader) -> PromptSet:
    """A prompts file (CSV/JSON), records or a ready :class:`PromptSet`, checked against the stack."""
    if isinstance(prompts, PromptSet):
        return prompts
    records = read_prompts(prompts) if isinstance(prompts, (str, os.PathLike)) else list(prompts)
    return build_prompt_set(records, reader.leading_shape, reader.image_shape)


@contextmanager
def open_prompted_stack(stack: Any, prompts: str | os.PathLike[str] | PromptSet | Iterable[PromptRecord], *,
                        rgb: bool | None, key: str | None) -> Iterator[tuple[StackReader, PromptSet]]:
    """The stack opened (:func:`~.reader.open_stack`) and its prompts loaded and checked against it
    (:func:`load_prompt_set`); a stack opened here is closed afterwards."""
    reader = open_stack(stack, rgb=rgb, key=key)
    try:
        yield reader, load_prompt_set(prompts, reader)
    finally:
        if reader is not stack:
            reader.close()


def check_boxes(prompt_set: PromptSet, setup: JobSetup) -> None:
    """Refuse prompts with boxes for a model that takes clicks only (:class:`PromptsFileError`)."""
    if prompt_set.has_boxes and not setup.info["supports_boxes"]:
        raise PromptsFileError(f"the prompts have boxes, but {setup.info['display_name']} takes clicks only "
                               "(use a SAM model for boxes, or give clicks)")


@thread_count_invariant()
def segment_from_prompts(
    stack: Any,
    prompts: str | os.PathLike[str] | PromptSet | Iterable[PromptRecord],
    model: ModelLike = "fallback",
    *,
    output: str | os.PathLike[str] | None = None,
    store: str | os.PathLike[str] | None = None,
    rgb: bool | None = None,
    contrast_limits: Sequence[float] | None = None,
    key: str | None = None,
    overwrite: bool = False,
    client: Any = None,
    workers: int | None = None,
    scheduler: str | None = None,
    window: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    results: str | os.PathLike[str] | None = None,
    stability: Jitter | None = None,
) -> Any:
    """Segment every object of a prompts file on its slices; returns the label stack.

    Each object's clicks on a slice are applied in file order (exactly as clicking them in the widget), its mask
    written with its id; where two masks overlap, the smaller id keeps the pixel; an object with only negative
    clicks on a slice gets no pixels there; slices without prompts are 0. ``output``: ``None`` returns a numpy
    array; a ``.zarr`` path returns the zarr array; a ``.tif`` path returns the path. ``store``: a precomputed stack
    store (see :func:`precompute_stack`), used for the slices it holds for this model. Dask and progress/cancel as in
    :func:`precompute_stack`; results are identical to the serial run.

    ``results``: a .csv or .json path for the per-object results (one row per object and slice: area, bounding
    box, prompts, ...; see :mod:`~napari_focsam.stack.results`), written after the labels; ``stability``: a
    :class:`~napari_focsam.engine.stability.Jitter` to compute each object's stability (ST) into those rows.
    """
    results = results_target(results, stability, overwrite,
                             {"prompts file": prompts, "stack": stack, "labels": output})
    limits = normalise_limits(contrast_limits)
    with open_prompted_stack(stack, prompts, rgb=rgb, key=key) as (reader, prompt_set):
        dtype = label_dtype(max(prompt_set.object_ids, default=1))
        with job_setup(model, client, workers, scheduler, window) as setup:
            check_boxes(prompt_set, setup)
            with store_in_use(setup, store) as opened:
                writer = LabelWriter(output, reader.leading_shape, reader.image_shape, dtype, overwrite=overwrite)
                tracker = Progress(len(prompt_set.slices), progress, cancel)
                rows: list[dict[str, Any]] = []
                out = _segment_slices(reader, prompt_set, setup, opened, limits, dtype, writer, tracker,
                                      _Rows(rows, prompt_set, reader.leading_shape, stability, results is not None))
                if results is not None:
                    write_results(results, rows, four_d=len(reader.leading_shape) > 1)
                return out


class _Rows:
    """Collects the per-object result rows of each slice as it is written (when results were asked for)."""

    def __init__(self, rows: list[dict[str, Any]], prompt_set: PromptSet, leading_shape: tuple[int, ...],
                 jitter: Jitter | None, wanted: bool) -> None:
        self.rows, self.prompt_set, self.leading_shape, self.jitter, self.wanted = (
            rows, prompt_set, leading_shape, jitter, wanted)

    def add(self, index: int, labels: Any, stability: dict[int, float]) -> None:
        if self.wanted:
            self.rows.extend(object_rows(labels, index, self.leading_shape, dict(self.prompt_set.objects(index)),
                                         stability))


def _segment_slices(reader: StackReader, prompt_set: PromptSet, setup: JobSetup, opened: StackStore | None,
                    limits: tuple[float, float] | None, dtype: Any, writer: LabelWriter, tracker: Progress,
                    rows: _Rows) -> Any:
    """Segment every prompted slice on the job's runner and write it; the label stack."""
    runner, manager, config = setup.runner, setup.manager, setup.config
    try:
        for index in prompt_set.slices:
            tracker.check()
            image = prepare(reader, index, limits)
            objects = prompt_set.objects(index)
            if manager is not None:  # a serial run
                runner.submit(lambda i, im, objs: (i, *segment_objects(manager, im, objs, dtype, rows.jitter)),
                              index, image, objects)
            else:
                runner.submit(task_segment, config, None if opened is None else str(opened.path),
                              None if opened is None else opened.store_id, index, image, objects, str(dtype),
                              rows.jitter)
            while runner.full:
                _write(runner.results(wait=True), writer, tracker, rows)
            _write(runner.results(wait=False), writer, tracker, rows)
        _write(runner.drain(), writer, tracker, rows)
        return writer.finish()
    except BaseException:
        runner.cancel()
        writer.abort()
        raise


def _write(results: Iterable[tuple[int, Any, dict[int, float]]], writer: LabelWriter, tracker: Progress,
           rows: _Rows) -> None:
    for index, labels, stability in results:
        writer.write(index, labels)
        rows.add(index, labels, stability)
        tracker.report()

