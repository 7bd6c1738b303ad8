"""The napari side of the :class:`~napari_focsam.engine.jobs.JobRunner`: results delivered on the GUI thread through a
queued Qt signal, progress reports for the widget's bar, failures as notifications, and ``wait`` for notebooks and
tests. Part of :class:`~napari_focsam.plugin.controller.AnnotationController`.

The runner's own threads are used rather than napari's ``create_worker``: Qt's global pool has one thread per core,
so on a 2-core laptop a click waited behind two prefetch embeddings; the runner keeps clicks (a pool of their own,
latest-wins per slice and object) and prefetches (one low-priority thread) apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any

from napari.utils.notifications import show_error
from qtpy.QtCore import QObject
from qtpy.QtCore import Signal as QtSignal

from ..engine.jobs import Job, JobRunner
from ..engine.types import Cancelled, CancelToken
from .controller_parts import ControllerParts

#: cores napari takes while a click is decoded (its GUI thread adds the clicked point, the window draws it): the
#: adaptive click thread count leaves them free (docs/performance.md, "Responsiveness in the widget")
GUI_CORES = 1.0


class _Dispatcher(QObject):
    """Runs callbacks from the runner's threads on the GUI thread (a queued signal to an object living there)."""

    call = QtSignal(object)

    def __init__(self) -> None:
        super().__init__()
        self.call.connect(lambda callback: callback())


class _CountingToken(CancelToken):
    """A cancel token that reports each time the computation checks it (its stage boundaries) as one step done."""

    def __init__(self, step: Callable[[], None]) -> None:
        super().__init__()
        self._step = step

    def raise_if_cancelled(self) -> None:
        self._step()
        super().raise_if_cancelled()


class GuiJobs(ControllerParts):
    """Runs the controller's jobs (a controller mixin); ``self.jobs`` is the runner."""

    def _init_jobs(self) -> None:
        self._dispatcher = _Dispatcher()  # lives on the GUI thread: its queued signal runs callbacks there
        self.jobs = JobRunner(dispatch=self._dispatcher.call.emit, gui_cores=GUI_CORES)

    @property
    def busy(self) -> bool:
        return self.jobs.busy

    def run_job(self, func: Callable[[CancelToken], Any], on_done: Callable[[Any], None], *,
                key: Hashable | None = None, token: CancelToken | None = None, progress: str | None = None,
                steps: int | None = None, on_finished: Callable[[], None] | None = None,
                supersede: bool = True) -> Job:
        """Run ``func(token)`` in a worker thread; ``on_done(result)`` runs on the GUI thread, a failure becomes a
        notification, ``on_finished()`` runs last in every case. Jobs with the same ``key`` are latest-wins (see
        :class:`JobRunner`); without one the job is on its own.

        ``progress`` names the job in the controller's :attr:`progress` signal (the widget shows a bar): with
        ``steps`` it counts the computation's cancellation points (an embedding has one per ViT block) up to
        ``steps``. napari's own progress bars are not used for these jobs: while one is open napari animates a busy
        indicator, every frame of which repaints the window; with software OpenGL that made an embedding 50-70 %
        slower with the window shown (``benchmarks/bench_widget.py``)."""
        serial = None
        if progress is not None:
            self._progress_serial = serial = getattr(self, "_progress_serial", 0) + 1  # the bar shows the latest job
            total = steps or 0
            self.progress.emit(progress, 0, total)
            if steps and token is None:
                count = [0]

                def step() -> None:
                    count[0] = min(count[0] + 1, total - 1)  # the last step is the job's end
                    if serial == self._progress_serial:
                        self.progress.emit(progress, count[0], total)

                token = _CountingToken(lambda: self._dispatcher.call.emit(step))

        def finished() -> None:
            if serial is not None and serial == self._progress_serial:
                self.progress.emit("", 0, 0)  # done (and no later job took the bar over): the bar goes away
            if on_finished is not None:
                on_finished()

        return self.jobs.submit(("job", object()) if key is None else key, func, on_done, self._on_error,
                                on_finished=finished, token=token, supersede=supersede)

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            return
        show_error(f"FocSAM: {exc}")
        self.status.emit(f"error: {exc}")

    def wait(self, timeout: float = 60.0, match: Callable[[Any], bool] | None = None) -> None:
        """Block (processing Qt events) until no job is running (or none of the keys ``match`` selects): for
        notebooks and tests."""
        from qtpy.QtWidgets import QApplication

        deadline = time.monotonic() + timeout
        while self.jobs.busy if match is None else self.jobs.active(match):
            if time.monotonic() > deadline:
                raise TimeoutError("FocSAM jobs still running")
            QApplication.processEvents()
            time.sleep(0.002)
        QApplication.processEvents()
