"""The job runner the front-ends share (no Qt): per-key latest-wins, coalescing, cancel, the background queue."""

from __future__ import annotations

import os
import queue
import threading
import time

import pytest

from napari_focsam.engine.jobs import JobRunner
from napari_focsam.engine.types import Cancelled

TIMEOUT = 10.0


class FrontEnd:
    """A front-end thread stand-in: callbacks are queued and run by the test thread, as a GUI loop would."""

    def __init__(self):
        self.calls: queue.Queue = queue.Queue()
        self.thread = threading.current_thread()

    def dispatch(self, callback):
        self.calls.put(callback)

    def drain(self, runner, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while runner.busy:
            assert time.monotonic() < deadline, "jobs still running"
            try:
                self.calls.get(timeout=0.01)()
            except queue.Empty:
                pass


@pytest.fixture
def front():
    return FrontEnd()


@pytest.fixture
def runner(front):
    r = JobRunner(front.dispatch)
    yield r
    r.shutdown()


def _blocking(gate: threading.Event, started: threading.Event | None = None, value=None, log=None):
    def func(token):
        if started is not None:
            started.set()
        assert gate.wait(TIMEOUT)
        if log is not None:
            log.append(value)
        return value
    return func


def test_different_keys_run_concurrently_and_deliver_on_the_front_end(runner, front):
    gate, a, b = threading.Event(), threading.Event(), threading.Event()
    got = []
    runner.submit("a", _blocking(gate, a, 1), lambda r: got.append((r, threading.current_thread())))
    runner.submit("b", _blocking(gate, b, 2), lambda r: got.append((r, threading.current_thread())))
    assert a.wait(TIMEOUT) and b.wait(TIMEOUT)  # both started before either could finish
    gate.set()
    front.drain(runner)
    assert sorted(r for r, _ in got) == [1, 2] and all(t is front.thread for _, t in got)


def test_newer_requests_coalesce_into_one_pending_job(runner, front):
    gate, started = threading.Event(), threading.Event()
    ran, got, finished = [], [], []
    first = runner.submit("k", _blocking(gate, started, 1, ran), got.append, on_finished=lambda: finished.append(1))
    assert started.wait(TIMEOUT)
    runner.submit("k", _blocking(gate, None, 2, ran), got.append, on_finished=lambda: finished.append(2))
    runner.submit("k", _blocking(gate, None, 3, ran), got.append, on_finished=lambda: finished.append(3))
    assert first.token.cancelled  # superseded: it stops at its next cancellation point
    gate.set()
    front.drain(runner)
    assert ran == [1, 3]  # the replaced pending request never ran
    assert got == [1, 3]  # a superseded job that completed is still shown, before the newer result
    assert sorted(finished) == [1, 2, 3]


def test_a_cancelled_superseded_job_delivers_nothing_and_the_pending_one_runs(runner, front):
    started = threading.Event()

    def cancellable(token):
        started.set()
        while not token.cancelled:
            time.sleep(0.001)
        raise Cancelled("superseded")

    got, errors = [], []
    runner.submit("k", cancellable, got.append, errors.append)
    assert started.wait(TIMEOUT)
    runner.submit("k", lambda token: "latest", got.append, errors.append)
    front.drain(runner)
    assert got == ["latest"] and errors == []


def test_cancel_discards_running_and_pending_jobs_of_its_keys_only(runner, front):
    gate, started = threading.Event(), threading.Event()
    got = []
    runner.submit(("click", 1), _blocking(gate, started, "one"), got.append)
    assert started.wait(TIMEOUT)
    runner.submit(("click", 1), _blocking(gate, None, "one again"), got.append)
    runner.submit(("click", 2), _blocking(gate, None, "two"), got.append)
    assert runner.cancel(lambda key: key == ("click", 1)) == [("click", 1)]
    gate.set()
    front.drain(runner)
    assert got == ["two"]
    assert runner.active() == [] and not runner.busy


def test_failures_reach_on_error_once(runner, front):
    errors = []

    def broken(token):
        raise RuntimeError("decoder exploded")

    runner.submit("k", broken, lambda r: pytest.fail("no result"), errors.append)
    front.drain(runner)
    assert [str(e) for e in errors] == ["decoder exploded"]


def test_foreground_jobs_never_wait_behind_background_jobs(runner, front):
    gate, started = threading.Event(), threading.Event()
    niceness = []

    def prefetch(token):
        if hasattr(os, "getpriority"):
            niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        started.set()
        assert gate.wait(TIMEOUT)
        return "prefetched"

    got = []
    runner.background("p1", prefetch, got.append)
    runner.background("p2", lambda token: "queued", got.append)
    runner.background("p2", lambda token: "queued again", got.append)  # replaces the queued one
    assert started.wait(TIMEOUT)
    done = threading.Event()
    runner.submit("click", lambda token: "mask", lambda r: (got.append(r), done.set()))
    deadline = time.monotonic() + TIMEOUT
    while not done.is_set():
        assert time.monotonic() < deadline
        try:
            front.calls.get(timeout=0.01)()
        except queue.Empty:
            pass
    assert got == ["mask"] and runner.background_busy
    gate.set()
    front.drain(runner)
    assert got == ["mask", "prefetched", "queued again"]
    if niceness:
        assert niceness[0] >= os.getpriority(os.PRIO_PROCESS, 0) + 1  # lower priority than the process


def test_clear_background_drops_the_queued_jobs(runner, front):
    gate, started = threading.Event(), threading.Event()
    got = []
    runner.background("p1", _blocking(gate, started, 1), got.append)
    runner.background("p2", _blocking(gate, None, 2), got.append)
    assert started.wait(TIMEOUT)
    runner.clear_background()
    gate.set()
    front.drain(runner)
    assert got == [1]


def test_cancel_background_cancels_the_running_job_and_drops_the_queued_ones(runner, front):
    started, stopped = threading.Event(), threading.Event()
    got, errors = [], []

    def prefetch(token):  # a long prefetch: stops at its next cancellation point
        started.set()
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                token.raise_if_cancelled()
            except BaseException:
                stopped.set()
                raise
            time.sleep(0.005)
        return "ran to the end"

    runner.background(("tiles", 1), prefetch, got.append, errors.append)
    runner.background(("tiles", 2), lambda token: "queued", got.append, errors.append)
    runner.background("slice", lambda token: "kept", got.append, errors.append)
    assert started.wait(TIMEOUT)
    assert runner.background_keys() == [("tiles", 1), ("tiles", 2), "slice"]
    hit = runner.cancel_background(lambda key: key[0] == "tiles")
    assert sorted(map(str, hit)) == sorted(map(str, [("tiles", 1), ("tiles", 2)]))
    assert stopped.wait(TIMEOUT)
    front.drain(runner)
    assert got == ["kept"] and errors == []  # a cancelled job is no error
    assert runner.background_keys() == []
