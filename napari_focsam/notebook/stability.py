"""Prompt stability (Stable-SAM's ST) of the notebook annotator's current object, computed after its mask is shown.

Part of :class:`~napari_focsam.notebook.controller.NotebookController`, with the napari widget's rules
(:mod:`napari_focsam.engine.stability_requests`): when :attr:`~NotebookStability.stability_enabled`, each mask of the
current object is followed by the ST of that mask, computed on the job runner's low-priority background thread
(never on the kernel's comm thread), only for the latest request; the next action on the object (a click, a box,
undo, redo, cancel) cancels it and drops its result, so stability never delays a mask. The value per object is in
:attr:`~NotebookStability.stabilities` and in the widget's info line (a number and a colour). See
``docs/stability.md``.
"""

from __future__ import annotations

from typing import Any

from ..engine.stability import Jitter, Stability
from ..engine.stability_requests import StabilityRequests, stability_colour


class NotebookStability(StabilityRequests):
    """ST of the current object after each mask (a controller mixin; the controller's lock is held when its
    methods run)."""

    _update: Any  # the controller's

    def set_stability(self, on: bool, jitter: Jitter | None = None) -> None:
        """Turn the stability display on (computing it for the current mask at once) or off."""
        self.stability_enabled = bool(on)
        if jitter is not None:
            if not isinstance(jitter, Jitter):
                raise TypeError(f"jitter must be a Jitter, got {jitter!r}")
            self.jitter = jitter
        if self.stability_enabled:
            self.request_stability()
        else:
            self.cancel_stability()
        self._update()

    def _stability_done(self, index: tuple[int, ...], object_id: int, result: Stability) -> None:
        self._update()

    def _stability_failed(self, object_id: int) -> None:
        self._update()

    def _stability_skipped(self, index: tuple[int, ...], object_id: int) -> bool:
        # decoded on its zoom: the whole slice's session is not the mask shown
        return (index, object_id) in getattr(self, "zooms", {})

    def stability_info(self) -> dict:
        """The info fields of the current object's stability: ``stability`` (ST or None), its ``stability_colour``,
        and whether the display is on."""
        score = self.stabilities.get(self.object_id) if self.stability_enabled else None
        return {"stability_enabled": self.stability_enabled, "stability": score,
                "stability_colour": None if score is None else stability_colour(score)}
