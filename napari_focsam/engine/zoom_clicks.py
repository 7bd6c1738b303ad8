"""Zoom-in refinement's clicks, shared by the napari and the notebook controllers (Qt- and Jupyter-free).

A click on an object already zoomed stays on its zoom while the zoom accepts it (:meth:`ZoomedObject.accepts
<napari_focsam.engine.zoom.ZoomedObject.accepts>`); otherwise the zoom is left and the click goes to the whole
slice. With ``auto_zoom``, a click on an object not zoomed yet opens a zoom when :func:`wants_zoom` says so. The
click's job (:func:`zoom_step`) embeds and decodes the zoom off the front-end's GUI (or comm) thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .fallback import FallbackPredictor
from .manager import ModelManager
from .types import CancelToken, Prompts
from .views import input_side
from .work import ClickResult, model_slice
from .zoom import ZoomedObject, should_zoom

if TYPE_CHECKING:
    from .session import ObjectSession

__all__ = ["ZoomClicks", "wants_zoom", "zoom_step"]


class ZoomClicks:
    """Which clicks go to a zoom (a controller mixin). The controller holds ``manager``, ``auto_zoom`` and ``zooms``
    (the zoomed objects per (slice, object)), and makes a click's job on a zoom (``_zoom_job``); it may refuse
    zooms on some slices (:meth:`_may_zoom`)."""

    if TYPE_CHECKING:
        manager: ModelManager | None
        auto_zoom: bool
        zooms: dict[tuple[tuple[int, ...], int], ZoomedObject]

        def session(self) -> ObjectSession | None: ...

    def _zoom_job(self, index: tuple[int, ...], object_id: int, prompts: Prompts, zoomed: ZoomedObject | None,
                  coarse: np.ndarray | None) -> Any:
        raise NotImplementedError

    def _may_zoom(self, index: tuple[int, ...]) -> bool:
        """Whether an object on slice ``index`` may be zoomed at all (default: yes)."""
        return True

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
        if (not self.auto_zoom or session is None or not self._may_zoom(index)
                or not wants_zoom(prompts, session, self.manager)):
            return None
        return self._zoom_job(index, object_id, prompts, None, session.mask)

    def _undo_redo_zoom(self, index: tuple[int, ...], object_id: int, zoomed: ZoomedObject,
                        which: str) -> tuple[np.ndarray | None, Prompts, bool]:
        """Undo or redo on the object's zoom: (mask, prompts, left). Undo past the zoom's first step leaves the zoom
        (``left``) and gives back the whole slice's mask and prompts from before it."""
        if which == "undo" and not zoomed.can_undo:
            del self.zooms[(index, object_id)]  # back to the whole slice's mask before the zoom
            session = self.session()
            mask, prompts = (session.mask, session.prompts) if session is not None else (None, Prompts())
            return mask, prompts, True
        mask = zoomed.undo() if which == "undo" else zoomed.redo()
        return mask, zoomed.prompts, False

    def _zoom_forgotten(self, key: tuple[tuple[int, ...], int]) -> None:
        """Called for each zoom :meth:`_forget_zooms` leaves, by its (slice, object) key (default: nothing)."""

    def _forget_zooms(self, object_id: int | None = None) -> None:
        """Leave the zooms of ``object_id`` (every object's by default)."""
        for key in [k for k in self.zooms if object_id is None or k[1] == object_id]:
            del self.zooms[key]
            self._zoom_forgotten(key)


def wants_zoom(prompts: Prompts, session: Any, manager: ModelManager | None) -> bool:
    """Whether a click on an object not yet zoomed opens a zoom (with ``auto_zoom`` on): clicks only, after the
    object's first mask, on an object small in a slice larger than the model's input
    (:func:`~napari_focsam.engine.zoom.should_zoom`)."""
    if manager is None or session is None or session.current is None or not len(prompts.points):
        return False
    if prompts.box is not None or prompts.mask is not None or prompts.scribbles:
        return False
    return should_zoom(session.mask, input_side=input_side(manager.predictor))


def zoom_step(manager: ModelManager, data: Any, index: tuple[int, ...], rgb: bool, contrast: Any, key: str,
              object_id: int, prompts: Prompts, zoomed: ZoomedObject | None, coarse: np.ndarray | None,
              ) -> Callable[[CancelToken], tuple[ClickResult, ZoomedObject]]:
    """The job of a click decoded on a zoom: on ``zoomed``, or on a new zoom of the ``coarse`` mask (the object's
    mask so far on slice ``index`` of ``data``). The coarse mask is the zoom's region prompt (the decoder's mask
    input) for SAM-family models, not for the fallback (whose region prompt is a hard seed)."""
    mask_input = not isinstance(manager.predictor, FallbackPredictor)

    def work(token: CancelToken) -> tuple[ClickResult, ZoomedObject]:
        start = time.perf_counter()
        obj = zoomed
        if obj is None:
            assert coarse is not None  # a new zoom needs the object's mask so far
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
