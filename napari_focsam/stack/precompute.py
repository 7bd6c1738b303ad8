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

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine.manager import ModelManager
from ..engine.types import CancelToken, ImageGeometry
from .common import (ModelLike, Progress, ProgressCallback, dask_config, describe_model, local_manager,
                     normalise_limits, prepare, runner_for, slice_key)
from .distributed import Runner, SerialRunner
from .reader import open_stack
from .store import SliceStatus, StackStore, StackStoreWarning, StoreError, StoreMismatchError, StoreSpec
from .worker import task_embed_return, task_embed_write, thread_count_invariant

__all__ = ["PrecomputeResult", "attach_store", "detach_store", "precompute_stack"]


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
    address); otherwise the run is serial. Results are identical either way.

    ``progress(done, total)`` is called after every slice (verified or computed); ``cancel`` is checked between
    slices and raises :class:`Cancelled`. Either interruption leaves a resumable store.
    """
    start = time.perf_counter()
    limits = normalise_limits(contrast_limits)
    path = Path(os.fspath(store)).expanduser().absolute()
    reader = open_stack(stack, rgb=rgb, key=key)
    try:
        existing = _open_existing(path, overwrite)
        with runner_for(client, workers, scheduler, window) as runner:
            serial = isinstance(runner, SerialRunner)
            manager = local_manager(model) if serial else None
            config = None if serial else dask_config(model, runner)
            info = describe_model(manager, runner, config)
            spec = StoreSpec(info["name"], info["fingerprint"], info["display_name"], reader.rgb, limits,
                             reader.leading_shape, reader.slice_shape)
            if existing is not None:
                problems = existing.spec.differences(spec)
                if problems:
                    raise StoreMismatchError(f"{path} was made for something else and is not used: "
                                             + "; ".join(problems) + " (use overwrite to replace it, or another path)")
            job = _Job(reader, limits, path, spec, existing, manager, config, runner, overwrite,
                       verify_features, Progress(reader.n_slices, progress, cancel))
            job.run()
            workers_used = 0 if serial else _n_workers(runner)
    finally:
        if reader is not stack:
            reader.close()
    return PrecomputeResult(path, reader.n_slices, job.computed, job.verified, job.repaired,
                            time.perf_counter() - start, workers_used)


def _n_workers(runner: Runner) -> int:
    from .distributed import cluster_threads

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
    """One pass over the stack: verify what is there, compute what is missing."""

    def __init__(self, reader: Any, limits: tuple[float, float] | None, path: Path, spec: StoreSpec,
                 store: StackStore | None, manager: ModelManager | None, config: Any, runner: Runner,
                 overwrite: bool, verify_features: bool, progress: Progress) -> None:
        self.reader, self.limits, self.path, self.spec = reader, limits, path, spec
        self.store, self.manager, self.config, self.runner = store, manager, config, runner
        self.overwrite, self.verify_features, self.progress = overwrite, verify_features, progress
        self.computed = self.verified = self.repaired = 0

    def run(self) -> None:
        try:
            for i in range(self.reader.n_slices):
                self.progress.check()
                image = prepare(self.reader, i, self.limits)
                key = slice_key(image, self.spec.fingerprint)
                if self.store is None:
                    self._create(i, key, image)
                    continue
                status = self.store.check_slice(i, key, verify_features=self.verify_features)
                if status == SliceStatus.OK:
                    self.verified += 1
                    self.progress.report()
                    continue
                if status == SliceStatus.OTHER:
                    raise StoreMismatchError(
                        f"slice {i} ({self.reader.index(i)}) of {self.path} holds the embedding of other pixels "
                        "(the stack's data or its preprocessing differ from the run that made the store); it is not "
                        "used (use overwrite to replace the store, or another path)")
                if status == SliceStatus.CORRUPT:
                    warnings.warn(f"slice {i} of {self.path} is damaged (checksum); computing it again",
                                  StackStoreWarning, stacklevel=3)
                    self.repaired += 1
                self._submit(i, key, image)
                del image
                while self.runner.full:
                    self._collect(wait=True)
                self._collect(wait=False)
            for _ in self.runner.drain():
                self._done()
        except BaseException:
            self.runner.cancel()
            raise
        if self.store is not None and self.progress.done == self.reader.n_slices:
            self.store.set_complete(True)

    def _create(self, i: int, key: str, image: np.ndarray) -> None:
        """Compute slice ``i`` here (or on a worker, returned) and make the store with its shape and dtype."""
        if self.manager is not None:
            features, geometry = self.manager.predictor.embed(image, cancel=self._cancel_token())
        else:
            array, attrs, dtype = self.runner.client.submit(task_embed_return, self.config, image, key,
                                                            pure=False).result()
            features = torch.from_numpy(np.array(array)).to(getattr(torch, dtype))
            geometry = ImageGeometry.from_attrs(attrs)
        self.store = StackStore.create(self.path, self.spec, geometry, features, overwrite=self.overwrite)
        self.store.write_slice(i, key, features)
        self.computed += 1
        self.progress.report()

    def _cancel_token(self) -> CancelToken | None:
        return self.progress._cancel  # noqa: SLF001 - the same token, passed down to the encoder

    def _submit(self, i: int, key: str, image: np.ndarray) -> None:
        assert self.store is not None
        if self.manager is not None:
            self.runner.submit(_embed_here, self.manager, self.store, i, key, image, self._cancel_token())
        else:
            self.runner.submit(task_embed_write, self.config, str(self.store.path), self.store.store_id, i, key,
                               image)

    def _collect(self, *, wait: bool) -> None:
        for _ in self.runner.results(wait=wait):
            self._done()

    def _done(self) -> None:
        self.computed += 1
        self.progress.report()


def _embed_here(manager: ModelManager, store: StackStore, i: int, key: str, image: np.ndarray,
                cancel: CancelToken | None) -> int:
    features, geometry = manager.predictor.embed(image, cancel=cancel)
    if geometry != store.geometry:
        raise RuntimeError(f"slice {i}: geometry {geometry} differs from the store's {store.geometry}")
    store.write_slice(i, key, features)
    return i


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

