"""Which model to load, and the per-process caches that let every Dask worker load it exactly once.

A :class:`ModelConfig` names a model the way :meth:`ModelManager.load` takes it; it is small, hashable and
picklable, so it travels with every task. :func:`manager_for` keeps one manager per config in each process (a Dask
worker process, or the client for the serial path): the first task on a worker loads the model, every later task
reuses it. The task functions at the bottom are what the Dask workers run; the serial path calls the same
functions in-process, so both give identical results.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch

from ..engine.manager import ModelManager
from ..engine.session import ObjectSession
from ..engine.stability import Jitter
from ..engine.types import CancelToken, ImageGeometry, Prompts, unpack_embedding
from .store import StackStore

__all__ = ["EmbedReport", "ModelConfig", "ReturnedFeatures", "manager_for", "model_info", "paint_objects",
           "segment_objects", "thread_count_invariant"]


@dataclass(frozen=True)
class ModelConfig:
    """A model to load: name, checkpoint, device, and (for tests and benchmarks) random weights.

    ``torch_threads``: intra-op threads torch may use in a process that loads this config (Dask workers start with
    one: ``OMP_NUM_THREADS=1``); ``None`` leaves torch's setting alone.
    """

    name: str = "fallback"
    checkpoint: str | None = None
    device: str = "auto"
    allow_random_weights: bool = False
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", os.fspath(self.checkpoint))
        object.__setattr__(self, "device", str(self.device))

    def load(self) -> ModelManager:
        """A new manager for this model (in this process, on its device)."""
        if self.torch_threads:
            torch.set_num_threads(int(self.torch_threads))
        return ModelManager.load(self.name, self.checkpoint, device=self.device,
                                 allow_random_weights=self.allow_random_weights)

    def with_threads(self, torch_threads: int | None) -> ModelConfig:
        return replace(self, torch_threads=torch_threads)


_FLAG_LOCK = threading.Lock()
_FLAG_USERS = 0
_FLAG_SAVED = True


@contextlib.contextmanager
def thread_count_invariant() -> Iterator[None]:
    """Make CPU results independent of the number of torch threads, so serial and Dask runs agree bit for bit.

    oneDNN's convolutions (SAM's neck on the reference encoder path, the prompt encoder's mask downscaling) give
    results that depend on the thread count (ViT-B neck: up to 4e-6 between 1 and 2 threads), while torch's own
    kernels used instead do not and are as fast here. While it is off the decoder keeps its products with the image
    tokens in the model's dtype (:meth:`~napari_focsam.models.fast_decoder.FastDecoder.precisions`): bfloat16
    GEMMs need oneDNN.
    ``torch.backends.mkldnn`` is process-wide, so the switch is reference counted: it is off while any stack job in
    this process runs and restored after the last one.
    """
    global _FLAG_USERS, _FLAG_SAVED
    with _FLAG_LOCK:
        if _FLAG_USERS == 0:
            _FLAG_SAVED = bool(torch.backends.mkldnn.enabled)
            torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # torch types the flag as its descriptor
        _FLAG_USERS += 1
    try:
        yield
    finally:
        with _FLAG_LOCK:
            _FLAG_USERS -= 1
            if _FLAG_USERS == 0:
                torch.backends.mkldnn.enabled = _FLAG_SAVED  # type: ignore[assignment]


_LOCK = threading.Lock()
_MANAGERS: dict[ModelConfig, ModelManager] = {}
_STORES: dict[tuple[str, str], StackStore] = {}
_LOADS: list[ModelConfig] = []


def manager_for(config: ModelConfig) -> ModelManager:
    """The manager of ``config`` in this process, loaded on first use (concurrent first uses load it once)."""
    with _LOCK:
        manager = _MANAGERS.get(config)
        if manager is None:
            manager = config.load()
            _MANAGERS[config] = manager
            _LOADS.append(config)
    if config.torch_threads and torch.get_num_threads() != int(config.torch_threads):
        # OpenMP's thread count is per OS thread: a Dask task thread starts from OMP_NUM_THREADS (1), whatever the
        # thread that loaded the model set, so every task thread sets it again
        torch.set_num_threads(int(config.torch_threads))
    return manager


def store_for(path: str, store_id: str, *, writable: bool = False) -> StackStore:
    """The stack store at ``path`` in this process, opened once; refuses a store replaced since (another id)."""
    with _LOCK:
        store = _STORES.get((path, store_id))
        if store is None:
            store = StackStore.open(path, writable=writable)
            if store.store_id != store_id:
                raise RuntimeError(f"the stack store {path} was replaced while this job ran")
            _STORES[(path, store_id)] = store
        return store


def loads_in_this_process() -> int:
    """How many models this process has loaded through :func:`manager_for` (the tests check: once per worker)."""
    with _LOCK:
        return len(_LOADS)


def model_info(config: ModelConfig) -> dict[str, Any]:
    """What the client needs to know about the model without loading it itself."""
    manager = manager_for(config)
    predictor = manager.predictor
    return {
        "name": predictor.name,
        "display_name": predictor.display_name,
        "fingerprint": predictor.fingerprint,
        "supports_boxes": bool(predictor.supports_boxes),
        "is_fallback": bool(predictor.is_fallback),
        "pid": os.getpid(),
    }


def paint_objects(
    manager: ModelManager, image: np.ndarray, objects: Sequence[tuple[int, Prompts]], dtype: Any
) -> np.ndarray:
    """The label image of ``objects`` (id, prompts) on one prepared slice: each object is clicked in file order.

    Objects whose prompts have no positive click or scribble, no box and no region are absent from the slice (left
    out). Where masks overlap, the smaller id keeps the pixel (objects are painted in ascending id order, never over
    another).
    """
    return segment_objects(manager, image, objects, dtype)[0]


def segment_objects(
    manager: ModelManager, image: np.ndarray, objects: Sequence[tuple[int, Prompts]], dtype: Any,
    jitter: Jitter | None = None,
) -> tuple[np.ndarray, dict[int, float]]:
    """:func:`paint_objects`, and with ``jitter`` the stability (ST) of each painted object's mask by id (objects
    whose last step cannot be jittered, such as a region alone, get NaN)."""
    embedding = manager.embed(image)
    labels = np.zeros(embedding.geometry.original_size, dtype=dtype)
    stability: dict[int, float] = {}
    for object_id, prompts in sorted(objects, key=lambda item: item[0]):
        if not prompts.has_object:
            continue
        session = ObjectSession(manager.predictor, embedding, object_id=object_id)
        mask = session.sync(prompts)
        labels[mask & (labels == 0)] = object_id
        if jitter is not None:
            try:
                stability[object_id] = session.stability(jitter).score
            except ValueError:  # nothing to jitter in the last step (a region or scribbles alone)
                stability[object_id] = float("nan")
    return labels, stability


# ---------------------------------------------------------------------- Dask tasks (also run in-process)
class ReturnedFeatures(NamedTuple):
    """A slice's embedding sent back to the client, which writes it (the store does not exist before the first)."""

    key: str
    array: np.ndarray  #: bfloat16 features as float32 (exact; numpy has no bfloat16)
    torch_dtype: str
    geometry: dict[str, Any]
    #: the model's per-image extras (HQ-SAM, PA-SAM): name -> (array, torch dtype name); None: none
    extras: dict[str, tuple[np.ndarray, str]] | None = None

    @classmethod
    def of(cls, key: str, features: torch.Tensor, geometry: ImageGeometry,
           extras: dict[str, torch.Tensor] | None = None) -> ReturnedFeatures:
        def plain(t: torch.Tensor) -> tuple[np.ndarray, str]:
            t = t.detach().cpu()
            return (t.float() if t.dtype == torch.bfloat16 else t).numpy(), str(t.dtype).removeprefix("torch.")

        array, dtype = plain(features)
        return cls(key, array, dtype, geometry.to_attrs(), {n: plain(t) for n, t in (extras or {}).items()} or None)

    def tensor(self) -> torch.Tensor:
        return torch.from_numpy(np.array(self.array)).to(getattr(torch, self.torch_dtype))

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {n: torch.from_numpy(np.array(a)).to(getattr(torch, d)) for n, (a, d) in (self.extras or {}).items()}


class EmbedReport(NamedTuple):
    """What an embedding task did: the slices it computed, how long each took (for sizing later tasks), and their
    features when it did not write them itself."""

    indices: list[int]
    seconds_per_slice: float  #: embed (+ write), once the model and the store were at hand
    returned: ReturnedFeatures | None = None


def embed_returning(manager: ModelManager, index: int, key: str, image: np.ndarray,
                    cancel: CancelToken | None = None) -> EmbedReport:
    """Embed one prepared slice and return its features (a slice computed before the store exists)."""
    start = time.perf_counter()
    features, geometry, extras = unpack_embedding(manager.predictor.embed(image, cancel=cancel))
    return EmbedReport([index], time.perf_counter() - start, ReturnedFeatures.of(key, features, geometry, extras))


def embed_into(manager: ModelManager, store: StackStore, slices: Sequence[tuple[int, str, np.ndarray]],
               cancel: CancelToken | None = None) -> EmbedReport:
    """Embed prepared slices ``(index, key, image)`` one after the other and write each into ``store`` as it is done.

    Several slices per task spread Dask's fixed cost per task over them; each slice is written (features, then its
    meta row) before the next starts, so a task cut short leaves the slices done so far complete and resumable.
    """
    start = time.perf_counter()
    for index, key, image in slices:
        features, geometry, extras = unpack_embedding(manager.predictor.embed(image, cancel=cancel))
        if geometry != store.geometry:
            raise RuntimeError(f"slice {index}: geometry {geometry} differs from the store's {store.geometry}")
        store.write_slice(index, key, features, extras)
    return EmbedReport([index for index, _, _ in slices], (time.perf_counter() - start) / max(1, len(slices)))


@thread_count_invariant()
def task_embed_return(config: ModelConfig, index: int, key: str, image: np.ndarray) -> EmbedReport:
    """:func:`embed_returning` on a Dask worker."""
    manager = manager_for(config)
    _check_key(manager, image, key)
    return embed_returning(manager, index, key, image)


@thread_count_invariant()
def task_embed_write(
    config: ModelConfig, store_path: str, store_id: str, slices: Sequence[tuple[int, str, np.ndarray]]
) -> EmbedReport:
    """:func:`embed_into` the store at ``store_path`` on a Dask worker."""
    manager = manager_for(config)
    for _, key, image in slices:
        _check_key(manager, image, key)
    return embed_into(manager, store_for(store_path, store_id, writable=True), slices)


@thread_count_invariant()
def task_segment(
    config: ModelConfig,
    store_path: str | None,
    store_id: str | None,
    index: int,
    image: np.ndarray,
    objects: Sequence[tuple[int, Prompts]],
    dtype: str,
    jitter: Jitter | None = None,
) -> tuple[int, np.ndarray, dict[int, float]]:
    """Segment the objects of one prepared slice (embedding from the stack store when it has it); with ``jitter``
    their stability too (:func:`segment_objects`)."""
    manager = manager_for(config)
    use_store(manager, store_path, store_id)
    return (index, *segment_objects(manager, image, objects, np.dtype(dtype), jitter))


def use_store(manager: ModelManager, store_path: str | None, store_id: str | None) -> None:
    """On a worker: let ``manager`` reuse the stack store (opened once per worker) when it holds its model's
    embeddings; nothing when no store is given."""
    if store_path is None or store_id is None:
        return
    store = store_for(store_path, store_id)
    if store.spec.fingerprint == manager.predictor.fingerprint:
        manager.cache.add_source(store)


def _check_key(manager: ModelManager, image: np.ndarray, key: str) -> None:
    if manager.key_for(image) != key:
        raise RuntimeError(
            f"this worker's model gives another embedding key than the client expected (model "
            f"{manager.predictor.fingerprint}); the workers must load identical weights"
        )
