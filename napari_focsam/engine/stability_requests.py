"""Prompt stability (Stable-SAM's ST) of a controller's current object, computed after its mask is shown; shared by
the napari and the notebook controllers (Qt- and Jupyter-free).

Rules: the stability of a mask is computed only once that mask is shown, on the job runner's low-priority
background thread, and only for the latest request (a mask on its way to newer prompts gets none); the next request
(a click, a shape, undo, redo, cancel) cancels it (it stops at its next cancellation point and its result is
dropped): stability never delays a mask. The value per object is in :attr:`StabilityRequests.stabilities`. See
``docs/stability.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .jobs import Job
from .stability import Jitter, Stability
from .types import CancelToken

if TYPE_CHECKING:
    from .jobs import JobRunner
    from .manager import ModelManager

STABLE, SHAKY = 0.9, 0.7  # ST at or above: green; at or above: orange; below: red


def stability_colour(score: float) -> str:
    """The colour the widgets show ``score`` in (green, orange or red)."""
    return "#2ca02c" if score >= STABLE else "#ff8c00" if score >= SHAKY else "#d62728"


class StabilityRequests:
    """ST of the current object after each mask (a controller mixin). The controller holds ``manager``, ``jobs``,
    ``object_id``, ``index`` and ``_keys`` (embedding key per slice), and says what a result or a failure shows
    (:meth:`_stability_done`, :meth:`_stability_failed`) and which masks get none (:meth:`_stability_skipped`)."""

    if TYPE_CHECKING:
        manager: ModelManager | None
        jobs: JobRunner
        object_id: int
        _keys: dict[tuple[int, ...], str]

        @property
        def index(self) -> tuple[int, ...]: ...

    def _init_stability(self) -> None:
        self.stability_enabled = False  #: compute ST after each mask of the current object
        self.jitter = Jitter()  #: copies and noise level of the ST
        self.stabilities: dict[int, float] = {}  #: object id → ST of its latest mask
        self.last_stability: tuple[tuple[int, ...], int, Stability] | None = None
        self._stability_job: Job | None = None
        self._stability_generation = 0

    def _stability_done(self, index: tuple[int, ...], object_id: int, result: Stability) -> None:
        """Show the stability just stored for ``object_id``."""
        raise NotImplementedError

    def _stability_failed(self, object_id: int) -> None:
        """Show that ``object_id`` has no stability (its value was just dropped)."""
        raise NotImplementedError

    def _stability_skipped(self, index: tuple[int, ...], object_id: int) -> bool:
        """Whether the mask shown for ``object_id`` on slice ``index`` gets no stability (default: every mask gets
        one)."""
        return False

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
        if self._stability_skipped(index, object_id):
            return
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
            self._stability_done(index, object_id, result)

        def failed(exc: BaseException) -> None:  # no prompts any more, a box of zero area: no value, no alarm
            if generation == self._stability_generation:
                self._stability_job = None
                self.stabilities.pop(object_id, None)
                self._stability_failed(object_id)

        self._stability_job = self.jobs.background(("stability",), work, done, failed)
