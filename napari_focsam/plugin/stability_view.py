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

from ..engine.stability import Stability
from ..engine.stability_requests import StabilityRequests, stability_colour
from .controller_parts import ControllerParts

UNSTABLE_COLOR = (1.0, 0.0, 1.0, 0.7)


class StabilityView(ControllerParts, StabilityRequests):
    """ST of the current object after each mask (a controller mixin)."""

    def _init_stability(self) -> None:
        super()._init_stability()
        self.show_unstable = False  #: draw the unstable pixels on the "FocSAM unstable" layer
        self.unstable_layer: Labels | None = None

    def _stability_done(self, index: tuple[int, ...], object_id: int, result: Stability) -> None:
        if self.show_unstable:
            self._draw_unstable(index, result.unstable)
        self.status.emit(f"stability of object {object_id}: {result.score:.2f}")
        self.changed.emit()

    def _stability_failed(self, object_id: int) -> None:
        self.changed.emit()

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
