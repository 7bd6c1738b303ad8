"""Prompt stability (Stable-SAM's ST) of the object being annotated, computed after its mask is shown. Part of
:class:`~napari_focsam.plugin.controller.AnnotationController`; runs on the GUI thread, the computation on the job
runner's low-priority background thread.

Rules: the stability of a mask is computed only once that mask is written into the Labels layer, and only for the
latest request (a mask on its way to newer prompts gets none); the next request (a click, a shape, undo, redo,
cancel) cancels it (it stops at its next cancellation point and its result is dropped): stability never delays a
mask. The value per object is in :attr:`stabilities`; with :attr:`show_unstable` the pixels where the jittered
copies disagree are shown on a Labels layer "FocSAM unstable". See ``docs/stability.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Labels

from ..engine.jobs import Job
from ..engine.stability import Jitter, Stability
from ..engine.types import CancelToken
from .controller_parts import ControllerParts

STABLE, SHAKY = 0.9, 0.7  # ST at or above: green; at or above: orange; below: red
UNSTABLE_COLOR = (1.0, 0.0, 1.0, 0.7)


def stability_colour(score: float) -> str:
    """The colour the widget shows ``score`` in (green, orange or red)."""
    return "#2ca02c" if score >= STABLE else "#ff8c00" if score >= SHAKY else "#d62728"


class StabilityView(ControllerParts):
    """ST of the current object after each mask (a controller mixin)."""

    def _init_stability(self) -> None:
        self.stability_enabled = False  #: compute ST after each mask (the widget's *show stability* box)
        self.show_unstable = False  #: draw the unstable pixels on the "FocSAM unstable" layer
        self.jitter = Jitter()  #: copies and noise level of the ST
        self.stabilities: dict[int, float] = {}  #: object id → ST of its latest mask
        self.last_stability: tuple[tuple[int, ...], int, Stability] | None = None
        self.unstable_layer: Labels | None = None
        self._stability_job: Job | None = None
        self._stability_generation = 0

    def cancel_stability(self) -> None:
        """Drop the stability being computed (the next request makes it out of date)."""
        self._stability_generation += 1
        if self._stability_job is not None:
            self._stability_job.token.cancel()
            self._stability_job = None

    def _stability_ticket(self) -> int:
        """Called for every request: cancels the running stability, returns the request's ticket."""
        self.cancel_stability()
        return self._stability_generation

    def request_stability(self, index: tuple[int, ...] | None = None, object_id: int | None = None,
                          ticket: int | None = None) -> None:
        """Compute the ST of the object's current mask on slice ``index`` in the background (after the mask is
        shown); ``ticket`` (from the request that made the mask) drops it when a newer request came meanwhile."""
        if ticket is not None and ticket != self._stability_generation:
            return  # a newer request is on its way: its mask gets the stability
        if not self.stability_enabled or self.manager is None:
            return
        index = self.index if index is None else tuple(index)
        object_id = self.object_id if object_id is None else int(object_id)
        key = self._keys.get(index)
        session = self.manager.get_object(key, object_id) if key is not None else None
        if session is None or session.current is None or session.prompts.is_empty:
            return
        self.cancel_stability()
        generation = self._stability_generation
        jitter = self.jitter

        def work(token: CancelToken) -> Stability:
            return session.stability(jitter, cancel=token)

        def done(result: Stability) -> None:
            if generation != self._stability_generation:
                return
            self._stability_job = None
            self.stabilities[object_id] = float(result.score)
            self.last_stability = (index, object_id, result)
            if self.show_unstable:
                self._draw_unstable(index, result.unstable)
            self.status.emit(f"stability of object {object_id}: {result.score:.2f}")
            self.changed.emit()

        def failed(exc: BaseException) -> None:  # no prompts any more, a box of zero area: no value, no alarm
            if generation == self._stability_generation:
                self._stability_job = None
                self.stabilities.pop(object_id, None)
                self.changed.emit()

        self._stability_job = self.jobs.background(("stability",), work, done, failed)

    def set_show_unstable(self, on: bool) -> None:
        """Show (or hide) the unstable pixels of the latest stability."""
        self.show_unstable = bool(on)
        if not on:
            if self.unstable_layer is not None and self.unstable_layer in self.viewer.layers:
                self.unstable_layer.visible = False
            return
        if self.last_stability is not None:
            index, _, result = self.last_stability
            self._draw_unstable(index, result.unstable)

    def _draw_unstable(self, index: tuple[int, ...], unstable: np.ndarray) -> None:
        if self.labels is None:
            return
        layer = self.unstable_layer
        if layer is None or layer not in self.viewer.layers or layer.data.shape != self.labels.data.shape:
            layer = self.unstable_layer = self.viewer.add_labels(
                np.zeros(self.labels.data.shape, np.uint8), name="FocSAM unstable", opacity=0.6,
                scale=self.labels.scale, translate=self.labels.translate,
                rotate=self.labels.rotate, shear=self.labels.shear, affine=self.labels.affine)
            layer.colormap = _unstable_colormap()
            self.viewer.layers.selection.active = self.points  # clicks still go to the clicks layer
        data = np.zeros(layer.data.shape, np.uint8)
        view = data[index] if index else data
        view[...] = unstable
        layer.data = data
        layer.visible = True

    def stability_text(self, object_id: int | None = None) -> tuple[str, str] | None:
        """(text, colour) for the widget: the ST of the object (the current one by default), or None."""
        score = self.stabilities.get(self.object_id if object_id is None else object_id)
        if score is None:
            return None
        return f"stability {score:.2f}", stability_colour(score)


def _unstable_colormap() -> Any:
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: UNSTABLE_COLOR})
