"""Stacks of 2D slices, read lazily one slice at a time: TIFF files, zarr arrays, ``.npy`` files, numpy or dask arrays.

A stack has *leading* axes (z; or t, z; any number) followed by the slice axes (y, x) or, for colour stacks,
(y, x, channel). Slices are numbered in C order over the leading axes (the *flat* index); for a (T, Z, Y, X) stack,
flat index ``t * Z + z``. Only the slice being read is held in memory, so a stack of any length can be processed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["StackInputError", "StackReader", "open_stack"]

TIFF_SUFFIXES = (".tif", ".tiff")


class StackInputError(ValueError):
    """The stack cannot be read: missing or unreadable file, unsupported format, shape or dtype."""


def _is_zarr_path(path: Path) -> bool:
    return path.suffix == ".zarr" or (path.is_dir() and any((path / n).is_file() for n in ("zarr.json", ".zarray",
                                                                                           ".zgroup")))


class StackReader:
    """Lazy access to the 2D slices of a stack (see the module docstring for the axes and the flat index).

    ``rgb``: whether the last axis holds colour channels; ``None`` guesses it: an array of four or more axes whose
    last axis has 3 or 4 entries is a colour stack, anything else is gray (pass ``rgb=True`` for one RGB image).
    Safe to read from several threads.
    """

    def __init__(self, array: Any, *, rgb: bool | None = None, source: str = "array", tiff: Any = None) -> None:
        shape = tuple(int(n) for n in array.shape)
        if rgb is None:
            rgb = len(shape) >= 4 and shape[-1] in (3, 4)
        spatial = 3 if rgb else 2
        if len(shape) < spatial:
            kind = "an RGB stack needs (..., Y, X, 3|4)" if rgb else "a stack needs at least (Y, X)"
            raise StackInputError(f"{source}: {kind}, got shape {shape}")
        if rgb and shape[-1] not in (3, 4):
            raise StackInputError(f"{source}: an RGB stack needs 3 or 4 channels on its last axis, got shape {shape}")
        dtype = np.dtype(array.dtype)
        if dtype.kind not in "biuf":
            raise StackInputError(f"{source}: unsupported pixel type {dtype} (need bool, integer or float pixels)")
        if 0 in shape:
            raise StackInputError(f"{source}: the stack is empty (shape {shape})")
        self.array = array
        self.rgb = bool(rgb)
        self.source = source
        self.dtype = dtype
        self.shape = shape
        self.leading_shape: tuple[int, ...] = shape[: len(shape) - spatial]
        self.slice_shape: tuple[int, ...] = shape[len(shape) - spatial:]
        self._tiff = tiff  # an open tifffile.TiffFile whose pages are the slices, or None
        self._lock = threading.Lock()

    @property
    def reads_pages(self) -> bool:
        """Whether the slices are read page by page from an open TIFF file (not from :attr:`array`)."""
        return self._tiff is not None

    # ------------------------------------------------------------------ geometry
    @property
    def n_slices(self) -> int:
        return prod(self.leading_shape)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of every slice."""
        return int(self.slice_shape[0]), int(self.slice_shape[1])

    def index(self, flat: int) -> tuple[int, ...]:
        """The leading index (e.g. (t, z)) of flat slice number ``flat``."""
        flat = int(flat)
        if not 0 <= flat < self.n_slices:
            raise IndexError(f"slice {flat} is outside the stack of {self.n_slices} slices")
        return tuple(int(i) for i in np.unravel_index(flat, self.leading_shape)) if self.leading_shape else ()

    def flat(self, index: int | tuple[int, ...]) -> int:
        """The flat slice number of a leading index (an int is taken as a flat number and range-checked)."""
        if isinstance(index, (int, np.integer)):
            self.index(int(index))
            return int(index)
        index = tuple(int(i) for i in index)
        if len(index) != len(self.leading_shape) or not all(0 <= i < n for i, n in zip(index, self.leading_shape)):
            raise IndexError(f"slice index {index} is outside the leading axes {self.leading_shape}")
        return int(np.ravel_multi_index(index, self.leading_shape)) if index else 0

    # ------------------------------------------------------------------ reading
    def read(self, flat: int) -> np.ndarray:
        """Slice number ``flat`` as a numpy array of shape :attr:`slice_shape` (only this slice is read)."""
        index = self.index(flat)
        if self._tiff is not None:
            with self._lock:
                data = self._tiff.series[0].pages[int(flat)].asarray()
            return np.asarray(data).reshape(self.slice_shape)
        out = self.array[index] if index else self.array[...]
        if hasattr(out, "compute"):
            out = out.compute(scheduler="synchronous")
        return np.asarray(out)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.n_slices):
            yield self.read(i)

    def __len__(self) -> int:
        return self.n_slices

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None

    def __enter__(self) -> StackReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "RGB " if self.rgb else ""
        return f"StackReader({self.source}: {self.n_slices} {kind}slices of {self.slice_shape} {self.dtype})"


def _open_tiff(path: Path, rgb: bool | None) -> StackReader:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
        series = tif.series[0]
        shape = tuple(int(n) for n in series.shape)
        dtype = series.dtype
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a TIFF we can read"
        raise StackInputError(f"cannot read {path} as a TIFF file: {type(exc).__name__}: {exc}") from exc
    guess = rgb if rgb is not None else (len(shape) >= 4 and shape[-1] in (3, 4)) or series.axes.endswith("S")
    spatial = 3 if guess else 2
    n_slices = prod(shape[: len(shape) - spatial]) if len(shape) >= spatial else 0
    pages = series.pages
    page_shape = tuple(int(n) for n in getattr(series.keyframe, "shape", ()))
    slice_shape = shape[len(shape) - spatial:]
    squeezed = tuple(n for n in page_shape if n != 1) == tuple(n for n in slice_shape if n != 1)
    if n_slices and len(pages) == n_slices and squeezed:
        return StackReader(_Shape(shape, dtype), rgb=guess, source=str(path), tiff=tif)
    # not one page per slice (tiles, a single multi-sample page, ...): memory-map it if possible, else read it all
    array: np.ndarray
    try:
        array = tifffile.memmap(path, mode="r")
    except Exception:  # noqa: BLE001 - compressed or not contiguous
        array = series.asarray()
    tif.close()
    return StackReader(array, rgb=guess, source=str(path))


class _Shape:
    """Shape and dtype of a TIFF series read page by page (never indexed itself)."""

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.ndim = len(shape)


def _open_zarr(path: Path, rgb: bool | None, key: str | None) -> StackReader:
    import zarr

    try:
        node = zarr.open(store=str(path), mode="r", path=key or "")
    except Exception as exc:  # noqa: BLE001
        raise StackInputError(f"cannot open {path} as zarr: {type(exc).__name__}: {exc}") from exc
    if isinstance(node, zarr.Group):
        names = sorted(name for name, _ in node.arrays())
        if len(names) == 1:
            node = node[names[0]]
        elif "0" in names:  # an OME-zarr image: its full-resolution level
            node = node["0"]
        else:
            raise StackInputError(
                f"{path} is a zarr group with arrays {names or 'none'}; say which one to use (key)"
            )
    where = f"{path}/{key}" if key else str(path)
    return StackReader(node, rgb=rgb, source=where)


def open_stack(stack: Any, *, rgb: bool | None = None, key: str | None = None) -> StackReader:
    """A :class:`StackReader` for a path (TIFF, zarr, ``.npy``), a numpy, zarr or dask array, or a reader.

    ``key``: the array inside a zarr group. Raises :class:`StackInputError` with a clear message when the input is
    missing, unreadable or not a stack of images.
    """
    if isinstance(stack, StackReader):
        return stack
    if isinstance(stack, (str, os.PathLike)):
        path = Path(os.fspath(stack)).expanduser()
        if not path.exists():
            raise StackInputError(f"{path} does not exist")
        if path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
            return _open_tiff(path, rgb)
        if _is_zarr_path(path):
            return _open_zarr(path, rgb, key)
        if path.suffix.lower() == ".npy" and path.is_file():
            try:
                return StackReader(np.load(path, mmap_mode="r"), rgb=rgb, source=str(path))
            except ValueError as exc:
                raise StackInputError(f"cannot read {path} as a .npy file: {exc}") from exc
        raise StackInputError(f"{path}: unsupported stack format (use a .tif/.tiff file, a .zarr store or a .npy file)")
    if all(hasattr(stack, attr) for attr in ("shape", "dtype", "__getitem__")):
        kind = type(stack).__module__.split(".")[0]
        return StackReader(stack, rgb=rgb, source=f"{kind} array {tuple(stack.shape)}")
    raise StackInputError(f"cannot read a stack from {type(stack).__name__} (give a path, or a numpy/zarr/dask array)")
