"""The widget's side of tiled slices (:mod:`napari_focsam.engine.tiles`): region writes, low-priority prefetch of
the tiles around an object, undo and redo. Part of :class:`~napari_focsam.plugin.controller.AnnotationController`.

A large slice is annotated in tiles (the controller's ``tiles``, a :class:`~napari_focsam.engine.work.TileSettings`,
single images and mixed channels alike): clicks go through :func:`~napari_focsam.engine.work.compute_object` like
any other and come back as a :class:`~napari_focsam.engine.work.TiledClick`, the mask of the object's view only.

* **Writes** touch that view's region (and clear the object from the regions it left) only: no array the size of
  the slice is made per click, and the labels as they were before the object (what Cancel restores) are kept as a
  :class:`~.label_base.LabelBase` of the blocks it touched, not a copy of the slice.
* **Prefetch**: after a click, the tiles around the object's tile are embedded as one job on the job runner's
  low-priority background thread (``nice`` +10, never the click pool), so a click on an embedded tile never waits
  behind it. A click that lands on another tile (the user moved on), another slice shown, another model or
  Cancel cancel the prefetch under way (it stops between the encoder's blocks) and drop the queued ones.
* **Undo and redo** act on the recorded steps of the object's view session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine.work import ClickResult, TiledClick, tiled_step
from . import layers as L
from .controller_parts import ControllerParts
from .label_base import LabelBase

PREFETCH = "tile-prefetch"  #: background job keys: (PREFETCH, slice, tile)


def is_prefetch(key: Any) -> bool:
    """Whether a background job's key is a tile prefetch's."""
    return isinstance(key, tuple) and len(key) == 3 and key[0] == PREFETCH


class TilesView(ControllerParts):
    """Tiled slices in the annotator (a controller mixin; see the module)."""

    if TYPE_CHECKING:
        def model_source(self) -> tuple[Any, bool, tuple[float, float], tuple[Any, ...]]: ...

    def is_tiled(self, index: tuple[int, ...] | None = None) -> bool:
        """Whether slice ``index`` (the shown one by default) is annotated in tiles with the current model."""
        if self.manager is None or self.image is None:
            return False
        data, rgb, _, _ = self.model_source()
        return self.tiles.applies(self.manager, data, self.index if index is None else tuple(index), rgb)

    def _base(self, index: tuple[int, ...], object_id: int) -> Any:
        """The labels of slice ``index`` before ``object_id`` touched them (kept from its first request there): a
        :class:`LabelBase` on a tiled slice, a copy of the slice on others."""
        assert self.labels is not None  # attached
        bases: dict[Any, Any] = self._bases
        if (index, object_id) not in bases:
            bases[(index, object_id)] = (LabelBase(self.labels, index) if self.is_tiled(index)
                                         else L.slice_copy(self.labels, index))
        return bases[(index, object_id)]

    def _write_click(self, result: ClickResult) -> None:
        """Write a click's mask into the Labels layer (a tiled one in its region only); then prefetch around it."""
        assert self.labels is not None  # attached
        base = self._bases.get((result.index, result.object_id))
        if result.tiled is None:
            base = L.slice_copy(self.labels, result.index) if base is None else base
            L.write_object(self.labels, result.index, result.mask, result.object_id, base, overwrite=self.overwrite)
            return
        self._write_tiled(result.index, result.object_id, result.tiled,
                          LabelBase(self.labels, result.index) if base is None else base)
        if result.manager is self.manager:
            self._prefetch_around(result.index, result.tiled)

    def _write_tiled(self, index: tuple[int, ...], object_id: int, click: TiledClick, base: Any) -> None:
        assert self.labels is not None  # attached
        for region in click.left:  # the views the object left: it is cleared there
            empty = _empty(region)
            L.write_window(self.labels, index, region, empty, object_id, base, overwrite=self.overwrite)
        L.write_window(self.labels, index, click.view.region, click.view.mask, object_id, base,
                       overwrite=self.overwrite)

    def _prefetch_around(self, index: tuple[int, ...], click: TiledClick) -> None:
        key = (PREFETCH, index, click.tile)
        self.jobs.cancel_background(lambda k: is_prefetch(k) and k != key)  # the user moved on
        if click.prefetch is None or key in self.jobs.background_keys():
            return
        self.jobs.background(key, click.prefetch, None, self._on_error)

    def cancel_tile_prefetch(self) -> None:
        """Stop embedding tiles in the background (the one under way stops between the encoder's blocks)."""
        self.jobs.cancel_background(is_prefetch)

    def _step_tiled(self, which: str) -> bool:
        """Undo or redo the current object of the shown slice if that slice is tiled; whether it was."""
        if self.manager is None or self.image is None or self.labels is None:
            return False
        index = self.index
        data, rgb, contrast, _ = self.model_source()
        if not self.tiles.applies(self.manager, data, index, rgb):
            return False
        result = tiled_step(self.manager, data, index, rgb, contrast, self.object_id, which, self.tiles,
                            region_only=True)
        if result is None:
            return True
        click, prompts = result
        with self._mute():
            L.replace_slice_points(self.points, self.image, index, prompts)
        self._write_tiled(index, self.object_id, click, self._base(index, self.object_id))
        self.changed.emit()
        return True


def _empty(region: tuple[int, int, int, int]) -> np.ndarray:
    return np.zeros((region[2] - region[0], region[3] - region[1]), bool)
