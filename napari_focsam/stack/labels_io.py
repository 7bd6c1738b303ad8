"""Writing label stacks slice by slice: in memory, to a zarr array, or to a TIFF file, never all held at once."""

from __future__ import annotations

import os
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LabelWriter", "label_dtype"]


def label_dtype(max_id: int) -> np.dtype:
    """The smallest unsigned dtype (at least uint16, as napari and ImageJ read) holding ``max_id``."""
    return np.dtype(np.uint16) if max_id <= np.iinfo(np.uint16).max else np.dtype(np.uint32)


def _our_labels(path: Path) -> bool:
    """Whether ``path`` is a label stack this module wrote (zarr attribute or TIFF description marker).

    These are the only existing paths ``overwrite`` replaces: an input stack, another program's TIFF or a text file
    that happens to end in ``.tif`` are never ours.
    """
    try:
        if path.suffix.lower() == ".zarr":
            import zarr

            return zarr.open_array(path, mode="r").attrs.get("napari-focsam") == "labels"
        import tifffile

        with tifffile.TiffFile(path) as tif:
            metadata = tif.shaped_metadata
            return metadata is not None and len(metadata) > 0 and metadata[0].get("napari-focsam") == "labels"
    except Exception:  # noqa: BLE001 - unreadable is not ours
        return False


class LabelWriter:
    """A (leading..., H, W) label stack filled one slice at a time, in any order; unwritten slices are 0.

    ``output``: ``None`` (a numpy array in memory), a ``.zarr`` path (an array chunked one slice per chunk) or a
    ``.tif``/``.tiff`` path (written in slice order, unwritten slices as zeros; finished slices that arrive early wait
    in memory, so give them roughly in order). An existing output is replaced only with ``overwrite``. The TIFF is
    written under a temporary name and renamed when complete.
    """

    def __init__(self, output: str | os.PathLike[str] | None, leading_shape: tuple[int, ...],
                 image_shape: tuple[int, int], dtype: Any, *, overwrite: bool = False) -> None:
        self.leading_shape = tuple(leading_shape)
        self.image_shape = tuple(image_shape)
        self.shape = (*self.leading_shape, *self.image_shape)
        self.n_slices = prod(self.leading_shape)
        self.dtype = np.dtype(dtype)
        self.path = None if output is None else Path(os.fspath(output)).expanduser().absolute()
        self._array: Any = None
        self._tiff: Any = None
        self._pending: dict[int, np.ndarray] = {}
        self._next = 0
        if self.path is None:
            self._array = np.zeros(self.shape, self.dtype)
            return
        if not self.path.parent.is_dir():
            raise ValueError(f"{self.path}: the folder {self.path.parent} does not exist (create it first)")
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} already exists (use overwrite to replace it)")
        suffix = self.path.suffix.lower()
        if self.path.exists() and not _our_labels(self.path):
            raise FileExistsError(f"{self.path} exists and is not a label stack written by napari-focsam; it is left "
                                  "untouched (choose another path)")
        if suffix == ".zarr":
            import zarr

            self._array = zarr.create_array(self.path, shape=self.shape, dtype=self.dtype, fill_value=0,
                                            chunks=(*(1,) * len(self.leading_shape), *self.image_shape),
                                            overwrite=True, attributes={"napari-focsam": "labels"})
        elif suffix in (".tif", ".tiff"):
            import tifffile

            self._tmp = self.path.with_name(f".{self.path.name}.partial")
            nbytes = prod(self.shape) * self.dtype.itemsize
            self._tiff = tifffile.TiffWriter(self._tmp, bigtiff=nbytes > 2**31 - 2**25)
        else:
            raise ValueError(f"{self.path}: labels are written as .tif/.tiff or .zarr")

    def write(self, index: int, labels: np.ndarray) -> None:
        """Set flat slice ``index`` to ``labels`` (H, W)."""
        labels = np.asarray(labels)
        if labels.shape != self.image_shape:
            raise ValueError(f"slice {index}: labels of shape {labels.shape}, expected {self.image_shape}")
        lead = np.unravel_index(int(index), self.leading_shape) if self.leading_shape else ()
        if self._tiff is None:
            self._array[tuple(int(i) for i in lead)] = labels.astype(self.dtype, copy=False)
            return
        if index < self._next or index in self._pending:
            raise ValueError(f"slice {index} was already written to {self.path}")
        self._pending[int(index)] = labels.astype(self.dtype, copy=False)
        self._flush(upto=None)

    def _flush(self, upto: int | None) -> None:
        """Write pending slices in order; with ``upto``, pad missing slices with zeros until there."""
        while self._next < self.n_slices:
            page = self._pending.pop(self._next, None)
            if page is None:
                if upto is None or self._next >= upto:
                    return
                page = np.zeros(self.image_shape, self.dtype)
            metadata = {"shape": list(self.shape), "napari-focsam": "labels"} if self._next == 0 else None
            self._tiff.write(page, contiguous=True, metadata=metadata)
            self._next += 1

    def finish(self) -> Any:
        """Complete the output; returns the numpy array, the zarr array, or the TIFF path."""
        if self._tiff is not None:
            try:
                self._flush(upto=self.n_slices)
                self._tiff.close()
                self._tiff = None
                assert self._tmp is not None and self.path is not None  # set with the TIFF writer
                os.replace(self._tmp, self.path)
            except BaseException:
                self.abort()
                raise
            return self.path
        return self._array

    def abort(self) -> None:
        """Drop a partial TIFF (a partial zarr output is left: the slices written are correct)."""
        if self.path is None or self.path.suffix.lower() == ".zarr":
            return
        tiff, self._tiff = self._tiff, None
        try:
            if tiff is not None:
                tiff.close()
        except OSError:
            pass  # e.g. a full disk: the partial file goes anyway
        finally:
            self._tmp.unlink(missing_ok=True)
