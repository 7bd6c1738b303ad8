"""Zoom-in refinement in the annotator (:mod:`napari_focsam.engine.zoom`): "refine detail" zooms on the current
object now; with ``auto_zoom``, a click on an object that is small in a slice larger than the model's input
(:func:`~napari_focsam.engine.zoom.should_zoom`) is decoded on the zoom of the object's mask so far. Later clicks
inside the zoom stay on it; a click outside it, a box or a shape goes back to the whole slice. Undo walks back the
zoom's steps, then leaves the zoom (the whole slice's mask before it). Tiled slices are not zoomed (their views
already reach the model at full resolution). Part of :class:`~napari_focsam.plugin.controller.AnnotationController`.

The coarse mask places the zoom; it is the zoom's region prompt (the decoder's mask input) for SAM-family models and
not for the fallback, whose region prompt is a hard seed (``benchmarks/bench_zoom.py`` measures both).
"""

from __future__ import annotations

from typing import Any

from ..engine.types import Prompts
from ..engine.work import ClickResult
from ..engine.zoom import ZoomedObject
from ..engine.zoom_clicks import ZoomClicks, zoom_step
from . import layers as L
from .controller_parts import ControllerParts


class ZoomView(ControllerParts, ZoomClicks):
    """Zoomed objects per (slice, object) and the jobs that open and use them (a controller mixin; which clicks go
    to a zoom: :class:`~napari_focsam.engine.zoom_clicks.ZoomClicks`); the state (``auto_zoom``, ``zooms``) is
    declared in :class:`~.controller_parts.ControllerParts`."""

    def refine_detail(self) -> None:
        """Zoom on the current object of the shown slice now (its mask and clicks so far) and decode it there."""
        session = self.session() if self.ready else None
        if session is None or session.current is None:
            self.status.emit("refine detail: click on the object first")
            return
        work = self._zoom_job(self.index, self.object_id, session.prompts, None, session.mask)
        self._submit_click(self.index, self.object_id, work)

    def _zoom_job(self, index: tuple[int, ...], object_id: int, prompts: Prompts, zoomed: ZoomedObject | None,
                  coarse: Any) -> Any:
        manager = self.manager
        if manager is None:  # callers hold a session, which needs a loaded model
            raise RuntimeError("zoom-in needs a loaded model")
        data, rgb, contrast, _ = self.model_source()
        return zoom_step(manager, data, index, rgb, contrast, self._keys.get(index, ""), object_id, prompts, zoomed,
                         coarse)

    def _zoom_done(self, result: tuple[ClickResult, ZoomedObject]) -> ClickResult:
        click, obj = result
        if click.manager is self.manager:
            self.zooms[(click.index, click.object_id)] = obj
        return click

    def _step_zoom(self, which: str) -> bool:
        """Undo or redo on the current object's zoom, if it has one; whether it did."""
        index, object_id = self.index, self.object_id
        zoomed = self.zooms.get((index, object_id))
        if zoomed is None:
            return False
        if which == "redo" and not zoomed.session.can_redo:
            return True
        mask, prompts, _ = self._undo_redo_zoom(index, object_id, zoomed, which)
        with self._mute():
            L.replace_slice_points(self.points, self.image, index, prompts)
        if mask is not None:
            base = self._bases.setdefault((index, object_id), L.slice_copy(self.labels, index))
            L.write_object(self.labels, index, mask, object_id, base, overwrite=self.overwrite)
        self.changed.emit()
        return True
