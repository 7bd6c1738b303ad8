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

import time
from typing import Any

from ..engine.fallback import FallbackPredictor
from ..engine.types import CancelToken, Prompts
from ..engine.views import input_side
from ..engine.work import ClickResult, model_slice
from ..engine.zoom import ZoomedObject, should_zoom
from . import layers as L
from .controller_parts import ControllerParts


class ZoomView(ControllerParts):
    """Zoomed objects per (slice, object) and the jobs that open and use them (a controller mixin); the state
    (``auto_zoom``, ``zooms``) is declared in :class:`~.controller_parts.ControllerParts`."""

    def refine_detail(self) -> None:
        """Zoom on the current object of the shown slice now (its mask and clicks so far) and decode it there."""
        session = self.session() if self.ready else None
        if session is None or session.current is None:
            self.status.emit("refine detail: click on the object first")
            return
        work = self._zoom_job(self.index, self.object_id, session.prompts, None, session.mask)
        self._submit_click(self.index, self.object_id, work)

    def _zoom_work(self, index: tuple[int, ...], object_id: int, prompts: Prompts) -> Any | None:
        """The job for a click decoded on a zoom, or None when this click goes to the whole slice."""
        key = (index, object_id)
        zoomed = self.zooms.get(key)
        if zoomed is not None:
            if zoomed.accepts(prompts):
                return self._zoom_job(index, object_id, prompts, zoomed, None)
            del self.zooms[key]
            return None
        session = self.session()
        if (not self.auto_zoom or session is None or self.manager is None or session.current is None
                or not len(prompts.points) or prompts.box is not None or prompts.mask is not None or prompts.scribbles
                or not should_zoom(session.mask, input_side=input_side(self.manager.predictor))):
            return None
        return self._zoom_job(index, object_id, prompts, None, session.mask)

    def _zoom_job(self, index: tuple[int, ...], object_id: int, prompts: Prompts, zoomed: ZoomedObject | None,
                  coarse: Any) -> Any:
        manager = self.manager
        if manager is None:  # callers hold a session, which needs a loaded model
            raise RuntimeError("zoom-in needs a loaded model")
        data, rgb, contrast, _ = self.model_source()
        key = self._keys.get(index, "")
        mask_input = not isinstance(manager.predictor, FallbackPredictor)

        def work(token: CancelToken) -> tuple[ClickResult, ZoomedObject]:
            start = time.perf_counter()
            obj = zoomed
            if obj is None:
                image, is_rgb = model_slice(data, index, rgb)
                obj = ZoomedObject.open(manager, image, coarse, prompts, rgb=is_rgb, mask_input=mask_input,
                                        contrast_limits=None if is_rgb else contrast, cancel=token, object_id=object_id)
                mask = obj.mask
            else:
                mask = obj.sync(prompts, cancel=token)
            step = obj.session.current
            timings = dict(step.prediction.timings) if step is not None else {}
            return ClickResult(manager, index, object_id, mask, key, time.perf_counter() - start, timings,
                               finished_at=time.perf_counter()), obj

        return work

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
        if which == "undo" and not zoomed.can_undo:
            del self.zooms[(index, object_id)]  # back to the whole slice's mask before the zoom
            session = self.session()
            mask, prompts = (session.mask, session.prompts) if session is not None else (None, Prompts())
        else:
            mask = zoomed.undo() if which == "undo" else zoomed.redo()
            prompts = zoomed.prompts
        with self._mute():
            L.replace_slice_points(self.points, self.image, index, prompts)
        if mask is not None:
            base = self._bases.setdefault((index, object_id), L.slice_copy(self.labels, index))
            L.write_object(self.labels, index, mask, object_id, base, overwrite=self.overwrite)
        self.changed.emit()
        return True

    def _forget_zooms(self, object_id: int | None = None) -> None:
        for key in [k for k in self.zooms if object_id is None or k[1] == object_id]:
            del self.zooms[key]
