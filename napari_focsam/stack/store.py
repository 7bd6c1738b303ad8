"""The stack embedding store: the embedding of every slice of a stack for one model, in one zarr group.

Layout (zarr v3, one directory)::

    <store>/            attrs: format "napari-focsam-stack", format_version, store_id (a fresh uuid per store),
                               spec (model name and fingerprint, preprocessing, stack shape; see StoreSpec),
                               geometry (ImageGeometry of every slice), feature_shape, feature_dtype, torch_dtype,
                               complete (every slice written and verified), package_version,
                               attrs_checksum (BLAKE2b-128 of the attributes that decide a result: a store whose
                               model, geometry, shapes or dtypes were edited is refused as damaged)
        features/       (N, *feature_shape) array, one chunk per slice
        extra_<name>/   only for models with per-image extras (HQ-SAM's hq_features, PA-SAM's pa_guide; attrs
                        ``extras``: {name: {shape, dtype, torch_dtype}}): (N, *shape), one chunk per slice
        meta/           (N, 32) uint8, one chunk per slice: the slice's embedding key (16 bytes) then the BLAKE2b-128
                        checksum of its features (16 bytes; of its features then its extras in name order when the
                        store has extras); all zeros = not written yet

The key of a slice is exactly :meth:`ModelManager.key_for` of the prepared slice (data signature + model fingerprint
with its preprocessing), so :meth:`StackStore.lookup` can serve ``ModelManager.embed(slice)`` through the embedding
cache's sources (see :func:`napari_focsam.stack.attach_store`). A slice is written features first, then its meta row
(each chunk is replaced atomically by zarr), so a run killed at any point leaves every slice either complete and
verifiable, or recognisably missing / damaged (checksum mismatch): a new run resumes, it never trusts a damaged slice.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from .._version import __version__
from ..engine.storage import DIGEST_SIZE, content_digest, storable_array, tensor_from_array, torch_dtype_named
from ..engine.types import ImageEmbedding, ImageGeometry

__all__ = ["SliceStatus", "StackStore", "StackStoreWarning", "StoreError", "StoreMismatchError", "StoreSpec"]

FORMAT = "napari-focsam-stack"
FORMAT_VERSION = 1
_DIGEST = DIGEST_SIZE
#: while a store is incomplete, a lookup miss re-reads its slice keys at most this often (seconds)
_REINDEX_S = 2.0


class StoreError(RuntimeError):
    """A path that is not a usable stack store (foreign, unreadable, newer format); it is never modified."""


class StoreMismatchError(StoreError):
    """A stack store made for another model, preprocessing, stack shape or other data: reported, never used."""


class StackStoreWarning(UserWarning):
    """A damaged slice in a stack store (it is recomputed, or computed again by the cache when looked up)."""


class SliceStatus:
    """What :meth:`StackStore.check_slice` finds for one slice."""

    OK = "ok"  #: written, key as expected, checksum verified
    MISSING = "missing"  #: not written (yet)
    OTHER = "other"  #: written for another key: other pixels or preprocessing
    CORRUPT = "corrupt"  #: written but unreadable or failing its checksum


@dataclass(frozen=True)
class StoreSpec:
    """What a store was made for; a store is used only for exactly the same spec."""

    model: str
    fingerprint: str
    display_name: str
    rgb: bool
    contrast_limits: tuple[float, float] | None
    leading_shape: tuple[int, ...]
    slice_shape: tuple[int, ...]

    def to_attrs(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "fingerprint": self.fingerprint,
            "display_name": self.display_name,
            "rgb": self.rgb,
            "contrast_limits": None if self.contrast_limits is None else [float(v) for v in self.contrast_limits],
            "leading_shape": list(self.leading_shape),
            "slice_shape": list(self.slice_shape),
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StoreSpec:
        limits = attrs.get("contrast_limits")
        return cls(
            model=str(attrs["model"]),
            fingerprint=str(attrs["fingerprint"]),
            display_name=str(attrs.get("display_name", attrs["model"])),
            rgb=bool(attrs["rgb"]),
            contrast_limits=None if limits is None else (float(limits[0]), float(limits[1])),
            leading_shape=tuple(int(n) for n in attrs["leading_shape"]),
            slice_shape=tuple(int(n) for n in attrs["slice_shape"]),
        )

    def differences(self, other: StoreSpec) -> list[str]:
        """Human-readable differences of ``other`` (what a run wants) from this spec (what the store holds)."""
        out = []
        if self.fingerprint != other.fingerprint:
            out.append(f"model: the store holds {self.display_name} [{self.fingerprint}], "
                       f"this run uses {other.display_name} [{other.fingerprint}]")
        if self.rgb != other.rgb:
            out.append(f"colour: the store was made with rgb={self.rgb}, this run uses rgb={other.rgb}")
        if self.contrast_limits != other.contrast_limits:
            out.append(f"preprocessing: the store was made with contrast limits {self.contrast_limits}, "
                       f"this run uses {other.contrast_limits}")
        if (self.leading_shape, self.slice_shape) != (other.leading_shape, other.slice_shape):
            out.append(f"stack shape: the store is for {self.leading_shape + self.slice_shape}, "
                       f"this stack is {other.leading_shape + other.slice_shape}")
        return out


def checksum(array: np.ndarray, *more: np.ndarray) -> bytes:
    """BLAKE2b-128 digest of arrays' C-order bytes, one after the other (one array: its bytes' digest)."""
    return bytes(content_digest((array, *more)).digest())


#: the root attributes that decide what a slice's lookup returns; covered by ``attrs_checksum``
_CHECKED_ATTRS = ("format_version", "store_id", "spec", "geometry", "feature_shape", "feature_dtype", "torch_dtype")


def attrs_checksum(attrs: dict[str, Any]) -> str:
    """BLAKE2b-128 hex digest of the deciding root attributes (canonical JSON)."""
    return str(content_digest(checked={name: attrs.get(name) for name in _CHECKED_ATTRS}).hexdigest())


class StackStore:
    """One stack's embeddings for one model; see the module docstring. Thread-safe; several processes may write
    different slices at the same time (each slice is its own chunk)."""

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self._group = group
        attrs: dict[str, Any] = dict(group.attrs)
        self.store_id: str = str(attrs["store_id"])
        self.spec = StoreSpec.from_attrs(attrs["spec"])
        self.geometry = ImageGeometry.from_attrs(attrs["geometry"])
        self.feature_shape = tuple(int(n) for n in attrs["feature_shape"])
        self.feature_dtype = np.dtype(attrs["feature_dtype"])
        self.torch_dtype = torch_dtype_named(str(attrs["torch_dtype"]))
        self._features = _array(group, "features")
        self._meta = _array(group, "meta")
        #: per-image extra tensors (HQ-SAM, PA-SAM): name -> (shape, numpy dtype, torch dtype, array)
        self._extras = {
            str(name): (tuple(int(n) for n in meta["shape"]), np.dtype(meta["dtype"]),
                        torch_dtype_named(str(meta["torch_dtype"])), _array(group, f"extra_{name}"))
            for name, meta in sorted(dict(attrs.get("extras") or {}).items())
        }
        self._index: dict[bytes, int] | None = None
        self._indexed_at = 0.0
        self._known_complete = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ opening
    @staticmethod
    def is_store(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` holds a stack store (of any version)."""
        try:
            return zarr.open_group(Path(path), mode="r").attrs.get("format") == FORMAT
        except Exception:  # noqa: BLE001
            return False

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, writable: bool = False) -> StackStore:
        """Open an existing store; raises :class:`StoreError` for anything that is not one (left untouched)."""
        path = Path(os.fspath(path)).expanduser().absolute()
        if not path.exists():
            raise StoreError(f"{path} does not exist")
        try:
            group = zarr.open_group(path, mode="r+" if writable else "r")
            attrs = dict(group.attrs)
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"{path} is not a napari-focsam stack store (not a zarr group: {exc})") from exc
        if attrs.get("format") != FORMAT:
            raise StoreError(f"{path} is not a napari-focsam stack store (no '{FORMAT}' format marker); "
                             "it is left untouched")
        version = attrs.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise StoreError(f"{path} is a stack store of format_version {version!r}, which napari-focsam "
                             f"{__version__} cannot read (it reads {FORMAT_VERSION})")
        if attrs.get("attrs_checksum") != attrs_checksum(attrs):
            raise StoreError(f"{path} is a damaged stack store: its attributes (model, geometry, shapes, dtypes) were "
                             "changed after it was written, so none of its slices can be trusted; remove it or embed "
                             "again with --overwrite")
        try:
            return cls(path, group)
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"{path} is a damaged stack store ({type(exc).__name__}: {exc})") from exc

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        spec: StoreSpec,
        geometry: ImageGeometry,
        features: torch.Tensor,
        *,
        extras: dict[str, torch.Tensor] | None = None,
        overwrite: bool = False,
    ) -> StackStore:
        """Make a new store for ``spec``; ``features`` and ``extras`` (one slice's embedding) give shapes and dtypes.

        An existing stack store is replaced only with ``overwrite``; any other existing, non-empty path is refused.
        """
        path = Path(os.fspath(path)).expanduser().absolute()
        if path.exists() and not (path.is_dir() and not any(path.iterdir())):
            if not cls.is_store(path):
                raise StoreError(f"{path} exists and is not a napari-focsam stack store; it is left untouched "
                                 "(choose another path)")
            if not overwrite:
                raise StoreError(f"{path} already holds a stack store (use overwrite to replace it)")
            shutil.rmtree(path)
        array = storable_array(features)
        attrs: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "store_id": uuid.uuid4().hex,
            "spec": spec.to_attrs(),
            "geometry": geometry.to_attrs(),
            "feature_shape": list(array.shape),
            "feature_dtype": str(array.dtype),
            "torch_dtype": str(features.dtype).removeprefix("torch."),
            "complete": False,
            "package_version": __version__,
        }
        attrs["attrs_checksum"] = attrs_checksum(attrs)
        n = int(np.prod(spec.leading_shape)) if spec.leading_shape else 1
        group = zarr.open_group(path, mode="w")
        group.create_array("features", shape=(n, *array.shape), dtype=array.dtype, chunks=(1, *array.shape),
                           fill_value=0)
        group.create_array("meta", shape=(n, 2 * _DIGEST), dtype="uint8", chunks=(1, 2 * _DIGEST), fill_value=0)
        if extras:
            described = {}
            for name, tensor in sorted(extras.items()):
                extra = storable_array(tensor)
                group.create_array(f"extra_{name}", shape=(n, *extra.shape), dtype=extra.dtype,
                                   chunks=(1, *extra.shape), fill_value=0)
                described[name] = {"shape": list(extra.shape), "dtype": str(extra.dtype),
                                   "torch_dtype": str(tensor.dtype).removeprefix("torch.")}
            attrs["extras"] = described
        group.attrs.update(attrs)  # last: a store without its marker is not a store
        return cls(path, group)

    # ------------------------------------------------------------------ state
    @property
    def n_slices(self) -> int:
        return int(self._meta.shape[0])

    @property
    def complete(self) -> bool:
        return bool(self._group.attrs.get("complete", False))

    def set_complete(self, value: bool) -> None:
        self._group.attrs.update({"complete": bool(value)})

    def keys(self) -> list[str | None]:
        """The embedding key written for every slice (``None`` where nothing is written); reads only ``meta``."""
        meta = np.asarray(self._meta[...])
        return [bytes(row[:_DIGEST]).hex() if row.any() else None for row in meta]

    def _meta_row(self, i: int) -> np.ndarray | None:
        try:
            row = np.asarray(self._meta[int(i)])
        except Exception:  # noqa: BLE001 - a damaged chunk reads as "not written"
            return None
        return row if row.any() else None

    # ------------------------------------------------------------------ slices
    def write_slice(self, i: int, key: str, features: torch.Tensor,
                    extras: dict[str, torch.Tensor] | None = None) -> None:
        """Write slice ``i``'s features (and extras), then its meta row (key + checksum); a previous row is cleared
        first."""
        array = storable_array(features)
        if array.shape != self.feature_shape or array.dtype != self.feature_dtype:
            raise ValueError(f"slice {i}: features {array.dtype} {array.shape} do not match the store's "
                             f"{self.feature_dtype} {self.feature_shape}")
        extras = dict(extras or {})
        if sorted(extras) != list(self._extras):
            raise ValueError(f"slice {i}: extras {sorted(extras)} do not match the store's {list(self._extras)}")
        extra_arrays = []
        for name, (shape, dtype, _, _) in self._extras.items():
            extra = storable_array(extras[name])
            if extra.shape != shape or extra.dtype != dtype:
                raise ValueError(f"slice {i}: extra {name!r} {extra.dtype} {extra.shape} does not match the store's "
                                 f"{dtype} {shape}")
            extra_arrays.append(extra)
        key_bytes = bytes.fromhex(key)
        if len(key_bytes) != _DIGEST:
            raise ValueError(f"not an embedding key: {key!r}")
        if self._meta_row(i) is not None:
            self._meta[int(i)] = np.zeros(2 * _DIGEST, np.uint8)
        self._features[int(i)] = array
        for (_, _, _, node), extra in zip(self._extras.values(), extra_arrays, strict=True):
            node[int(i)] = extra
        self._meta[int(i)] = np.frombuffer(key_bytes + checksum(array, *extra_arrays), np.uint8)
        with self._lock:
            if self._index is not None:
                self._index[key_bytes] = int(i)

    def read_slice(self, i: int) -> torch.Tensor:
        """Slice ``i``'s features, verified against their checksum; raises :class:`StoreError` if damaged/missing."""
        return self.read_slice_extras(i)[0]

    def read_slice_extras(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Slice ``i``'s features and extras, verified together against their checksum (see :meth:`read_slice`)."""
        row = self._meta_row(i)
        if row is None:
            raise StoreError(f"slice {i} of {self.path} is not written")
        try:
            data = np.asarray(self._features[int(i)])
            extras = {name: np.asarray(node[int(i)]) for name, (_, _, _, node) in self._extras.items()}
        except Exception as exc:  # noqa: BLE001
            raise StoreError(f"slice {i} of {self.path} is unreadable: {type(exc).__name__}: {exc}") from exc
        shapes_ok = all(extras[n].shape == shape for n, (shape, *_) in self._extras.items())
        if data.shape != self.feature_shape or not shapes_ok or checksum(data, *extras.values()) != bytes(
                row[_DIGEST:]):
            raise StoreError(f"slice {i} of {self.path} fails its checksum")
        features = tensor_from_array(data, self.torch_dtype)
        tensors = {name: tensor_from_array(extras[name], torch_dtype)
                   for name, (_, _, torch_dtype, _) in self._extras.items()}
        return features, tensors

    def check_slice(self, i: int, key: str, *, verify_features: bool = True) -> str:
        """Whether slice ``i`` holds the embedding of ``key``: one of the :class:`SliceStatus` values."""
        row = self._meta_row(i)
        if row is None:
            return SliceStatus.MISSING
        if bytes(row[:_DIGEST]).hex() != key:
            return SliceStatus.OTHER
        if verify_features:
            try:
                self.read_slice(i)
            except StoreError:
                return SliceStatus.CORRUPT
        return SliceStatus.OK

    def _complete_cached(self) -> bool:
        """Whether the store is complete (re-read from disk at most every few seconds; a complete store is final)."""
        if self._known_complete:
            return True
        self._known_complete = bool(zarr.open_group(self.path, mode="r").attrs.get("complete", False))
        return self._known_complete

    # ------------------------------------------------------------------ the embedding cache's source protocol
    def lookup(self, key: str) -> ImageEmbedding | None:
        """The verified embedding stored under ``key``, or None (a damaged slice is reported and skipped)."""
        try:
            key_bytes = bytes.fromhex(key)
        except (TypeError, ValueError):
            return None
        with self._lock:
            stale = self._index is None or (key_bytes not in self._index and not self._complete_cached()
                                            and time.monotonic() - self._indexed_at > _REINDEX_S)
            index = self._index
            if index is None or stale:  # first use, or a precompute may have written more slices since
                index = self._index = {bytes.fromhex(k): i for i, k in enumerate(self.keys()) if k is not None}
                self._indexed_at = time.monotonic()
            i = index.get(key_bytes)
        if i is None:
            return None
        try:
            features, extras = self.read_slice_extras(i)
        except StoreError as exc:
            warnings.warn(f"{exc}; it is computed again instead", StackStoreWarning, stacklevel=2)
            with self._lock:
                if self._index is not None:
                    self._index.pop(key_bytes, None)
            return None
        return ImageEmbedding(features=features, geometry=self.geometry, key=key, extras=extras)

    def __repr__(self) -> str:
        return (f"StackStore({str(self.path)!r}, {self.spec.display_name}, {self.n_slices} slices, "
                f"{'complete' if self.complete else 'incomplete'})")


def _array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of a store's group (a group there is a damaged store)."""
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise StoreError(f"'{name}' is not an array")
    return node
