"""Committing objects, shared by the napari and the notebook controllers (Qt- and Jupyter-free).

A controller annotates one object at a time (``object_id``). Committing it starts the next object at once, while
the committed object's click jobs still run: they finish and write their masks, and only then is the object final
(:meth:`ObjectCommits._finish_commit`): its undo bases are dropped and its sessions keep only what re-opening needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .manager import ModelManager


class ObjectCommits:
    """The object life cycle of a controller (a mixin). The controller holds ``manager``, ``object_id``,
    ``_bases`` (the label slice before the object's first write, per (slice, object): what cancel restores) and
    ``_committing`` (committed objects whose jobs still run), and says which jobs of an object run
    (``_jobs_of``) and how its next object starts (``_start_new_object``, which calls :meth:`_begin_object`)."""

    manager: ModelManager | None
    object_id: int
    _bases: dict[tuple[tuple[int, ...], int], np.ndarray]
    _committing: set[int]

    def _jobs_of(self, object_id: int) -> Any:
        raise NotImplementedError

    def _start_new_object(self) -> None:
        raise NotImplementedError

    def _commit_current(self) -> int:
        """Commit the current object and start the next one; the committed object is final at once when none of its
        jobs runs, else when the last one finishes (:meth:`_job_finished`). Returns the committed id."""
        committed = self.object_id
        self._committing.add(committed)
        self._start_new_object()
        if not self._jobs_of(committed):
            self._finish_commit(committed)
        return committed

    def _job_finished(self, object_id: int) -> None:
        if object_id in self._committing and not self._jobs_of(object_id):
            self._finish_commit(object_id)

    def _finish_commit(self, object_id: int) -> None:
        """The committed object's jobs are done: drop its undo bases and release its sessions' history."""
        self._committing.discard(object_id)
        self._bases = {k: v for k, v in self._bases.items() if k[1] != object_id}
        if self.manager is not None:
            for session in self.manager.objects():
                if session.object_id == object_id:
                    self.manager.commit_object(session)

    def _begin_object(self, top: int, busy: Iterable[int]) -> None:
        """The next object gets an id above ``top`` (the largest label) and every id still computing (``busy``),
        and starts from nothing (no stale session of an earlier object)."""
        self.object_id = max([top, *busy]) + 1
        self._close_sessions(self.object_id)

    def _close_sessions(self, label: int) -> None:
        if self.manager is not None:
            for session in self.manager.objects():
                if session.object_id == label:
                    self.manager.close_object(session)
