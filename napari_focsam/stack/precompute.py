"""Precompute the embedding of every slice of a stack into a :class:`~napari_focsam.stack.store.StackStore`.

The loop reads one slice at a time, prepares it exactly as :meth:`ModelManager.embed` does, computes its embedding
key, and then either *verifies* the slice already in the store (same key, checksum of the features) or computes it
(in this process or on a Dask worker, which writes it into the store itself). Hence:

* an interrupted run (killed, cancelled, or interrupted by its progress callback) resumes: slices written and
  verified are skipped, a damaged slice is reported and recomputed;
* a finished store is verified, not recomputed;
* a store made for another model, preprocessing or stack shape, or holding the embeddings of other pixels, is
  reported (:class:`~napari_focsam.stack.store.StoreMismatchError`) and never silently used; ``overwrite=True``
  replaces it (only ever a stack store: any other existing path is left alone).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.manager import ModelManager
from ..engine.types import CancelToken, ImageGeometry
from .common import ModelLike, Progress, ProgressCallback, job_setup, normalise_limits, prepare, slice_key
from .distributed import Runner
from .reader import open_stack
from .store import SliceStatus, StackStore, StackStoreWarning, StoreError, StoreMismatchError, StoreSpec
from .worker import (
    EmbedReport,
    ReturnedFeatures,
    embed_into,
    embed_returning,
    task_embed_return,
    task_embed_write,
    thread_count_invariant,
)

__all__ = ["PrecomputeResult", "attach_store", "detach_store", "precompute_stack"]

#: Automatic task size on Dask: slices per task so that a task takes about this long. Every task costs the client and
#: the scheduler CPU of their own (submission, serialisation, state changes, messages), taken from the embeddings on a
#: machine whose cores they all share: on the 2-core development machine with the tiny model (0.2 s per slice), the
#: client process (scheduler included) spent about 14 ms of CPU per slice beyond its idle load with one slice per
#: task, and 8 ms with five.
TASK_SECONDS = 1.0
#: At most this many slices per task: the client holds the prepared slices of every task in flight.
MAX_SLICES_PER_TASK = 16
#: An automatic task takes at most 1/SHARE of the slices left per worker thread, so that tasks get smaller towards
#: the end of the stack and the workers finish together (3 tasks of 5 slices on 2 workers would leave one idle for 5).
SHARE = 4


@dataclass(frozen=True)
class PrecomputeResult:
    """What one precompute run did."""

    store: Path
    n_slices: int
    computed: int  #: slices embedded by this run
    verified: int  #: slices found in the store and verified (skipped)
    repaired: int  #: damaged slices found and recomputed
    seconds: float
    workers: int  #: 0 for the serial run
    slices_per_task: int = 1  #: the most slices one task embedded (1 serially)

    @property
    def slices_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("nan")


@thread_count_invariant()
def precompute_stack(
    stack: Any,
    store: str | os.PathLike[str],
    model: ModelLike = "fallback",
    *,
    rgb: bool | None = None,
    contrast_limits: Sequence[float] | None = None,
    key: str | None = None,
    overwrite: bool = False,
    verify_features: bool = True,
    client: Any = None,
    workers: int | None = None,
    scheduler: str | None = None,
    window: int | None = None,
    slices_per_task: int | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> PrecomputeResult:
    """Embed every slice of ``stack`` (path, numpy/zarr/dask array) with ``model`` into the zarr store ``store``.

    ``model``: a name (``"sam_vit_b"``, ``"fallback"``, …), a :class:`~napari_focsam.stack.worker.ModelConfig`
    (name + checkpoint + device), or, for the serial run only, a loaded :class:`ModelManager` (the widget's).
    ``rgb``/``contrast_limits``: as :meth:`ModelManager.embed` takes them; the same values must be used when the
    slices are embedded later for the store to be found (``None`` = 8-bit data as is, else robust percentiles per
    slice). ``key``: the array inside a zarr group. ``verify_features=False`` checks only the keys of slices already
    written (fast), not their checksums.

    Dask: give a ``client``, or ``workers=N`` (a local cluster of N processes on 127.0.0.1), or ``scheduler`` (an
    address); otherwise the run is serial. Results are identical either way. ``window``: Dask tasks in flight at most
    (default twice the cluster's threads). ``slices_per_task``: slices one Dask task embeds (default: from the time of
    the first slice, so that a task takes about :data:`TASK_SECONDS`, and smaller towards the end of the stack (see
    :data:`SHARE`): several slices per task for a fast model or a GPU, one for ViT-sized models on a CPU); the serial
    run embeds one at a time.

    ``progress(done, total)`` is called as slices are verified or computed (the slices of a Dask task together);
    ``cancel`` is checked between slices and as Dask tasks finish (tasks not started are dropped) and raises
    :class:`Cancelled`. Either interruption leaves a resumable store.
    """
    start = time.perf_counter()
    if slices_per_task is not None and int(slices_per_task) < 1:
        raise ValueError(f"slices_per_task must be at least 1, got {slices_per_task}")
    limits = normalise_limits(contrast_limits)
    path = Path(os.fspath(store)).expanduser().absolute()
    reader = open_stack(stack, rgb=rgb, key=key)
    try:
        existing = _open_existing(path, overwrite)
        with job_setup(model, client, workers, scheduler, window) as setup:
            info = setup.info
            spec = StoreSpec(info["name"], info["fingerprint"], info["display_name"], reader.rgb, limits,
                             reader.leading_shape, reader.slice_shape)
            if existing is not None:
                problems = existing.spec.differences(spec)
                if problems:
                    raise StoreMismatchError(f"{path} was made for something else and is not used: "
                                             + "; ".join(problems) + " (use overwrite to replace it, or another path)")
            job = _Job(reader, limits, path, spec, existing, setup.manager, setup.config, setup.runner, overwrite,
                       verify_features, Progress(reader.n_slices, progress, cancel),
                       1 if setup.serial else slices_per_task)
            job.run()
            workers_used = 0 if setup.serial else _n_workers(setup.runner)
    finally:
        if reader is not stack:
            reader.close()
    return PrecomputeResult(path, reader.n_slices, job.computed, job.verified, job.repaired,
                            time.perf_counter() - start, workers_used, job.largest_task)


def slices_per_task_for(seconds_per_slice: float, slices_left: int, threads: int = 1) -> int:
    """Slices for the next automatic Dask task: about :data:`TASK_SECONDS` of work, at most
    :data:`MAX_SLICES_PER_TASK`, and at most 1/:data:`SHARE` of the ``slices_left`` per worker thread (at least 1)."""
    by_time = math.ceil(TASK_SECONDS / max(seconds_per_slice, 1e-3))
    return max(1, min(MAX_SLICES_PER_TASK, by_time, math.ceil(slices_left / (SHARE * max(1, threads)))))


def _n_workers(runner: Runner) -> int:
    from .distributed import DaskRunner, cluster_threads

    assert isinstance(runner, DaskRunner)
    return cluster_threads(runner.client)[0]


def _open_existing(path: Path, overwrite: bool) -> StackStore | None:
    """The store already at ``path`` (None if there is none, or it is to be replaced); a foreign path is refused."""
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return None
    if not StackStore.is_store(path):
        raise StoreError(f"{path} exists and is not a napari-focsam stack store; it is left untouched "
                         "(choose another path)")
    if overwrite:
        return None  # replaced by StackStore.create(overwrite=True) when the first slice is computed
    return StackStore.open(path, writable=True)


class _Job:
    """One pass over the stack: verify what is there, compute what is missing.

    Until the store exists, each worker thread gets one slice whose features come back to the client; the first to
    return makes the store (its shape and dtype), so that no worker waits for it. Then slices to compute are gathered
    into groups and each group is one task that writes into the store: of ``task_size`` slices, or, with
    ``task_size`` None, of one slice until the first slice's time is known, then of :func:`slices_per_task_for` that
    time and the slices left.
    """

    def __init__(self, reader: Any, limits: tuple[float, float] | None, path: Path, spec: StoreSpec,
                 store: StackStore | None, manager: ModelManager | None, config: Any, runner: Runner,
                 overwrite: bool, verify_features: bool, progress: Progress, task_size: int | None) -> None:
        self.reader, self.limits, self.path, self.spec = reader, limits, path, spec
        self.store, self.manager, self.config, self.runner = store, manager, config, runner
        self.overwrite, self.verify_features, self.progress = overwrite, verify_features, progress
        self.task_size = None if task_size is None else int(task_size)
        self.seconds_per_slice: float | None = None  #: the first measured, for automatic task sizes
        self.computed = self.verified = self.repaired = 0
        self.largest_task = 1
        self._group: list[tuple[int, str, np.ndarray]] = []

    def run(self) -> None:
        try:
            for i in range(self.reader.n_slices):
                self.progress.check()
                image = prepare(self.reader, i, self.limits)
                key = slice_key(image, self.spec.fingerprint)
                if self.store is None:
                    self._submit_returning(i, key, image)
                elif self._needed(i, key):
                    self._add(i, key, image)
                del image
                while self.runner.full or (self.store is None and self.runner.pending >= self.runner.threads):
                    self._collect(wait=True)
                self._collect(wait=False)
            self._submit()
            for report in self.runner.drain():
                self._done(report)
                self.progress.check()  # tasks still queued on the cluster are dropped, not waited for
        except BaseException:
            self.runner.cancel()
            raise
        if self.store is not None and self.progress.done == self.reader.n_slices:
            self.store.set_complete(True)

    def _needed(self, i: int, key: str) -> bool:
        """Whether slice ``i`` is to be computed (missing or damaged); a verified one is counted, another's refused."""
        assert self.store is not None
        status = self.store.check_slice(i, key, verify_features=self.verify_features)
        if status == SliceStatus.OK:
            self.verified += 1
            self.progress.report()
            return False
        if status == SliceStatus.OTHER:
            raise StoreMismatchError(
                f"slice {i} ({self.reader.index(i)}) of {self.path} holds the embedding of other pixels "
                "(the stack's data or its preprocessing differ from the run that made the store); it is not "
                "used (use overwrite to replace the store, or another path)")
        if status == SliceStatus.CORRUPT:
            warnings.warn(f"slice {i} of {self.path} is damaged (checksum); computing it again",
                          StackStoreWarning, stacklevel=4)
            self.repaired += 1
        return True

    def _submit_returning(self, i: int, key: str, image: np.ndarray) -> None:
        """Compute slice ``i`` before the store exists: its features come back (see the class docstring)."""
        if self.manager is not None:
            self.runner.submit(embed_returning, self.manager, i, key, image, self._cancel_token())
        else:
            self.runner.submit(task_embed_return, self.config, i, key, image)

    def _write_returned(self, i: int, returned: ReturnedFeatures) -> None:
        """Write a slice computed before the store existed; the first makes the store with its shape and dtype."""
        features, geometry = returned.tensor(), ImageGeometry.from_attrs(returned.geometry)
        extras = returned.extra_tensors()
        if self.store is None:
            self.store = StackStore.create(self.path, self.spec, geometry, features, extras=extras,
                                           overwrite=self.overwrite)
        elif geometry != self.store.geometry:
            raise RuntimeError(f"slice {i}: geometry {geometry} differs from the store's {self.store.geometry}")
        self.store.write_slice(i, returned.key, features, extras)

    def _cancel_token(self) -> CancelToken | None:
        return self.progress.cancel

    def _learn(self, seconds_per_slice: float) -> None:
        if self.seconds_per_slice is None:
            self.seconds_per_slice = seconds_per_slice

    def _group_size(self) -> int:
        """Slices for the task being gathered (see the class docstring)."""
        if self.task_size is not None:
            return self.task_size
        if self.seconds_per_slice is None:
            return 1
        return slices_per_task_for(self.seconds_per_slice, self.reader.n_slices - self._group[0][0],
                                   self.runner.threads)

    def _add(self, i: int, key: str, image: np.ndarray) -> None:
        """Queue slice ``i`` for computing; a full group is submitted as one task."""
        self._group.append((i, key, image))
        if len(self._group) >= self._group_size():
            self._submit()

    def _submit(self) -> None:
        """Submit the queued slices (if any) as one task."""
        if not self._group:
            return
        assert self.store is not None
        group, self._group = self._group, []
        self.largest_task = max(self.largest_task, len(group))
        if self.manager is not None:
            self.runner.submit(embed_into, self.manager, self.store, group, self._cancel_token())
        else:
            self.runner.submit(task_embed_write, self.config, str(self.store.path), self.store.store_id, group)

    def _collect(self, *, wait: bool) -> None:
        for report in self.runner.results(wait=wait):
            self._done(report)

    def _done(self, report: EmbedReport) -> None:
        if report.returned is not None:
            self._write_returned(report.indices[0], report.returned)
        self._learn(report.seconds_per_slice)
        self.computed += len(report.indices)
        self.progress.report(len(report.indices))


def attach_store(manager: ModelManager, store: str | os.PathLike[str] | StackStore) -> StackStore | None:
    """Let ``manager.embed(slice)`` reuse a precomputed stack store (a read-only source of its embedding cache).

    A store made with another model is reported (:class:`StackStoreWarning`) and not attached (returns None). A store
    made with other preprocessing or data is harmless: its keys simply never match, and the slices are computed.
    """
    opened = store if isinstance(store, StackStore) else StackStore.open(store)
    if opened.spec.fingerprint != manager.predictor.fingerprint:
        warnings.warn(f"{opened.path} holds embeddings of {opened.spec.display_name} [{opened.spec.fingerprint}], "
                      f"not of {manager.display_name} [{manager.predictor.fingerprint}]; it is not used",
                      StackStoreWarning, stacklevel=2)
        return None
    manager.cache.add_source(opened)
    return opened


def detach_store(manager: ModelManager, store: StackStore) -> None:
    """Stop reusing ``store`` (see :func:`attach_store`)."""
    manager.cache.remove_source(store)

