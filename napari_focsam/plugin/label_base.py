"""What a Labels slice held before an object touched it, kept block by block: the base that Cancel restores and that
pixels an object gives up go back to, without a copy of the whole slice.

The annotator keeps, per (slice, object), the labels as they were before the object's first write (see
:func:`~.layers.write_object`). On a slice of 8,192² int32 labels a copy is 256 MB per object; a :class:`LabelBase`
copies only the blocks (512² px) that a write reads, the first time it reads them, i.e. before the object has
changed any pixel there. It is indexed like the slice (``base[rows, cols]``) and :func:`restore` gives the saved
blocks back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from . import layers as L

BLOCK = 512  #: side of the blocks copied (px)


class LabelBase:
    """The slice ``index`` of ``labels`` (a napari Labels layer) as it was before an object's writes (see the
    module). ``base[rows, cols]`` (two step-1 slices) copies the blocks not saved yet, then reads the saved copy."""

    def __init__(self, labels: Any, index: tuple[int, ...], block: int = BLOCK) -> None:
        self.labels, self.index, self.block = labels, tuple(index), int(block)
        data = labels.data
        self.shape = tuple(int(n) for n in data.shape[len(self.index):])
        self.dtype = np.dtype(data.dtype)
        self.blocks: dict[tuple[int, int], np.ndarray] = {}

    @property
    def nbytes(self) -> int:
        """Bytes held by the saved blocks."""
        return sum(b.nbytes for b in self.blocks.values())

    def _slices(self, by: int, bx: int) -> tuple[slice, slice]:
        b = self.block
        return slice(by * b, min(self.shape[0], (by + 1) * b)), slice(bx * b, min(self.shape[1], (bx + 1) * b))

    def _touching(self, rows: slice, cols: slice) -> Iterator[tuple[int, int]]:
        b = self.block
        for by in range(rows.start // b, (rows.stop - 1) // b + 1):
            for bx in range(cols.start // b, (cols.stop - 1) // b + 1):
                yield by, bx

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        rows, cols = (slice(*s.indices(n)[:2]) for s, n in zip(key, self.shape))
        out = np.empty((max(0, rows.stop - rows.start), max(0, cols.stop - cols.start)), self.dtype)
        if not out.size:
            return out
        data = self.labels.data
        for by, bx in self._touching(rows, cols):
            ys, xs = self._slices(by, bx)
            saved = self.blocks.get((by, bx))
            if saved is None:
                saved = self.blocks[(by, bx)] = np.array(data[self.index + (ys, xs)])
            y0, y1 = max(ys.start, rows.start), min(ys.stop, rows.stop)
            x0, x1 = max(xs.start, cols.start), min(xs.stop, cols.stop)
            out[y0 - rows.start: y1 - rows.start, x0 - cols.start: x1 - cols.start] = \
                saved[y0 - ys.start: y1 - ys.start, x0 - xs.start: x1 - xs.start]
        return out

    def regions(self) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray]]:
        """The saved blocks: ((y0, x0, y1, x1), their labels before the object)."""
        for (by, bx), saved in self.blocks.items():
            ys, xs = self._slices(by, bx)
            yield (ys.start, xs.start, ys.stop, xs.stop), saved


def restore(labels: Any, index: tuple[int, ...], base: Any, object_id: int) -> None:
    """Put slice ``index`` of ``labels`` back as ``base`` (a whole-slice array or a :class:`LabelBase`) has it where
    ``object_id`` was: its pixels and the pixels it took (a label being refined keeps its own)."""
    if isinstance(base, LabelBase):
        for region, saved in base.regions():
            L.write_window(labels, index, region, saved == object_id, object_id, base, overwrite=True)
        return
    L.write_object(labels, index, base == object_id, object_id, base, overwrite=True)
