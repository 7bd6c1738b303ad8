"""File hashes: SHA-256, and xxh128 where a model's authors pin that (micro-sam), in pooch's ``"algorithm:hex"``
notation."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .checkpoint import CheckpointError

#: ``progress(done_bytes, total_bytes)``; ``total_bytes`` is None when unknown
ProgressCallback = Callable[[int, "int | None"], None]
_CHUNK = 1 << 20

#: the hash algorithms of pinned hashes (``"algorithm:hex"``, pooch's notation)
HASH_ALGORITHMS = ("sha256", "xxh128")


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def hash_file(path: str | os.PathLike, algorithm: str = "sha256", progress: ProgressCallback | None = None) -> str:
    """The lower-case hex digest (``"sha256"`` or ``"xxh128"``) of a file, read in 1 MiB chunks
    (``progress(done, total)`` after each)."""
    digest: _Digest
    if algorithm == "sha256":
        digest = hashlib.sha256()
    elif algorithm == "xxh128":
        import xxhash

        digest = xxhash.xxh128()
    else:
        raise ValueError(f"unsupported hash algorithm {algorithm!r} (one of {', '.join(HASH_ALGORITHMS)})")
    path = Path(path)
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike, progress: ProgressCallback | None = None) -> str:
    """The lower-case hex SHA-256 of a file (see :func:`hash_file`)."""
    return hash_file(path, "sha256", progress)


def qualified_hash(digest: str | None) -> str | None:
    """``"algorithm:hex"`` for a recorded digest (a bare hex digest is read as a SHA-256)."""
    if digest is None:
        return None
    return digest if ":" in digest else f"sha256:{digest}"


def check_hash(path: Path, expected: str, what: str = "the official file",
               progress: ProgressCallback | None = None) -> None:
    """Hash ``path`` with the algorithm of ``expected`` (``"algorithm:hex"``); raise CheckpointError on a mismatch
    (saying the file is corrupt or not ``what``)."""
    algorithm, _, value = expected.partition(":")
    actual = hash_file(path, algorithm, progress)
    if actual != value.lower():
        raise CheckpointError(f"{path} is corrupt or not {what}: its {algorithm} is {actual}, expected {value}")
