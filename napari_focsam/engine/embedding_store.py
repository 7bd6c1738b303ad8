"""The embedding cache's on-disk store: one zarr v3 group of verified embedding entries, shared safely between
threads and processes. Used by :class:`~napari_focsam.engine.cache.EmbeddingCache`, which reports its problems.

On-disk layout (a zarr v3 group, one directory on the local file system)::

    <store>/                         zarr group; attrs {"format": "napari-focsam-embeddings", "format_version": 1}
        <key>/                       zarr group, one per embedding, named by its key (lowercase [0-9a-z_-]{1,128});
                                     see :mod:`napari_focsam.engine.embedding_entry` for its contents
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

Thread safety: one lock serialises all disk I/O of one store instance; several processes may share a store, since
entries appear atomically and every read is verified.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zarr

from .._version import __version__
from .embedding_entry import CorruptEntry, UnstorableEmbedding, entry_contents, read_entry, same_entry, write_group
from .storage import remove_path
from .types import ImageEmbedding

__all__ = ["FORMAT", "FORMAT_VERSION", "EmbeddingStore"]

FORMAT = "napari-focsam-embeddings"
FORMAT_VERSION = 1

#: names an entry directory may have; lowercase only, so keys never collide on case-insensitive file systems
_DISK_KEY = re.compile(r"[0-9a-z][0-9a-z_-]{0,127}")
_STAGING_PREFIX = ".staging-"
#: a staging directory older than this is a crash's leftover (a write takes well under a second)
_STAGING_MAX_AGE_S = 3600.0


def _initialise(path: Path) -> bool:
    """Write our root group into the empty directory ``path``; False when someone else wrote there first."""
    try:
        zarr.open_group(path, mode="w-", attributes={"format": FORMAT, "format_version": FORMAT_VERSION})
    except FileExistsError:
        return False
    return True


def _remove_stale_staging(root: Path) -> None:
    """Delete staging directories that crashed writers left behind (ours by name, older than an hour)."""
    now = time.time()
    try:
        for child in os.scandir(root):
            if child.name.startswith(_STAGING_PREFIX) and now - child.stat(follow_symlinks=False).st_mtime > (
                _STAGING_MAX_AGE_S
            ):
                remove_path(Path(child.path))
    except OSError:
        pass  # leftovers cost only disk space; never fail opening for them


class EmbeddingStore:
    """The zarr directory ``path`` as a store of verified embeddings (see the module docstring).

    Opening it never raises: a path that is not ours, or cannot be made ours, is passed with the reason to ``report``
    and the store is not :attr:`usable` (nothing is then read, written or deleted there). Every later problem is
    passed to ``report`` as well, never while a lock is held.
    """

    def __init__(self, path: Path, report: Callable[[str], None]) -> None:
        self._path = path
        self._report = report
        self._io_lock = threading.RLock()  # serialises every access to the directory
        self._flag_lock = threading.Lock()
        self._reported_key_names = False
        self._usable = False
        problem = self._open()
        if problem is not None:
            report(problem)

    @property
    def path(self) -> Path:
        """The store directory (absolute), usable or not."""
        return self._path

    @property
    def usable(self) -> bool:
        """Whether the store is ours and in use; ``False`` for a foreign or unopenable one."""
        return self._usable

    def accepts(self, key: str) -> bool:
        """Whether ``key`` goes to the store: the store is usable and the key is a safe directory name."""
        if not self._usable:
            return False
        if isinstance(key, str) and _DISK_KEY.fullmatch(key):
            return True
        with self._flag_lock:
            report = not self._reported_key_names
            self._reported_key_names = True
        if report:
            self._report(
                f"embedding key {key!r} is not a lowercase name of [0-9a-z_-] (at most 128 characters); such "
                f"embeddings are kept in memory only and not written to {self._path}"
            )
        return False

    def read(self, key: str) -> tuple[ImageEmbedding | None, str | None]:
        """The verified entry of ``key`` (or None) and, for a corrupt entry (then deleted), why it was refused."""
        if not self.accepts(key):
            return None, None
        problem = None
        embedding = None
        with self._io_lock:
            path = self._path / key
            if not os.path.lexists(path):
                return None, None
            try:
                embedding = read_entry(path, key)
            except CorruptEntry as exc:
                reason = str(exc)
            except Exception as exc:  # noqa: BLE001 - anything unreadable in our store is corrupt
                reason = f"unreadable: {type(exc).__name__}: {exc}"
            if embedding is None:
                problem = f"embedding {key} in {self._path} is corrupt ({reason}); recomputing"
                try:
                    remove_path(path)
                except OSError as exc:
                    problem += f"; deleting it failed: {exc}"
        return embedding, problem

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` has a complete entry (not verified until it is read)."""
        if not isinstance(key, str) or not self.accepts(key):
            return False
        with self._io_lock:
            path = self._path / key
            if not (path / "zarr.json").is_file():
                return False
            try:
                attrs = zarr.open_group(path, mode="r").attrs
                return attrs.get("key") == key and "checksum" in attrs
            except Exception:  # noqa: BLE001 - unreadable means not usable; read() reports and repairs it
                return False

    def discard(self, key: str) -> None:
        """Delete the entry of ``key``, if there is one."""
        if not self.accepts(key):
            return
        problem = None
        with self._io_lock:
            path = self._path / key
            try:
                if os.path.lexists(path):
                    remove_path(path)
            except OSError as exc:
                problem = f"could not delete embedding {key} from {self._path}: {exc}"
        if problem is not None:
            self._report(problem)

    def clear(self) -> None:
        """Delete every entry and staging directory; the store, its marker and anything else in it stay."""
        if not self._usable:
            return
        problems = []
        with self._io_lock:
            root = self._path
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
                    remove_path(path)
                except OSError as exc:
                    problems.append(f"could not delete {path}: {exc}")
        for problem in problems:
            self._report(problem)

    def write(self, embedding: ImageEmbedding) -> bool:
        """Write ``embedding`` (if the store is usable), unless an identical complete entry is already there; whether
        a new entry was written."""
        key = embedding.key
        if not self.accepts(key):
            return False
        try:
            arrays, attrs, checksum = entry_contents(embedding)
        except UnstorableEmbedding as exc:
            self._report(str(exc))
            return False
        with self._io_lock:
            final = self._path / key
            if same_entry(final, attrs, checksum):
                return False
            problem = self._ensure_root()
            if problem is None:
                problem = self._write_entry(final, arrays, attrs, checksum)
        if problem is not None:
            self._report(problem)
            return False
        return True

    def _write_entry(self, final: Path, arrays: dict[str, Any], attrs: dict[str, Any], checksum: str) -> str | None:
        """Write an entry into a staging directory, its checksum last, and rename it to ``final`` (under the I/O
        lock); why it failed, or None."""
        key = attrs["key"]
        staging = self._path / f"{_STAGING_PREFIX}{key}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            write_group(staging, arrays, attrs, checksum)  # its checksum last: an interrupted entry has none
            if os.path.lexists(final):
                remove_path(final)
            try:
                os.rename(staging, final)
            except OSError:
                if not os.path.lexists(final):
                    raise
                # another process renamed its entry for this key in first: keep that one (verified on reading)
                remove_path(staging)
        except Exception as exc:  # noqa: BLE001 - a failed write must not break the caller
            try:
                if os.path.lexists(staging):
                    remove_path(staging)
            except OSError:
                pass
            return f"could not write embedding {key} to {self._path}: {type(exc).__name__}: {exc}"
        return None

    def _ensure_root(self) -> str | None:
        """Make sure the store still carries its root marker before writing into it (called under the I/O lock).

        A store deleted while in use is created again with its marker (a write would otherwise re-create the folder
        without one, and every later session would refuse it as foreign); a path that became something else is
        given up (memory only). Returns why nothing may be written, or None.
        """
        if (self._path / "zarr.json").is_file():
            return None
        problem = self._open()
        if problem is None:
            return None
        self._usable = False
        return problem

    def _open(self) -> str | None:
        """Adopt the path as our store if it is ours or can be made ours; otherwise return why it is not used."""
        path = self._path

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
                    if _initialise(path):
                        break
                    continue
                if path.is_symlink() and not path.exists():
                    return foreign("a broken link")
                if not path.is_dir():
                    return foreign("a file")
                if not any(path.iterdir()):
                    if _initialise(path):
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
        self._usable = True
        _remove_stale_staging(path)
        return None
