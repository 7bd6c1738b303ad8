"""The embedding cache: an in-memory LRU bounded in bytes with one computation per key at a time, backed by an
optional on-disk zarr store (:class:`~napari_focsam.engine.embedding_store.EmbeddingStore`, whose module describes
the layout) and by read-only sources.

Image embeddings take seconds to tens of seconds on a CPU, so they are computed once per image (slice) and model and
reused. The cache is keyed by :func:`~napari_focsam.engine.signature.embedding_key` (pixel data signature + model
fingerprint), so changed pixels or another model never meet a stale embedding. Correctness comes before speed:
every entry read from disk is verified against its checksum, a damaged entry is reported and recomputed, and a
directory that is not ours is reported and left strictly alone.

Read-only sources: :meth:`EmbeddingCache.add_source` registers objects with a ``lookup(key) -> ImageEmbedding | None``
method (e.g. a precomputed stack store, :class:`napari_focsam.stack.store.StackStore`). They are consulted after
memory and the cache's own store and before computing; a hit is verified by the source, counted in ``hits_source`` and
kept in memory (never copied into the cache's own store). A source that raises or answers for another key is reported
and treated as a miss.

Problems are never raised to the caller: each is passed as a human-readable message to ``on_problem`` (by default
``warnings.warn(message, CacheWarning)``), and the cache goes on working (from memory, and by recomputing).

Thread safety: every public method may be called from any thread, concurrently with any other. One lock guards the
LRU, the statistics and the in-flight table and is never held during a computation or disk I/O; the store
serialises its disk I/O with a lock of its own. :meth:`EmbeddingCache.get_or_compute` computes each key once at a
time: concurrent callers of the same key wait for that one computation, different keys compute concurrently.
Several processes may share a store: entries appear atomically, and every read is verified, so a race can at worst
cost a recomputation, never hand out a wrong embedding.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from .embedding_store import EmbeddingStore
from .types import EmbedResult, ImageEmbedding, unpack_embedding

__all__ = ["CacheStats", "CacheWarning", "EmbeddingCache", "EmbeddingSource"]

class CacheWarning(UserWarning):
    """A problem of the embedding cache: a foreign or damaged store, a corrupt entry, a failed write."""


@dataclass(frozen=True)
class CacheStats:
    """Counters of one :class:`EmbeddingCache` since it was made; also readable as ``stats["misses"]``."""

    hits_memory: int = 0  #: lookups answered from memory
    hits_disk: int = 0  #: lookups answered from the store (verified, then promoted into memory)
    misses: int = 0  #: lookups neither had (for get_or_compute: computations started)
    evictions: int = 0  #: entries dropped from memory to respect max_bytes
    shared: int = 0  #: get_or_compute callers that received another caller's computation
    corrupt: int = 0  #: store entries found corrupt (reported, deleted, recomputed)
    disk_writes: int = 0  #: entries written to the store
    hits_source: int = 0  #: lookups answered by a read-only source (see add_source), then promoted into memory

    def __getitem__(self, name: str) -> int:
        if name not in self.as_dict():
            raise KeyError(name)
        return int(getattr(self, name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


@runtime_checkable
class EmbeddingSource(Protocol):
    """A read-only provider of verified embeddings by key (e.g. a precomputed stack store)."""

    def lookup(self, key: str) -> ImageEmbedding | None:
        """The embedding of ``key`` (its features verified by the source), or None when the source has none."""
        ...


class _Flight:
    """One computation in progress for a key: the callers that wait for it wait on ``done``."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: ImageEmbedding | None = None  # stays None when the computation raised


def _default_report(message: str) -> None:
    warnings.warn(message, CacheWarning, stacklevel=3)


def _on_device(embedding: ImageEmbedding, device: torch.device | str | None) -> ImageEmbedding:
    """``embedding`` itself, or a copy whose features are on ``device`` when they are elsewhere."""
    if device is None:
        return embedding
    return embedding.to(device)


class EmbeddingCache:
    """Image embeddings by key: an LRU in memory bounded by ``max_bytes``, backed by an optional zarr store.

    ``max_bytes`` bounds the summed ``nbytes`` of the embeddings kept in memory (on whatever device they live); an
    embedding larger than this is not kept in memory, but still written to the store. ``store`` is a directory for
    the on-disk zarr store (layout: :mod:`napari_focsam.engine.embedding_store`), or ``None`` for memory only; a
    missing path is created, a path that holds something else is reported and never touched. ``on_problem`` is called
    with a human-readable message for every problem (by default ``warnings.warn(message, CacheWarning)``); it is never
    called while the cache holds a lock, so it may use the cache.

    All methods may be called concurrently from any threads; see the module docstring.
    """

    def __init__(
        self,
        max_bytes: int = 1 << 30,
        store: str | os.PathLike[str] | None = None,
        on_problem: Callable[[str], None] | None = None,
    ) -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        self._max_bytes = int(max_bytes)
        self._report_fn: Callable[[str], None] = on_problem if on_problem is not None else _default_report
        self._lock = threading.Lock()  # LRU, counters, in-flight table; never held while computing or doing I/O
        self._memory: OrderedDict[str, ImageEmbedding] = OrderedDict()
        self._memory_bytes = 0
        self._flights: dict[str, _Flight] = {}
        self._counts = {f.name: 0 for f in fields(CacheStats)}
        self._store_path: Path | None = None
        self._store: EmbeddingStore | None = None
        self._sources: tuple[EmbeddingSource, ...] = ()
        if store is not None:
            self._store_path = Path(os.fspath(store)).expanduser().absolute()
            self._store = EmbeddingStore(self._store_path, self._report)

    # ------------------------------------------------------------------ properties

    @property
    def max_bytes(self) -> int:
        """The bound on :attr:`memory_bytes`."""
        return self._max_bytes

    @property
    def memory_bytes(self) -> int:
        """Summed ``nbytes`` of the embeddings now kept in memory; never more than :attr:`max_bytes`."""
        with self._lock:
            return self._memory_bytes

    @property
    def stats(self) -> CacheStats:
        """A snapshot of the counters: hits_memory, hits_disk, misses, evictions (shared, corrupt, disk_writes,
        hits_source)."""
        with self._lock:
            return CacheStats(**self._counts)

    @property
    def store_path(self) -> Path | None:
        """The configured store directory (absolute), usable or not; ``None`` for a memory-only cache."""
        return self._store_path

    @property
    def store_usable(self) -> bool:
        """Whether the store is ours and in use; ``False`` for no store and for a foreign or unopenable one."""
        return self._store is not None and self._store.usable

    @property
    def sources(self) -> tuple[EmbeddingSource, ...]:
        """The read-only sources consulted after memory and the store, in the order they were added."""
        with self._lock:
            return self._sources

    # ------------------------------------------------------------------ public API

    def add_source(self, source: EmbeddingSource) -> None:
        """Consult ``source.lookup(key)`` after memory and the store, before computing (added once, kept in order)."""
        if not callable(getattr(source, "lookup", None)):
            raise TypeError(f"an embedding source needs a lookup(key) method, got {type(source).__name__}")
        with self._lock:
            if not any(s is source for s in self._sources):
                self._sources = (*self._sources, source)

    def remove_source(self, source: EmbeddingSource) -> None:
        """Stop consulting ``source`` (embeddings it gave that are in memory stay there); unknown ones are ignored."""
        with self._lock:
            self._sources = tuple(s for s in self._sources if s is not source)

    def get(self, key: str, device: torch.device | str | None = None) -> ImageEmbedding | None:
        """The embedding of ``key`` from memory, else from the store (verified, then promoted into memory), or None.

        With ``device``, the returned embedding's features are on that device (a copy when they were elsewhere; what
        memory keeps is not changed). A disk hit is moved to ``device`` before it is kept in memory.
        """
        embedding = self._memory_lookup(key)
        if embedding is not None:
            return _on_device(embedding, device)
        embedding = self._disk_lookup(key, device)
        if embedding is None:
            embedding = self._source_lookup(key, device)
        if embedding is None:
            self._count("misses")
        return embedding

    def put(self, embedding: ImageEmbedding) -> None:
        """Keep ``embedding`` in memory (evicting least recently used entries) and write it to the store if usable."""
        if not isinstance(embedding, ImageEmbedding):
            raise TypeError(f"put expects an ImageEmbedding, got {type(embedding).__name__}")
        self._remember(embedding)
        if self._store is not None and self._store.write(embedding):
            self._count("disk_writes")

    def get_or_compute(
        self,
        key: str,
        compute: Callable[[], EmbedResult],
        device: torch.device | str | None = None,
    ) -> ImageEmbedding:
        """The embedding of ``key``: from memory, from the store, or from ``compute()``, which is then cached.

        Single flight per key: while one caller computes (or reads from disk) a key, other callers of the same key
        wait for its result instead of computing it again; different keys compute concurrently, and no lock is held
        while computing. If ``compute`` raises (e.g. :class:`~napari_focsam._cancel.Cancelled`), the exception goes
        to that caller only, and one of the waiting callers computes the key itself with its own ``compute``.
        """
        while True:
            leader = False
            with self._lock:
                embedding = self._memory.get(key)
                if embedding is not None:
                    self._memory.move_to_end(key)
                    self._counts["hits_memory"] += 1
                    return _on_device(embedding, device)
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = _Flight()
                    leader = True
            if not leader:
                flight.done.wait()
                if flight.result is not None:
                    self._count("shared")
                    return _on_device(flight.result, device)
                continue  # the computing caller failed: try again, computing it ourselves if nobody else does
            try:
                embedding = self._disk_lookup(key, device)
                if embedding is None:
                    embedding = self._source_lookup(key, device)
                if embedding is None:
                    self._count("misses")
                    features, geometry, extras = unpack_embedding(compute())
                    embedding = ImageEmbedding(features=features, geometry=geometry, key=key, extras=extras)
                    self.put(embedding)  # before releasing the waiters, so nobody computes it again meanwhile
                flight.result = embedding
            finally:
                with self._lock:
                    self._flights.pop(key, None)
                flight.done.set()
            return _on_device(embedding, device)

    def discard(self, key: str) -> None:
        """Forget ``key`` in memory and delete its entry from the store (if the store is ours)."""
        with self._lock:
            embedding = self._memory.pop(key, None)
            if embedding is not None:
                self._memory_bytes -= embedding.nbytes
        if self._store is not None:
            self._store.discard(key)

    def clear(self, memory_only: bool = True) -> None:
        """Forget everything in memory; with ``memory_only=False`` also delete every entry of the store.

        Only entry and staging directories of our own store are deleted: the store itself, its format marker and
        anything else someone put in it stay, and a foreign store is never touched.
        """
        with self._lock:
            self._memory.clear()
            self._memory_bytes = 0
        if not memory_only and self._store is not None:
            self._store.clear()

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is in memory or has a complete entry in the store (not verified until it is read)."""
        if not isinstance(key, str):
            return False
        with self._lock:
            if key in self._memory:
                return True
        return self._store is not None and key in self._store

    def __len__(self) -> int:
        """The number of embeddings kept in memory."""
        with self._lock:
            return len(self._memory)

    def __repr__(self) -> str:
        store = f"{str(self._store_path)!r}{'' if self.store_usable else ' (unused)'}" if self._store_path else None
        return (
            f"EmbeddingCache({len(self)} in memory, {self.memory_bytes}/{self._max_bytes} bytes, store={store})"
        )

    # ------------------------------------------------------------------ memory

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _memory_lookup(self, key: str) -> ImageEmbedding | None:
        with self._lock:
            embedding = self._memory.get(key)
            if embedding is not None:
                self._memory.move_to_end(key)
                self._counts["hits_memory"] += 1
            return embedding

    def _remember(self, embedding: ImageEmbedding) -> None:
        """Keep ``embedding`` as the most recently used entry, evicting others; an oversize one is not kept."""
        size = embedding.nbytes
        with self._lock:
            old = self._memory.pop(embedding.key, None)
            if old is not None:
                self._memory_bytes -= old.nbytes
            if size > self._max_bytes:
                return
            self._memory[embedding.key] = embedding
            self._memory_bytes += size
            while self._memory_bytes > self._max_bytes:
                _, evicted = self._memory.popitem(last=False)
                self._memory_bytes -= evicted.nbytes
                self._counts["evictions"] += 1

    def _report(self, message: str) -> None:
        self._report_fn(message)

    # ------------------------------------------------------------------ store and sources

    def _disk_lookup(self, key: str, device: torch.device | str | None) -> ImageEmbedding | None:
        """Read, verify and promote the store's entry for ``key``; a corrupt entry is reported, deleted, None."""
        if self._store is None:
            return None
        embedding, problem = self._store.read(key)
        if problem is not None:
            self._count("corrupt")
            self._report(problem)
        if embedding is None:
            return None
        embedding = _on_device(embedding, device)
        self._remember(embedding)
        self._count("hits_disk")
        return embedding

    def _source_lookup(self, key: str, device: torch.device | str | None) -> ImageEmbedding | None:
        """The first answer of the read-only sources for ``key``, promoted into memory; None if none has it."""
        for source in self.sources:
            try:
                embedding = source.lookup(key)
            except Exception as exc:  # noqa: BLE001 - a failing source must not break the caller
                self._report(f"embedding source {source!r} failed for {key}: {type(exc).__name__}: {exc}")
                continue
            if embedding is None:
                continue
            if not isinstance(embedding, ImageEmbedding) or embedding.key != key:
                got = getattr(embedding, "key", type(embedding).__name__)
                self._report(f"embedding source {source!r} answered {got!r} for {key}; ignored")
                continue
            embedding = _on_device(embedding, device)
            self._remember(embedding)
            self._count("hits_source")
            return embedding
        return None
