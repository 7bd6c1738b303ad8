"""One job runner for the interactive front-ends: per-key latest-wins with coalescing, and a low-priority queue.

A front-end (the napari widget, a notebook) submits work under a *key* — for clicks, ``(slice, object)`` — and
gets the result through a callback run on its own thread. The rules:

* **One job per key at a time.** Jobs of different keys run concurrently on a thread pool; jobs of one key run one
  after the other, so a session is never touched by two jobs at once.
* **Coalescing.** While a job of a key runs, a newer submission for that key becomes its single *pending* job; a
  still newer one replaces the pending job (which is dropped without running). When the running job ends, the
  pending one starts — with the latest request only.
* **Latest wins, per key.** A newer submission cancels the running job's :class:`CancelToken` (unless
  ``supersede=False``): it stops at its next cancellation point. A job that completes all the same is delivered —
  its result is newer than what the front-end shows, and the newer job's result follows it (per key, results
  arrive in submission order). :meth:`JobRunner.cancel` is what discards: no result of a job submitted before it is
  delivered. Keys are independent: a job of one key never drops or cancels another key's result.
* **Background jobs** (e.g. prefetching embeddings) run one at a time on their own low-priority thread (``nice``
  +10 on Linux), in submission order, never in the pool: a foreground job never waits behind them.

Threads: a plain :class:`~concurrent.futures.ThreadPoolExecutor` for foreground keys and one dedicated thread for the
background queue. Results reach the front-end through ``dispatch(callback)``, which must run ``callback`` on the
front-end's thread (napari: a queued Qt signal; a notebook: the kernel's event loop); without one, callbacks run on
the worker thread. Plain threads rather than a toolkit's workers keep this module free of Qt and Jupyter, and keep
the pool's size ours: Qt's global pool has one thread per core, so there a click waited behind two prefetches.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .._cancel import Cancelled, CancelToken
from .threads import use_threads, work_done

#: the ``nice`` increment of the background thread (Linux; lower priority than the clicks)
BACKGROUND_NICE = 10


@dataclass(eq=False)
class Job:
    """One submission: ``func(token)`` runs in a worker thread; the callbacks run on the front-end's thread."""

    key: Hashable
    func: Callable[[CancelToken], Any]
    on_done: Callable[[Any], None] | None = None
    on_error: Callable[[BaseException], None] | None = None
    on_finished: Callable[[], None] | None = None  # always last: after on_done/on_error, or when dropped
    token: CancelToken = field(default_factory=CancelToken)
    seq: int = 0
    threads: str | None = "bulk"  # the thread policy's kind of work (see .threads); None leaves the count alone
    gui_cores: float = 0.0  # cores the front-end's own work takes beside an interactive job (see .threads)


@dataclass(eq=False)
class _Slot:
    running: Job | None = None
    pending: Job | None = None
    floor: int = 0  # results of jobs with seq <= floor are not delivered (cancelled, or older than one delivered)
    inflight: int = 0  # submitted jobs of this key whose callbacks have not run yet


class JobRunner:
    """Runs the front-end's jobs (see the module docstring for the rules)."""

    def __init__(self, dispatch: Callable[[Callable[[], None]], None] | None = None, *,
                 max_workers: int | None = None, background_nice: int = BACKGROUND_NICE,
                 gui_cores: float = 0.0) -> None:
        self._dispatch = dispatch or (lambda callback: callback())
        self._gui_cores = gui_cores
        self._pool = ThreadPoolExecutor(max_workers=max_workers or max(4, min(8, os.cpu_count() or 1)),
                                        thread_name_prefix="focsam-job")
        self._lock = threading.RLock()
        self._slots: dict[Hashable, _Slot] = {}
        self._seq = 0
        self._outstanding = 0  # submitted jobs whose on_finished has not run yet
        self._background: deque[Job] = deque()
        self._background_running: Job | None = None
        self._background_nice = background_nice
        self._background_thread: threading.Thread | None = None
        self._closed = False

    # ------------------------------------------------------------------ submitting
    def submit(self, key: Hashable, func: Callable[[CancelToken], Any], on_done: Callable[[Any], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None, *,
               on_finished: Callable[[], None] | None = None, token: CancelToken | None = None,
               supersede: bool = True, threads: str | None = "bulk") -> Job:
        """Run ``func(token)`` for ``key`` now, or after the key's running job (replacing its pending one).

        ``supersede=False`` lets the running job finish uncancelled (e.g. an embedding still worth caching).
        ``threads`` is the kind of work for the thread policy (:mod:`.threads`): ``"interactive"`` for clicks,
        ``"bulk"`` (the default) for embeddings and batch work; interactive jobs leave the runner's ``gui_cores`` to
        the front-end's own work (an adaptive thread count only)."""
        job = Job(key, func, on_done, on_error, on_finished, token or CancelToken(), threads=threads,
                  gui_cores=self._gui_cores)
        dropped = None
        with self._lock:
            if self._closed:
                raise RuntimeError("the job runner is shut down")
            self._seq += 1
            job.seq = self._seq
            self._outstanding += 1
            slot = self._slots.setdefault(key, _Slot())
            slot.inflight += 1
            if slot.running is None:
                slot.running = job
                self._pool.submit(self._run_key, key)
            else:
                dropped, slot.pending = slot.pending, job
                if supersede:
                    slot.running.token.cancel()
        if dropped is not None:
            self._finish(dropped, None, None, deliver=False, slot=slot)
        return job

    def background(self, key: Hashable, func: Callable[[CancelToken], Any],
                   on_done: Callable[[Any], None] | None = None,
                   on_error: Callable[[BaseException], None] | None = None) -> Job:
        """Queue ``func(token)`` on the low-priority background thread; a queued job of the same key is replaced."""
        job = Job(key, func, on_done, on_error)
        dropped = []
        with self._lock:
            if self._closed:
                raise RuntimeError("the job runner is shut down")
            self._outstanding += 1
            dropped = [j for j in self._background if j.key == key]
            for j in dropped:
                self._background.remove(j)
            self._background.append(job)
            if self._background_thread is None:  # the thread ends when the queue is empty
                self._background_thread = threading.Thread(target=self._background_loop, daemon=True,
                                                           name="focsam-background")
                self._background_thread.start()
        for j in dropped:
            self._finish(j, None, None, deliver=False)
        return job

    def clear_background(self) -> None:
        """Drop the queued background jobs that have not started (the running one finishes)."""
        with self._lock:
            dropped = list(self._background)
            self._background.clear()
        for job in dropped:
            self._finish(job, None, None, deliver=False)

    def cancel_background(self, match: Callable[[Any], bool] | Hashable | None = None) -> list[Hashable]:
        """Drop the queued background jobs of the keys ``match`` selects (a key, a predicate on keys; None: all) and
        cancel the running one if it is selected (it stops at its next cancellation point; a result it returns all
        the same is still delivered). Returns the keys hit."""
        select = (lambda key: True) if match is None else match if callable(match) else (lambda key: key == match)
        with self._lock:
            dropped = [job for job in self._background if select(job.key)]
            for job in dropped:
                self._background.remove(job)
            running = self._background_running
            hit = [job.key for job in dropped]
            if running is not None and select(running.key):
                running.token.cancel()
                hit.append(running.key)
        for job in dropped:
            self._finish(job, None, None, deliver=False)
        return hit

    def background_keys(self) -> list[Hashable]:
        """The keys of the background jobs not finished: the running one first, then the queue in order."""
        with self._lock:
            running = [] if self._background_running is None else [self._background_running.key]
            return running + [job.key for job in self._background]

    def cancel(self, match: Callable[[Any], bool] | Hashable) -> list[Hashable]:
        """Cancel the running and drop the pending jobs of the keys ``match`` selects (a key, or a predicate on
        keys); no result of theirs submitted so far will be delivered. Returns the keys that had jobs."""
        select = match if callable(match) else (lambda key: key == match)
        hit, dropped = [], []
        with self._lock:
            for key, slot in self._slots.items():
                if not select(key):
                    continue
                hit.append(key)
                slot.floor = self._seq
                if slot.running is not None:
                    slot.running.token.cancel()
                if slot.pending is not None:
                    dropped.append((slot.pending, slot))
                    slot.pending = None
        for job, slot in dropped:
            self._finish(job, None, None, deliver=False, slot=slot)
        return hit

    # ------------------------------------------------------------------ state
    def active(self, match: Callable[[Any], bool] | Hashable | None = None) -> list[Any]:
        """The keys with a job not finished yet, callbacks included (all keys, or those ``match`` selects)."""
        select = (lambda key: True) if match is None else match if callable(match) else (lambda key: key == match)
        with self._lock:
            return [key for key in self._slots if select(key)]

    @property
    def busy(self) -> bool:
        """Whether any job (foreground or background) has not finished, its callbacks included."""
        with self._lock:
            return self._outstanding > 0

    @property
    def background_busy(self) -> bool:
        with self._lock:
            return self._background_running is not None or bool(self._background)

    def shutdown(self) -> None:
        """Cancel everything and stop the threads (running jobs end at their next cancellation point)."""
        self.cancel(lambda key: True)
        self.clear_background()
        with self._lock:
            self._closed = True
            running = self._background_running
        if running is not None:
            running.token.cancel()
        self._pool.shutdown(wait=False)

    # ------------------------------------------------------------------ workers
    def _run_key(self, key: Hashable) -> None:
        while True:
            with self._lock:
                job = self._slots[key].running
            assert job is not None  # a key's thread runs while it has a running job
            result, error = _call(job)
            with self._lock:
                slot = self._slots[key]
                slot.running, slot.pending = slot.pending, None
                start_next = slot.running is not None
            self._finish(job, result, error, deliver=True, slot=slot)
            if not start_next:
                return

    def _background_loop(self) -> None:
        if self._background_nice and hasattr(os, "setpriority"):
            try:  # Linux: the nice value is per thread; the threads torch starts from here inherit it
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self._background_nice)
            except OSError:
                pass
        while True:
            with self._lock:
                if not self._background or self._closed:
                    self._background_thread = None
                    return
                job = self._background_running = self._background.popleft()
            result, error = _call(job)
            with self._lock:
                self._background_running = None
            self._finish(job, result, error, deliver=True)

    def _finish(self, job: Job, result: Any, error: BaseException | None, *, deliver: bool,
                slot: _Slot | None = None) -> None:
        """Hand the outcome to the front-end's thread; there it is delivered unless cancelled or out of date."""

        def on_front_end() -> None:
            try:
                if deliver and slot is not None:
                    with self._lock:
                        deliver_now = job.seq > slot.floor
                        if deliver_now:
                            slot.floor = job.seq
                else:
                    deliver_now = deliver
                if deliver_now:
                    if error is None and job.on_done is not None:
                        job.on_done(result)
                    elif error is not None and not isinstance(error, Cancelled) and job.on_error is not None:
                        job.on_error(error)
            finally:
                # the key stops being active before on_finished runs, so that on_finished sees whether other jobs
                # of the key remain (a committed object is finished off when its last job is); busy stays true
                # until on_finished has run
                with self._lock:
                    if slot is not None:
                        slot.inflight -= 1
                        if slot.inflight == 0 and slot.running is None and self._slots.get(job.key) is slot:
                            del self._slots[job.key]
                try:
                    if job.on_finished is not None:
                        job.on_finished()
                finally:
                    with self._lock:
                        self._outstanding -= 1

        self._dispatch(on_front_end)


def _call(job: Job) -> tuple[Any, BaseException | None]:
    try:
        if job.threads is not None:
            use_threads(job.threads, job.gui_cores)
        return job.func(job.token), None
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the front-end as a message
        return None, exc
    finally:
        if job.threads is not None:
            work_done()  # the adaptive interactive count judges the load from here on
