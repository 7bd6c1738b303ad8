"""The embedding cache: an in-memory LRU bounded in bytes, plus an optional on-disk zarr store.

Image embeddings take seconds to tens of seconds on a CPU, so they are computed once per image (slice) and model and
reused. The cache is keyed by :func:`~napari_focsam.engine.signature.embedding_key` (pixel data signature + model
fingerprint), so changed pixels or another model never meet a stale embedding. Correctness comes before speed:
every entry read from disk is verified against its checksum, a damaged entry is reported and recomputed, and a
directory that is not ours is reported and left strictly alone.

On-disk layout (a zarr v3 group, one directory on the local file system)::

    <store>/                         zarr group; attrs {"format": "napari-focsam-embeddings", "format_version": 1}
        <key>/                       zarr group, one per embedding, named by its key (lowercase [0-9a-z_-]{1,128})
            attrs: key               the key again (an entry is only used under the name it was written for)
                   geometry          ImageGeometry.to_attrs()
                   dtype, shape      of the stored array, e.g. "float32", [1, 256, 64, 64]
                   torch_dtype       the tensor's dtype; "bfloat16" tensors are stored as float32 (exactly) and
                                     converted back on reading
                   package_version   napari_focsam.__version__ of the writer (informational)
                   extras            only when the embedding has extras (HQ-SAM, PA-SAM): {name: {dtype, shape,
                                     torch_dtype, checksum}} for each extra tensor (checksum of its bytes)
                   checksum          BLAKE2b-128 hex digest of the array's C-order bytes followed by the
                                     attributes above that decide the result (key, geometry, dtype, shape,
                                     torch_dtype, extras), so an edited attribute fails it as surely as edited
                                     data; written last
            features/                zarr array: the tensor as numpy, one chunk in all (ndim < 4) or one chunk per
                                     leading index (ndim >= 4); default zarr compression
            extra_<name>/            zarr array: one per extra tensor, stored and verified like ``features``
        .staging-<key>-<pid>-<hex>/  an entry being written (or left by a crash; removed after an hour)

Writing: an entry is written completely into a ``.staging-*`` directory of the store, its ``checksum`` attr last,
and then renamed to ``<key>`` in one step, so a reader, even in another process, never sees half an entry. An entry
without ``checksum`` (a write interrupted by an older writer or by hand), with a wrong key, shape, dtype or checksum,
or whose chunks cannot be read is reported as corrupt, deleted (it is ours) and recomputed.

Opening the store: a missing path is created, an empty directory is initialised, a zarr group carrying our format
marker is used. Anything else (a file, a non-empty directory that is not a zarr group, another zarr group or array, a
store of a newer ``format_version``) is *foreign*: it is reported once and never read, written or deleted; the cache
then keeps embeddings in memory only. Inside our store only entry directories and staging directories are ever
deleted; other files someone put there are left alone.

Read-only sources: :meth:`EmbeddingCache.add_source` registers objects with a ``lookup(key) -> ImageEmbedding | None``
method (e.g. a precomputed stack store, :class:`napari_focsam.stack.store.StackStore`). They are consulted after
memory and the cache's own store and before computing; a hit is verified by the source, counted in ``hits_source`` and
kept in memory (never copied into the cache's own store). A source that raises or answers for another key is reported
and treated as a miss.

Problems are never raised to the caller: each is passed as a human-readable message to ``on_problem`` (by default
``warnings.warn(message, CacheWarning)``), and the cache goes on working (from memory, and by recomputing).

Thread safety: every public method may be called from any thread, concurrently with any other. One lock guards the
LRU, the statistics and the in-flight table and is never held during a computation or disk I/O; a second lock
serialises all disk I/O of one cache instance. :meth:`EmbeddingCache.get_or_compute` computes each key once at a
time: concurrent callers of the same key wait for that one computation, different keys compute concurrently.
Several processes may share a store: entries appear atomically, and every read is verified, so a race can at worst
cost a recomputation, never hand out a wrong embedding.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import zarr

from .._version import __version__
from .types import ImageEmbedding, ImageGeometry, unpack_embedding

__all__ = ["CacheStats", "CacheWarning", "EmbeddingCache", "EmbeddingSource"]

FORMAT = "napari-focsam-embeddings"
FORMAT_VERSION = 1

#: names an entry directory may have; lowercase only, so keys never collide on case-insensitive file systems
_DISK_KEY = re.compile(r"[0-9a-z][0-9a-z_-]{0,127}")
_STAGING_PREFIX = ".staging-"
#: a staging directory older than this is a crash's leftover (a write takes well under a second)
_STAGING_MAX_AGE_S = 3600.0

#: tensor dtypes that go to disk, and the numpy dtype they are stored as
_STORABLE: dict[torch.dtype, np.dtype] = {
    torch.float16: np.dtype("float16"),
    torch.float32: np.dtype("float32"),
    torch.float64: np.dtype("float64"),
    torch.bfloat16: np.dtype("float32"),  # numpy has no bfloat16; float32 holds every bfloat16 value exactly
    torch.uint8: np.dtype("uint8"),
    torch.int8: np.dtype("int8"),
    torch.int16: np.dtype("int16"),
    torch.int32: np.dtype("int32"),
    torch.int64: np.dtype("int64"),
    torch.bool: np.dtype("bool"),
}
_TORCH_DTYPE_BY_NAME = {str(dt).removeprefix("torch."): dt for dt in _STORABLE}


class CacheWarning(UserWarning):
    """A problem of the embedding cache: a foreign or damaged store, a corrupt entry, a failed write."""


class _Corrupt(Exception):
    """An entry of our store that must not be used; the message says why."""


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


#: the attributes of an entry that decide what a lookup returns; all are covered by its checksum
_CHECKED_ATTRS = ("key", "geometry", "dtype", "shape", "torch_dtype", "extras")


def _checksum(array: np.ndarray, attrs: dict[str, Any] | None = None) -> str:
    """BLAKE2b-128 of an array's C-order bytes and, for an entry, of its deciding attributes (canonical JSON)."""
    contiguous = np.asarray(array, order="C")
    digest = hashlib.blake2b(contiguous.reshape(-1).view(np.uint8), digest_size=16)
    if attrs is None:
        return digest.hexdigest()
    checked = {name: attrs.get(name) for name in _CHECKED_ATTRS}
    digest.update(json.dumps(checked, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def _on_device(embedding: ImageEmbedding, device: torch.device | str | None) -> ImageEmbedding:
    """``embedding`` itself, or a copy whose features are on ``device`` when they are elsewhere."""
    if device is None:
        return embedding
    return embedding.to(device)


#: the names an embedding's extras may have in the store (zarr array names ``extra_<name>``)
_EXTRA_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _storable_array(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as the C-order numpy array the store keeps (bfloat16 as float32, exactly)."""
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.to(torch.float32)
    return np.asarray(tensor.cpu().numpy(), order="C")


def _read_extra(group: Any, name: str, meta: Any) -> torch.Tensor:
    """One verified extra tensor of a stored entry; raises :class:`_Corrupt` when it is not sound."""
    try:
        shape = tuple(int(n) for n in meta["shape"])
        dtype = np.dtype(meta["dtype"])
        torch_dtype = _TORCH_DTYPE_BY_NAME[meta["torch_dtype"]]
        expected = meta["checksum"]
    except (KeyError, TypeError, ValueError) as exc:
        raise _Corrupt(f"bad attributes of extra {name!r}: {type(exc).__name__}: {exc}") from exc
    node = group.get(f"extra_{name}") if _EXTRA_NAME.fullmatch(str(name)) else None
    if not isinstance(node, zarr.Array):
        raise _Corrupt(f"no array for extra {name!r}")
    data = np.asarray(node[...])
    if data.shape != shape or data.dtype != dtype or _STORABLE.get(torch_dtype) != dtype:
        raise _Corrupt(f"extra {name!r} is {data.dtype} {data.shape}, its attributes say {dtype} {shape}")
    if _checksum(data) != expected:
        raise _Corrupt(f"checksum mismatch in extra {name!r}")
    tensor = torch.from_numpy(np.array(data, order="C"))
    return tensor if tensor.dtype == torch_dtype else tensor.to(torch_dtype)


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """One chunk in all, or one chunk per leading index for arrays of four or more dimensions."""
    chunks = shape if len(shape) < 4 else (1, *shape[1:])
    return tuple(max(1, int(n)) for n in chunks)


def _remove_path(path: Path) -> None:
    """Delete one entry or staging directory of our store (a link is unlinked, never followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


class EmbeddingCache:
    """Image embeddings by key: an LRU in memory bounded by ``max_bytes``, backed by an optional zarr store.

    Parameters
    ----------
    max_bytes:
        Bound on the summed ``nbytes`` of the embeddings kept in memory (on whatever device they live). An embedding
        larger than this is not kept in memory, but still written to the store.
    store:
        A directory for the on-disk zarr store (see the module docstring for its layout), or ``None`` for memory only.
        A missing path is created; a path that holds something else is reported and never touched.
    on_problem:
        Called with a human-readable message for every problem; by default ``warnings.warn(message, CacheWarning)``.
        It is never called while the cache holds a lock, so it may use the cache.

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
        self._io_lock = threading.RLock()  # serialises every access to the store
        self._memory: OrderedDict[str, ImageEmbedding] = OrderedDict()
        self._memory_bytes = 0
        self._flights: dict[str, _Flight] = {}
        self._counts = {f.name: 0 for f in fields(CacheStats)}
        self._reported_key_names = False
        self._store_path: Path | None = None
        self._store_usable = False
        self._sources: tuple[EmbeddingSource, ...] = ()
        if store is not None:
            self._store_path = Path(os.fspath(store)).expanduser().absolute()
            problem = self._open_store(self._store_path)
            if problem is not None:
                self._report(problem)

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
        return self._store_usable

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
        self._write(embedding)

    def get_or_compute(
        self,
        key: str,
        compute: Callable[[], tuple[torch.Tensor, ImageGeometry]],
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
        if not self._disk_key(key):
            return
        problem = None
        with self._io_lock:
            path = self._entry_path(key)
            try:
                if os.path.lexists(path):
                    _remove_path(path)
            except OSError as exc:
                problem = f"could not delete embedding {key} from {self._store_path}: {exc}"
        if problem is not None:
            self._report(problem)

    def clear(self, memory_only: bool = True) -> None:
        """Forget everything in memory; with ``memory_only=False`` also delete every entry of the store.

        Only entry and staging directories of our own store are deleted: the store itself, its format marker and
        anything else someone put in it stay, and a foreign store is never touched.
        """
        with self._lock:
            self._memory.clear()
            self._memory_bytes = 0
        if memory_only or not self._store_usable:
            return
        problems = []
        with self._io_lock:
            root = self._store_path
            assert root is not None
            try:
                children = list(os.scandir(root))
            except OSError as exc:
                children = []
                problems.append(f"could not list {root} to clear it: {exc}")
            for child in children:
                path = Path(child.path)
                ours = child.name.startswith(_STAGING_PREFIX) or (
                    _DISK_KEY.fullmatch(child.name) is not None and (path / "zarr.json").is_file()
                )
                if not ours:
                    continue
                try:
                    _remove_path(path)
                except OSError as exc:
                    problems.append(f"could not delete {path}: {exc}")
        for problem in problems:
            self._report(problem)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is in memory or has a complete entry in the store (not verified until it is read)."""
        if not isinstance(key, str):
            return False
        with self._lock:
            if key in self._memory:
                return True
        if not self._disk_key(key):
            return False
        with self._io_lock:
            path = self._entry_path(key)
            if not (path / "zarr.json").is_file():
                return False
            try:
                attrs = zarr.open_group(path, mode="r").attrs
                return attrs.get("key") == key and "checksum" in attrs
            except Exception:  # noqa: BLE001 - unreadable means not usable; get() reports and repairs it
                return False

    def __len__(self) -> int:
        """The number of embeddings kept in memory."""
        with self._lock:
            return len(self._memory)

    def __repr__(self) -> str:
        store = f"{str(self._store_path)!r}{'' if self._store_usable else ' (unused)'}" if self._store_path else None
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

    # ------------------------------------------------------------------ store

    def _report(self, message: str) -> None:
        self._report_fn(message)

    def _entry_path(self, key: str) -> Path:
        assert self._store_path is not None
        return self._store_path / key

    def _disk_key(self, key: str) -> bool:
        """Whether ``key`` goes to the store: the store is usable and the key is a safe directory name."""
        if not self._store_usable:
            return False
        if isinstance(key, str) and _DISK_KEY.fullmatch(key):
            return True
        with self._lock:
            report = not self._reported_key_names
            self._reported_key_names = True
        if report:
            self._report(
                f"embedding key {key!r} is not a lowercase name of [0-9a-z_-] (at most 128 characters); such "
                f"embeddings are kept in memory only and not written to {self._store_path}"
            )
        return False

    def _open_store(self, path: Path) -> str | None:
        """Adopt ``path`` as our store if it is ours or can be made ours; otherwise return why it is not used."""

        def foreign(reason: str) -> str:
            return (
                f"{path} is not a napari-focsam embedding store ({reason}); embeddings will be kept in memory only "
                "and nothing will be written there"
            )

        try:
            for _attempt in range(2):  # a second look after losing a race with another process creating it
                if not os.path.lexists(path):
                    try:
                        path.mkdir(parents=True)
                    except FileExistsError:
                        continue
                    if self._initialise(path):
                        break
                    continue
                if path.is_symlink() and not path.exists():
                    return foreign("a broken link")
                if not path.is_dir():
                    return foreign("a file")
                if not any(path.iterdir()):
                    if self._initialise(path):
                        break
                    continue
                if not (path / "zarr.json").is_file():
                    return foreign("a non-empty directory that is not a zarr group")
                try:
                    group = zarr.open_group(path, mode="r")
                except Exception as exc:  # noqa: BLE001 - any zarr node but a readable group is not ours
                    return foreign(f"not a readable zarr group: {type(exc).__name__}")
                if group.metadata.zarr_format != 3:
                    return foreign(f"a zarr v{group.metadata.zarr_format} group")
                attrs = dict(group.attrs)
                if attrs.get("format") != FORMAT:
                    return foreign("a zarr group without the napari-focsam format marker")
                version = attrs.get("format_version")
                if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                    return foreign(f"unknown format_version {version!r}")
                if version > FORMAT_VERSION:
                    return (
                        f"{path} is a napari-focsam embedding store of format_version {version}, newer than the "
                        f"{FORMAT_VERSION} that napari-focsam {__version__} reads (update napari-focsam to use it); "
                        "embeddings will be kept in memory only and nothing will be written there"
                    )
                break
            else:
                return foreign("it changed while it was being opened")
        except Exception as exc:  # noqa: BLE001 - an unusable store must not break the caller
            return (
                f"cannot use {path} as an embedding store ({type(exc).__name__}: {exc}); embeddings will be kept in "
                "memory only"
            )
        self._store_usable = True
        self._remove_stale_staging(path)
        return None

    def _ensure_root(self) -> str | None:
        """Make sure the store still carries its root marker before writing into it (called under the I/O lock).

        A store deleted while in use is created again with its marker (a write would otherwise re-create the folder
        without one, and every later session would refuse it as foreign); a path that became something else is
        given up (memory only). Returns why nothing may be written, or None.
        """
        assert self._store_path is not None
        path = self._store_path
        if (path / "zarr.json").is_file():
            return None
        problem = self._open_store(path)
        if problem is None:
            return None
        self._store_usable = False
        return problem

    @staticmethod
    def _initialise(path: Path) -> bool:
        """Write our root group into the empty directory ``path``; False when someone else wrote there first."""
        try:
            zarr.open_group(path, mode="w-", attributes={"format": FORMAT, "format_version": FORMAT_VERSION})
        except FileExistsError:
            return False
        return True

    @staticmethod
    def _remove_stale_staging(root: Path) -> None:
        """Delete staging directories that crashed writers left behind (ours by name, older than an hour)."""
        now = time.time()
        try:
            for child in os.scandir(root):
                if child.name.startswith(_STAGING_PREFIX) and now - child.stat(follow_symlinks=False).st_mtime > (
                    _STAGING_MAX_AGE_S
                ):
                    _remove_path(Path(child.path))
        except OSError:
            pass  # leftovers cost only disk space; never fail opening for them

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

    def _disk_lookup(self, key: str, device: torch.device | str | None) -> ImageEmbedding | None:
        """Read, verify and promote the store's entry for ``key``; a corrupt entry is reported, deleted, None."""
        if not self._disk_key(key):
            return None
        problem = None
        embedding = None
        with self._io_lock:
            path = self._entry_path(key)
            if not os.path.lexists(path):
                return None
            try:
                embedding = self._read_entry(path, key)
            except _Corrupt as exc:
                reason = str(exc)
            except Exception as exc:  # noqa: BLE001 - anything unreadable in our store is corrupt
                reason = f"unreadable: {type(exc).__name__}: {exc}"
            if embedding is None:
                problem = f"embedding {key} in {self._store_path} is corrupt ({reason}); recomputing"
                try:
                    _remove_path(path)
                except OSError as exc:
                    problem += f"; deleting it failed: {exc}"
        if embedding is None:
            self._count("corrupt")
            self._report(problem)
            return None
        embedding = _on_device(embedding, device)
        self._remember(embedding)
        self._count("hits_disk")
        return embedding

    @staticmethod
    def _read_entry(path: Path, key: str) -> ImageEmbedding:
        """The verified embedding stored at ``path``; raises :class:`_Corrupt` (or anything) when it is not sound."""
        if not (path / "zarr.json").is_file():
            raise _Corrupt("no zarr group metadata")
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
        if "checksum" not in attrs:
            raise _Corrupt("no checksum: its write was interrupted")
        if attrs.get("key") != key:
            raise _Corrupt(f"it is labelled {attrs.get('key')!r}")
        try:
            shape = tuple(int(n) for n in attrs["shape"])
            dtype = np.dtype(attrs["dtype"])
            torch_dtype = _TORCH_DTYPE_BY_NAME[attrs.get("torch_dtype", str(dtype))]
            geometry = ImageGeometry.from_attrs(attrs["geometry"])
        except (KeyError, TypeError, ValueError) as exc:
            raise _Corrupt(f"bad attributes: {type(exc).__name__}: {exc}") from exc
        if _STORABLE[torch_dtype] != dtype:
            raise _Corrupt(f"a {torch_dtype} tensor cannot be stored as {dtype}")
        node = group.get("features")
        if not isinstance(node, zarr.Array):
            raise _Corrupt("no features array")
        if tuple(node.shape) != shape or np.dtype(node.dtype) != dtype:
            raise _Corrupt(f"features are {node.dtype} {tuple(node.shape)}, its attributes say {dtype} {shape}")
        data = np.asarray(node[...])
        if data.shape != shape or data.dtype != dtype:
            raise _Corrupt(f"read {data.dtype} {data.shape}, expected {dtype} {shape}")
        if _checksum(data, attrs) != attrs["checksum"]:
            raise _Corrupt("checksum mismatch: its data or its attributes (geometry, dtype, shape, key) were changed")
        if not (data.flags.writeable and data.flags.c_contiguous):
            data = np.array(data, order="C")
        features = torch.from_numpy(data)
        if features.dtype != torch_dtype:
            features = features.to(torch_dtype)
        extras = {name: _read_extra(group, name, meta) for name, meta in dict(attrs.get("extras") or {}).items()}
        return ImageEmbedding(features=features, geometry=geometry, key=key, extras=extras)

    def _write(self, embedding: ImageEmbedding) -> None:
        """Write ``embedding`` to the store (if usable), unless an identical complete entry is already there."""
        key = embedding.key
        if not self._disk_key(key):
            return
        tensor = embedding.features.detach()
        if tensor.dtype not in _STORABLE:
            self._report(
                f"embedding {key} has dtype {tensor.dtype}, which the store does not hold; it is kept in memory only"
            )
            return
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.to(torch.float32)  # exact; read back as bfloat16 (attr torch_dtype)
        array = np.asarray(tensor.cpu().numpy(), order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
        extra_arrays: dict[str, np.ndarray] = {}
        extra_attrs: dict[str, Any] = {}
        for name, extra in embedding.extras.items():
            if extra.dtype not in _STORABLE or not _EXTRA_NAME.fullmatch(name):
                self._report(f"embedding {key} has an extra {name!r} ({extra.dtype}) that the store does not hold; "
                             "it is kept in memory only")
                return
            extra_arrays[name] = _storable_array(extra)
            extra_attrs[name] = {"dtype": str(extra_arrays[name].dtype),
                                 "shape": [int(n) for n in extra_arrays[name].shape],
                                 "torch_dtype": str(extra.dtype).removeprefix("torch."),
                                 "checksum": _checksum(extra_arrays[name])}
        attrs: dict[str, Any] = {
            "key": key,
            "geometry": embedding.geometry.to_attrs(),
            "dtype": str(array.dtype),
            "shape": [int(n) for n in array.shape],
            "torch_dtype": str(embedding.features.dtype).removeprefix("torch."),
            "package_version": __version__,
        }
        if extra_attrs:
            attrs["extras"] = extra_attrs
        checksum = _checksum(array, attrs)
        problem = None
        with self._io_lock:
            final = self._entry_path(key)
            if self._same_entry(final, attrs, checksum):
                return
            assert self._store_path is not None
            problem = self._ensure_root()
            if problem is not None:
                self._report(problem)
                return
            staging = self._store_path / f"{_STAGING_PREFIX}{key}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            try:
                group = zarr.open_group(staging, mode="w-", attributes=attrs)
                features = group.create_array(
                    "features",
                    shape=array.shape,
                    dtype=array.dtype,
                    chunks=_chunks(array.shape),
                    config={"write_empty_chunks": True},
                )
                features[...] = array
                for name, extra_array in extra_arrays.items():
                    node = group.create_array(f"extra_{name}", shape=extra_array.shape, dtype=extra_array.dtype,
                                              chunks=_chunks(extra_array.shape), config={"write_empty_chunks": True})
                    node[...] = extra_array
                group.attrs.update({"checksum": checksum})  # last: an interrupted entry has no checksum
                if os.path.lexists(final):
                    _remove_path(final)
                try:
                    os.rename(staging, final)
                except OSError:
                    if not os.path.lexists(final):
                        raise
                    # another process renamed its entry for this key in first: keep that one (verified on reading)
                    _remove_path(staging)
            except Exception as exc:  # noqa: BLE001 - a failed write must not break the caller
                problem = f"could not write embedding {key} to {self._store_path}: {type(exc).__name__}: {exc}"
                try:
                    if os.path.lexists(staging):
                        _remove_path(staging)
                except OSError:
                    pass
        if problem is not None:
            self._report(problem)
        else:
            self._count("disk_writes")

    @staticmethod
    def _same_entry(path: Path, attrs: dict[str, Any], checksum: str) -> bool:
        """Whether ``path`` already holds a complete entry with these attributes and checksum (data not re-read)."""
        if not (path / "zarr.json").is_file():
            return False
        try:
            existing = dict(zarr.open_group(path, mode="r").attrs)
        except Exception:  # noqa: BLE001 - unreadable: rewrite it
            return False
        if existing.get("checksum") != checksum:
            return False
        return all(existing.get(name) == value for name, value in attrs.items() if name != "package_version")
