"""Prompt stability (Stable-SAM's ST) of the notebook annotator's current object, computed after its mask is shown.

Part of :class:`~napari_focsam.notebook.controller.NotebookController`, with the napari widget's rules
(:mod:`napari_focsam.plugin.stability_view`): when :attr:`~NotebookStability.stability_enabled`, each mask of the
current object is followed by the ST of that mask, computed on the job runner's low-priority background thread
(never on the kernel's comm thread), only for the latest request; the next action on the object (a click, a box,
undo, redo, cancel) cancels it and drops its result, so stability never delays a mask. The value per object is in
:attr:`~NotebookStability.stabilities` and in the widget's info line (a number and a colour). See
``docs/stability.md``.
"""

from __future__ import annotations

from typing import Any

from ..engine.jobs import Job
from ..engine.stability import Jitter, Stability
from ..engine.types import CancelToken

STABLE, SHAKY = 0.9, 0.7  # ST at or above: green; at or above: orange; below: red (as in the napari widget)


def stability_colour(score: float) -> str:
    """The colour the widget shows ``score`` in (green, orange or red)."""
    return "#2ca02c" if score >= STABLE else "#ff8c00" if score >= SHAKY else "#d62728"


class NotebookStability:
    """ST of the current object after each mask (a controller mixin; the controller's lock is held when its
    methods run)."""

    # the controller's
    manager: Any
    jobs: Any
    object_id: int
    index: Any
    _keys: dict
    _update: Any

    def _init_stability(self) -> None:
        self.stability_enabled = False  #: compute ST after each mask of the current object
        self.jitter = Jitter()  #: copies and noise level of the ST
        self.stabilities: dict[int, float] = {}  #: object id → ST of its latest mask
        self.last_stability: tuple[tuple[int, ...], int, Stability] | None = None
        self._stability_job: Job | None = None
        self._stability_generation = 0

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
        """Compute the ST of the object's current mask on slice ``index`` in the background; ``ticket`` (from the
        request that made the mask) drops it when a newer request came meanwhile."""
        if ticket is not None and ticket != self._stability_generation:
            return  # a newer request is on its way: its mask gets the stability
        if not self.stability_enabled or self.manager is None:
            return
        index = self.index if index is None else tuple(index)
        object_id = self.object_id if object_id is None else int(object_id)
        if (index, object_id) in getattr(self, "zooms", {}):
            return  # decoded on its zoom: the whole slice's session is not the mask shown
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
            self._update()

        def failed(exc: BaseException) -> None:  # no prompts any more, a box of zero area: no value, no alarm
            if generation == self._stability_generation:
                self._stability_job = None
                self.stabilities.pop(object_id, None)
                self._update()

        self._stability_job = self.jobs.background(("stability",), work, done, failed)

    def stability_info(self) -> dict:
        """The info fields of the current object's stability: ``stability`` (ST or None), its ``stability_colour``,
        and whether the display is on."""
        score = self.stabilities.get(self.object_id) if self.stability_enabled else None
        return {"stability_enabled": self.stability_enabled, "stability": score,
                "stability_colour": None if score is None else stability_colour(score)}
