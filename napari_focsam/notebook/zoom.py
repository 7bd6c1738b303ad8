"""Zoom-in refinement in the notebook annotator (:mod:`napari_focsam.engine.zoom`), with the napari widget's rules
(:mod:`napari_focsam.plugin.zoom_view`): with :attr:`~NotebookZoom.auto_zoom`, a click on an object that is small in
a slice larger than the model's input (:func:`~napari_focsam.engine.zoom.should_zoom`) is decoded on the zoom of the
object's mask so far; *Refine detail* (:meth:`~NotebookZoom.refine_detail`) zooms on the current object now. Later
clicks inside the zoom stay on it; a click outside it or a box goes back to the whole slice. Undo walks back the
zoom's steps, then leaves the zoom (the whole slice's mask before it). Tiled slices are not zoomed (their views reach
the model at full resolution already). The coarse mask is the zoom's region prompt (the decoder's mask input) for
SAM-family models, not for the fallback (whose region prompt is a hard seed).

Part of :class:`~napari_focsam.notebook.controller.NotebookController`; every method runs under its lock, and the
zoom's embedding and decoding run in the click job (the job runner's threads), never on the kernel's comm thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..engine.types import Prompts
from ..engine.work import ClickResult
from ..engine.zoom import ZoomedObject
from ..engine.zoom_clicks import ZoomClicks, zoom_step
from .controller_parts import NotebookParts, Work

if TYPE_CHECKING:
    from ..engine.manager import ModelManager


class NotebookZoom(ZoomClicks, NotebookParts):
    """Zoomed objects per (slice, object) and the jobs that open and use them (a controller mixin)."""

    def _init_zoom(self) -> None:
        self.auto_zoom = True  #: zoom in on small objects after their first click
        self.zooms: dict[tuple[tuple[int, ...], int], ZoomedObject] = {}
        #: the clicks (image pixels, as given) of the zoom's latest step and those before it: undo and redo take
        #: the first n of them, so the prompts stay the very numbers clicked (the zoom's own are rescaled)
        self._zoom_prompts: dict[tuple[tuple[int, ...], int], Prompts] = {}

    def refine_detail(self, seq: int | None = None) -> None:
        """Zoom on the current object of the shown slice now (its mask and clicks so far) and decode it there."""
        manager = self._need_model()
        index, object_id = self.index, self.object_id
        if (index, object_id) in self.zooms:
            raise ValueError(f"object {object_id} is refined on its zoom already (undo leaves the zoom)")
        if self._tiled(manager, index):
            raise ValueError("refine detail: this slice is annotated in tiles, which the model sees at full "
                             "resolution already")
        session, prompts = self.session(), self.prompts()  # the latest clicks (a job may be computing the last)
        if session is None or session.current is None or not len(prompts.points):
            raise ValueError("refine detail: click on the object first (and wait for its first mask)")
        if prompts.box is not None or prompts.mask is not None or prompts.scribbles:
            raise ValueError("refine detail works on clicks: this object has a box")
        self._base(index, object_id)
        self._submit_zoom(index, object_id, self._zoom_job(index, object_id, prompts, None, session.mask), seq)
        self._set_status(f"refining object {object_id} on a zoom …", "info")

    def _tiled(self, manager: ModelManager, index: tuple[int, ...]) -> bool:
        return self.tiles.applies(manager, self.source.model_data, index, self.source.model_rgb)

    def _may_zoom(self, index: tuple[int, ...]) -> bool:
        manager = self.manager  # (without a model nothing is zoomed: see wants_zoom)
        return manager is None or not self._tiled(manager, index)

    def _zoom_job(self, index: tuple[int, ...], object_id: int, prompts: Prompts, zoomed: ZoomedObject | None,
                  coarse: np.ndarray | None) -> Work:
        manager = self._need_model()
        self._zoom_prompts[(index, object_id)] = prompts
        return zoom_step(manager, self.source.model_data, index, self.source.model_rgb, self.contrast,
                         self._keys.get(index, ""), object_id, prompts, zoomed, coarse)

    def _submit_zoom(self, index: tuple[int, ...], object_id: int, work: Work, seq: int | None) -> None:
        def done(result: tuple[ClickResult, ZoomedObject]) -> None:
            click, obj = result
            if click.manager is not self.manager:
                return
            self.zooms[(click.index, click.object_id)] = obj
            base = self._bases.get((click.index, click.object_id))
            self._write(click.index, click.mask, click.object_id, base, seq=seq, model_ms=1000 * click.seconds)
            self._set_status(f"click {1000 * click.seconds:.0f} ms (on the zoom)", "info", send=False)
            self._update(prompts=click.index == self.index)

        self._submit_work(index, object_id, work, done)

    def _step_zoom(self, which: str) -> bool:
        """Undo or redo on the current object's zoom, if it has one; whether it did."""
        index, object_id = self.index, self.object_id
        zoomed = self.zooms.get((index, object_id))
        if zoomed is None:
            return False
        if which == "redo" and not zoomed.session.can_redo:
            raise ValueError(f"nothing to redo for object {object_id} on this slice")
        mask, prompts, left = self._undo_redo_zoom(index, object_id, zoomed, which)
        if left:
            self._set_status(f"object {object_id}: back from the zoom to the whole slice", "info", send=False)
        else:
            given = self._zoom_prompts.get((index, object_id), zoomed.prompts)
            n = len(zoomed.session.prompts.points)
            prompts = Prompts(given.points[:n], given.labels[:n]) if n <= len(given.points) else zoomed.prompts
        self._prompts[(index, object_id)] = prompts
        if mask is not None:
            self._write(index, mask, object_id, self._base(index, object_id))
        self._update(prompts=True)
        return True

    def zoom_info(self) -> dict:
        """The zoom's part of the widget's info: whether the current object is on a zoom, and its rectangle."""
        zoomed = self.zooms.get((self.index, self.object_id))
        return {"auto_zoom": self.auto_zoom, "zoom": None if zoomed is None else list(zoomed.zoom.region)}

    def _zoom_forgotten(self, key: tuple[tuple[int, ...], int]) -> None:
        self._zoom_prompts.pop(key, None)


__all__ = ["NotebookZoom"]
