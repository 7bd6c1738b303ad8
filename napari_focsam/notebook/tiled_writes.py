"""Writes of the notebook annotator on large (tiled) slices, region by region, and the prefetch of the tiles around
an object. Part of :class:`~napari_focsam.notebook.controller.NotebookController`; every method runs under its lock.

A click on a tiled slice comes back as a :class:`~napari_focsam.engine.work.TiledClick`, the mask of the object's
view only (``region_only``): it is merged into the labels in that region (and the object is cleared from the regions
it left), so no array the size of the slice is made per click. What Cancel restores — the labels before the object
touched them — is a :class:`BlockBase`, the blocks a write read, copied the first time, not a copy of the slice (on
an 8,192² slice of int32 labels that copy would be 256 MB per object). After a click the tiles around the object's
tile are embedded on the job runner's low-priority background thread; a click on another tile, Cancel, another
slice or another model drops that work.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine.work import TiledClick, tiled_step
from .controller_parts import NotebookParts

if TYPE_CHECKING:
    pass

BLOCK = 512  #: side of the blocks a :class:`BlockBase` copies (px)
PREFETCH = "tile-prefetch"  #: background job keys: (PREFETCH, slice, tile)
Region = tuple[int, int, int, int]


class BlockBase:
    """A 2D label slice ``view`` as it was before an object's writes, kept block by block (see the module):
    ``base[rows, cols]`` (step-1 slices) copies the blocks it touches that are not saved yet, then reads the copies."""

    def __init__(self, view: np.ndarray, block: int = BLOCK) -> None:
        self.view, self.block = view, int(block)
        self.shape = tuple(view.shape)
        self.blocks: dict[tuple[int, int], np.ndarray] = {}

    def _span(self, by: int, bx: int) -> Region:
        b = self.block
        return by * b, bx * b, min(self.shape[0], (by + 1) * b), min(self.shape[1], (bx + 1) * b)

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        (y0, y1, _), (x0, x1, _) = (s.indices(n) for s, n in zip(key, self.shape))
        out = np.empty((max(0, y1 - y0), max(0, x1 - x0)), self.view.dtype)
        if not out.size:
            return out
        b = self.block
        for by in range(y0 // b, (y1 - 1) // b + 1):
            for bx in range(x0 // b, (x1 - 1) // b + 1):
                sy0, sx0, sy1, sx1 = self._span(by, bx)
                saved = self.blocks.get((by, bx))
                if saved is None:
                    saved = self.blocks[(by, bx)] = self.view[sy0:sy1, sx0:sx1].copy()
                ty0, ty1, tx0, tx1 = max(sy0, y0), min(sy1, y1), max(sx0, x0), min(sx1, x1)
                out[ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0] = saved[ty0 - sy0:ty1 - sy0, tx0 - sx0:tx1 - sx0]
        return out

    def regions(self) -> Iterator[tuple[Region, np.ndarray]]:
        """The saved blocks: (their region, their labels before the object)."""
        for (by, bx), saved in list(self.blocks.items()):
            yield self._span(by, bx), saved

    @property
    def nbytes(self) -> int:
        return sum(saved.nbytes for saved in self.blocks.values())


def is_prefetch(key: Any) -> bool:
    return isinstance(key, tuple) and len(key) == 3 and key[0] == PREFETCH


class NotebookTiles(NotebookParts):
    """Region writes, bases and prefetch of tiled slices (a controller mixin)."""

    def _base(self, index: tuple[int, ...], object_id: int) -> Any:
        """The labels of slice ``index`` before ``object_id`` touched them (kept from its first request there): a
        :class:`BlockBase` on a tiled slice, a copy of the slice on others."""
        key = (index, object_id)
        if key not in self._bases:
            view = self._view(index)
            self._bases[key] = BlockBase(view) if self.tiled(index) else view.copy()
        return self._bases[key]

    def _write_tiled(self, index: tuple[int, ...], object_id: int, click: TiledClick, *, seq: int | None = None,
                     model_ms: float | None = None) -> None:
        """Clear the object from the regions it left, then write its mask in its view's region."""
        base = self._base(index, object_id)
        for region in click.left:
            empty = np.zeros((region[2] - region[0], region[3] - region[1]), bool)
            self._write(index, empty, object_id, base, region=region)
        self._write(index, click.view.mask, object_id, base, seq=seq, model_ms=model_ms, region=click.view.region)

    def _restore(self, index: tuple[int, ...], object_id: int, base: Any) -> None:
        """Put the object's pixels back as they were before it (Cancel)."""
        if isinstance(base, BlockBase):
            for region, saved in base.regions():
                self._write(index, saved == object_id, object_id, base, overwrite=True, region=region)
        else:
            self._write(index, base == object_id, object_id, base, overwrite=True)

    def _prefetch_around(self, index: tuple[int, ...], click: TiledClick) -> None:
        key = (PREFETCH, index, click.tile)
        self.jobs.cancel_background(lambda k: is_prefetch(k) and k != key)  # the user moved on
        if click.prefetch is None or key in self.jobs.background_keys():
            return
        self.jobs.background(key, click.prefetch, None, self._on_prefetch_error)

    def _on_prefetch_error(self, exc: BaseException) -> None:
        self._set_status(f"the tiles around the object could not be embedded: {exc}", "warning")

    def cancel_prefetch(self) -> None:
        self.jobs.cancel_background(is_prefetch)

    def _step_tiled(self, which: str) -> None:
        """Undo or redo a tiled object's recorded step (no model runs: the steps are kept)."""
        from .slice_model import CLICK

        manager, index, object_id = self._need_model(), self.index, self.object_id
        self.jobs.cancel((CLICK, index, object_id))
        result = tiled_step(manager, self.source.model_data, index, self.source.model_rgb, self.contrast, object_id,
                            which, self.tiles, region_only=True)
        if result is None:
            raise ValueError(f"nothing to {which} for object {object_id} on this slice")
        click, prompts = result
        self._prompts[(index, object_id)] = prompts
        self._write_tiled(index, object_id, click)
        self._update(prompts=True)


__all__ = ["BlockBase", "NotebookTiles"]
