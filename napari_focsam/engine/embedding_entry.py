"""One embedding as an entry of the embedding cache's on-disk store (:mod:`napari_focsam.engine.embedding_store`):
its arrays, attributes and checksum, written into a zarr group and read back verified.

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
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from .._version import __version__
from .storage import STORABLE, content_digest, storable_array, tensor_from_array, torch_dtype_named
from .types import ImageEmbedding, ImageGeometry

__all__ = ["CorruptEntry", "UnstorableEmbedding", "entry_contents", "read_entry", "same_entry", "write_group"]

#: the names an embedding's extras may have in the store (zarr array names ``extra_<name>``)
_EXTRA_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: the attributes of an entry that decide what a lookup returns; all are covered by its checksum
_CHECKED_ATTRS = ("key", "geometry", "dtype", "shape", "torch_dtype", "extras")


class CorruptEntry(Exception):
    """An entry of our store that must not be used; the message says why."""


def _checksum(array: np.ndarray, attrs: dict[str, Any] | None = None) -> str:
    """BLAKE2b-128 of an array's C-order bytes and, for an entry, of its deciding attributes (canonical JSON)."""
    checked = None if attrs is None else {name: attrs.get(name) for name in _CHECKED_ATTRS}
    return str(content_digest([array], checked).hexdigest())


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """One chunk in all, or one chunk per leading index for arrays of four or more dimensions."""
    chunks = shape if len(shape) < 4 else (1, *shape[1:])
    return tuple(max(1, int(n)) for n in chunks)


def _read_extra(group: Any, name: str, meta: Any) -> torch.Tensor:
    """One verified extra tensor of a stored entry; raises :class:`CorruptEntry` when it is not sound."""
    try:
        shape = tuple(int(n) for n in meta["shape"])
        dtype = np.dtype(meta["dtype"])
        torch_dtype = torch_dtype_named(meta["torch_dtype"])
        expected = meta["checksum"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptEntry(f"bad attributes of extra {name!r}: {type(exc).__name__}: {exc}") from exc
    node = group.get(f"extra_{name}") if _EXTRA_NAME.fullmatch(str(name)) else None
    if not isinstance(node, zarr.Array):
        raise CorruptEntry(f"no array for extra {name!r}")
    data = np.asarray(node[...])
    if data.shape != shape or data.dtype != dtype or STORABLE.get(torch_dtype) != dtype:
        raise CorruptEntry(f"extra {name!r} is {data.dtype} {data.shape}, its attributes say {dtype} {shape}")
    if _checksum(data) != expected:
        raise CorruptEntry(f"checksum mismatch in extra {name!r}")
    return tensor_from_array(data, torch_dtype)


def read_entry(path: Path, key: str) -> ImageEmbedding:
    """The verified embedding stored at ``path``; raises :class:`CorruptEntry` (or anything) when it is not sound."""
    if not (path / "zarr.json").is_file():
        raise CorruptEntry("no zarr group metadata")
    group = zarr.open_group(path, mode="r")
    attrs: dict[str, Any] = dict(group.attrs)
    if "checksum" not in attrs:
        raise CorruptEntry("no checksum: its write was interrupted")
    if attrs.get("key") != key:
        raise CorruptEntry(f"it is labelled {attrs.get('key')!r}")
    try:
        shape = tuple(int(n) for n in attrs["shape"])
        dtype = np.dtype(attrs["dtype"])
        torch_dtype = torch_dtype_named(attrs.get("torch_dtype", str(dtype)))
        geometry = ImageGeometry.from_attrs(attrs["geometry"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptEntry(f"bad attributes: {type(exc).__name__}: {exc}") from exc
    if STORABLE[torch_dtype] != dtype:
        raise CorruptEntry(f"a {torch_dtype} tensor cannot be stored as {dtype}")
    node = group.get("features")
    if not isinstance(node, zarr.Array):
        raise CorruptEntry("no features array")
    if tuple(node.shape) != shape or np.dtype(node.dtype) != dtype:
        raise CorruptEntry(f"features are {node.dtype} {tuple(node.shape)}, its attributes say {dtype} {shape}")
    data = np.asarray(node[...])
    if data.shape != shape or data.dtype != dtype:
        raise CorruptEntry(f"read {data.dtype} {data.shape}, expected {dtype} {shape}")
    if _checksum(data, attrs) != attrs["checksum"]:
        raise CorruptEntry("checksum mismatch: its data or its attributes (geometry, dtype, shape, key) were changed")
    features = tensor_from_array(data, torch_dtype)
    extras = {name: _read_extra(group, name, meta) for name, meta in dict(attrs.get("extras") or {}).items()}
    return ImageEmbedding(features=features, geometry=geometry, key=key, extras=extras)


def same_entry(path: Path, attrs: dict[str, Any], checksum: str) -> bool:
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


class UnstorableEmbedding(ValueError):
    """An embedding with a tensor the store cannot hold (kept in memory only); the message says which."""


def entry_contents(embedding: ImageEmbedding) -> tuple[dict[str, np.ndarray], dict[str, Any], str]:
    """The arrays (``features``, ``extra_<name>``), the attributes and the checksum of the entry of ``embedding``;
    raises :class:`UnstorableEmbedding` when a tensor cannot be stored."""
    key = embedding.key
    if embedding.features.dtype not in STORABLE:
        raise UnstorableEmbedding(f"embedding {key} has dtype {embedding.features.dtype}, which the store does not "
                                  "hold; it is kept in memory only")
    array = storable_array(embedding.features)  # bfloat16 as float32, exactly (attr torch_dtype)
    arrays = {"features": array}
    extra_attrs: dict[str, Any] = {}
    for name, extra in embedding.extras.items():
        if extra.dtype not in STORABLE or not _EXTRA_NAME.fullmatch(name):
            raise UnstorableEmbedding(f"embedding {key} has an extra {name!r} ({extra.dtype}) that the store does not "
                                      "hold; it is kept in memory only")
        stored = arrays[f"extra_{name}"] = storable_array(extra)
        extra_attrs[name] = {"dtype": str(stored.dtype), "shape": [int(n) for n in stored.shape],
                             "torch_dtype": str(extra.dtype).removeprefix("torch."), "checksum": _checksum(stored)}
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
    return arrays, attrs, _checksum(array, attrs)


def write_group(path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, Any], checksum: str) -> None:
    """Write an entry as a new zarr group at ``path``, its ``checksum`` attribute last (an interrupted entry has
    none)."""
    group = zarr.open_group(path, mode="w-", attributes=attrs)
    for name, array in arrays.items():
        node = group.create_array(name, shape=array.shape, dtype=array.dtype, chunks=_chunks(array.shape),
                                  config={"write_empty_chunks": True})
        node[...] = array
    group.attrs.update({"checksum": checksum})
