"""The thread policy: interactive calls and bulk work get their own torch thread counts, per OS thread, and nothing
leaks into threads that are not ours."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from napari_focsam.engine import threads as T
from napari_focsam.engine.cpu_load import BusyMeter, read_proc_stat
from napari_focsam.engine.fallback import FallbackPredictor
from napari_focsam.engine.jobs import JobRunner
from napari_focsam.engine.manager import ModelManager


@pytest.fixture
def policy():
    """Interactive 1, bulk 2 for the test (whatever the machine), the old policy restored afterwards."""
    old = T.thread_policy()
    yield T.set_thread_policy(interactive=1, bulk=2)
    T.set_thread_policy(interactive=old.interactive, bulk=old.bulk, adaptive=old.adaptive)


def in_new_thread(func):
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(func).result()


def test_defaults_follow_the_core_count_and_whether_the_load_can_be_measured() -> None:
    assert T.default_policy(cores=2, bulk=2, measurable=True) == T.ThreadPolicy(interactive=2, bulk=2, adaptive=True)
    assert T.default_policy(cores=16, bulk=16, measurable=True).adaptive
    assert T.default_policy(cores=1, bulk=1, measurable=True) == T.ThreadPolicy(interactive=1, bulk=1)
    assert T.default_policy(cores=2, bulk=2, measurable=False) == T.ThreadPolicy(interactive=1, bulk=2)
    assert T.default_policy(cores=4, bulk=4, measurable=False).interactive == 1
    assert T.default_policy(cores=16, bulk=16, measurable=False) == T.ThreadPolicy(interactive=2, bulk=16)
    assert str(T.ThreadPolicy(2, 4, adaptive=True)) == "up to 2 interactive (adaptive) / 4 bulk threads"


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_bad_counts_are_refused_with_a_clear_message(bad) -> None:
    with pytest.raises(ValueError, match="whole number ≥ 1"):
        T.ThreadPolicy(interactive=bad, bulk=2)
    with pytest.raises(ValueError, match="unknown kind of work"):
        T.ThreadPolicy(1, 2).for_kind("clicks")


def test_environment_variables_set_the_policy_and_bad_ones_say_which() -> None:
    code = "from napari_focsam.engine.threads import thread_policy; p = thread_policy(); print(p.interactive, p.bulk)"
    env = dict(os.environ, NAPARI_FOCSAM_INTERACTIVE_THREADS="3", NAPARI_FOCSAM_BULK_THREADS="5")
    done = subprocess.run([sys.executable, "-c", code + "; print(p.adaptive)"], env=env, capture_output=True,
                          text=True, check=True)
    assert done.stdout.split() == ["3", "5", "False"]  # a count the user chose is not adapted
    env["NAPARI_FOCSAM_INTERACTIVE_THREADS"] = "many"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "NAPARI_FOCSAM_INTERACTIVE_THREADS='many'" in done.stderr


def test_use_threads_is_per_thread_and_new_threads_start_with_bulk(policy) -> None:
    with ThreadPoolExecutor(1) as clicks, ThreadPoolExecutor(1) as bulk:
        assert clicks.submit(T.use_threads, "interactive").result() == 1
        assert bulk.submit(T.use_threads, "bulk").result() == 2
        assert clicks.submit(torch.get_num_threads).result() == 1
        assert bulk.submit(torch.get_num_threads).result() == 2
        # torch.set_num_threads(1) also changed what threads started later begin with: put back to bulk
        assert clicks.submit(T.use_threads, "interactive").result() == 1
        assert in_new_thread(torch.get_num_threads) == 2
    assert torch.get_num_threads() == T._STARTUP_THREADS or torch.get_num_threads() == 2


def test_threads_for_restores_the_callers_count(policy) -> None:
    def work() -> tuple[int, int, int]:
        torch.set_num_threads(2)
        with T.threads_for("interactive") as n:
            inside = torch.get_num_threads()
        return n, inside, torch.get_num_threads()

    assert in_new_thread(work) == (1, 1, 2)


def test_the_job_runner_gives_each_job_its_kinds_count(policy) -> None:
    seen: dict[str, int] = {}
    done = threading.Event()
    runner = JobRunner(max_workers=1)  # one pool thread: it switches between the kinds
    try:
        for i, kind in enumerate(("interactive", "bulk", "interactive")):
            runner.submit(("k", i), lambda token, name=f"{kind}{i}": seen.setdefault(name, torch.get_num_threads()),
                          threads=kind)
        runner.background("prefetch", lambda token: seen.setdefault("background", torch.get_num_threads()),
                          on_done=lambda _: done.set())
        assert done.wait(30)
        while runner.busy:
            threading.Event().wait(0.01)
    finally:
        runner.shutdown()
    assert seen == {"interactive0": 1, "bulk1": 2, "interactive2": 1, "background": 2}


class _CountingFallback(FallbackPredictor):
    """The fallback, recording the thread count its embedding ran with."""

    embed_threads: list[int]

    def embed(self, image, *, cancel=None):
        self.embed_threads.append(torch.get_num_threads())
        return super().embed(image, cancel=cancel)


def test_an_embedding_computed_inside_a_click_job_uses_the_bulk_count(policy) -> None:
    predictor = _CountingFallback()
    predictor.embed_threads = []
    manager = ModelManager(predictor)
    image = np.zeros((40, 50), np.uint8)

    def click_job() -> tuple[int, int]:
        T.use_threads("interactive")
        manager.embed(image)
        return torch.get_num_threads(), len(predictor.embed_threads)

    assert in_new_thread(click_job) == (1, 1)  # back to the interactive count afterwards
    assert predictor.embed_threads == [2]


def test_an_embedding_elsewhere_keeps_the_callers_count(policy) -> None:
    """A Dask worker's (or a user's) deliberate count is left alone: only interactive work switches to bulk."""
    predictor = _CountingFallback()
    predictor.embed_threads = []
    manager = ModelManager(predictor)

    def worker_task() -> int:
        torch.get_num_threads()
        torch.set_num_threads(1)  # as stack/worker.py does for a Dask task thread
        manager.embed(np.zeros((40, 50), np.uint8))
        return torch.get_num_threads()

    assert in_new_thread(worker_task) == 1
    assert predictor.embed_threads == [1]


class _Machine:
    """A fake /proc/stat and clock: ``run(seconds, busy_cores)`` advances both as a 2-core machine would."""

    def __init__(self, cores: int = 2) -> None:
        self.cores, self.now, self.busy, self.total = cores, 100.0, 0.0, 0.0

    def run(self, seconds: float, busy_cores: float) -> None:
        self.now += seconds
        self.busy += seconds * busy_cores
        self.total += seconds * self.cores

    def read(self) -> tuple[float, float]:
        return self.busy, self.total


@pytest.fixture
def machine(monkeypatch):
    """The adaptive policy (at most 2 interactive threads) on a fake 2-core machine."""
    fake = _Machine()
    monkeypatch.setattr(T, "_meter", BusyMeter(reader=fake.read, clock=lambda: fake.now))
    monkeypatch.setattr(T, "_CORES", 2)
    monkeypatch.setattr(T, "_judged", None)
    old = T.thread_policy()
    T.set_thread_policy(interactive=2, bulk=2, adaptive=True)
    yield fake
    T.set_thread_policy(interactive=old.interactive, bulk=old.bulk, adaptive=old.adaptive)


def test_the_adaptive_count_follows_the_load_since_the_previous_job(machine) -> None:
    assert T.interactive_threads() == 1  # nothing measured yet: the cautious count
    machine.run(0.5, busy_cores=0.1)  # an idle machine between two clicks
    assert T.interactive_threads() == 2
    T.work_done()
    machine.run(0.5, busy_cores=1.0)  # a busy loop took a core
    assert T.interactive_threads() == 1
    T.work_done()
    machine.run(0.5, busy_cores=2.0)  # another program's two torch threads
    assert T.interactive_threads() == 1
    T.work_done()
    machine.run(0.5, busy_cores=0.3)  # napari drawing the last mask with a software renderer: 1.7 cores free
    assert T.interactive_threads() == 1
    T.work_done()
    machine.run(0.05, busy_cores=0.0)  # a click right after the last one: too short to judge, the count stands
    assert T.interactive_threads() == 1
    machine.run(1.0, busy_cores=0.0)
    assert T.interactive_threads() == 2


def test_the_job_runner_judges_each_interactive_job_and_marks_its_end(machine) -> None:
    seen: list[int] = []
    runner = JobRunner(max_workers=1)
    try:
        def job(token) -> None:
            seen.append(torch.get_num_threads())
            machine.run(0.05, busy_cores=2.0)  # the job's own work: not counted against the next job
        for i, busy in enumerate((0.0, 0.0, 1.5, 0.0)):
            machine.run(0.5, busy_cores=busy)
            done = threading.Event()
            runner.submit(("k", i), job, on_done=lambda _, d=done: d.set(),
                          threads="interactive")
            assert done.wait(30)
            while runner.busy:
                threading.Event().wait(0.01)
    finally:
        runner.shutdown()
    assert seen == [1, 2, 1, 2]  # the first without a window; the third after a busy half second


def test_a_fixed_count_is_never_adapted(machine) -> None:
    T.set_thread_policy(interactive=2)
    assert not T.thread_policy().adaptive
    machine.run(0.5, busy_cores=2.0)
    assert T.interactive_threads() == 2
    assert T.set_thread_policy(adaptive=True).adaptive


def test_the_meter_reads_this_machines_proc_stat() -> None:
    sample = read_proc_stat()
    if sample is None:
        pytest.skip("no /proc/stat on this system: the policy keeps a fixed count here")
    busy, total = sample
    assert 0 <= busy <= total
    assert read_proc_stat("/nonexistent/stat") is None
    meter = BusyMeter()
    assert meter.available and meter.busy_fraction() is None  # the first read only marks
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass  # this thread keeps (at least part of) a core busy
    fraction = meter.busy_fraction()
    assert fraction is not None and fraction > 0.1 / T._CORES


def test_cores_reserved_for_the_front_end_are_left_free(machine, monkeypatch) -> None:
    T.work_done()  # the first window starts
    machine.run(0.5, busy_cores=0.0)  # an idle 2-core machine
    assert T.interactive_threads() == 2
    assert T.interactive_threads(reserved=1.0) == 1  # napari's GUI thread and drawing take one core
    assert T.interactive_threads(reserved=2.0) == 1  # never fewer than one
    T.work_done()
    monkeypatch.setattr(T, "_CORES", 8)
    machine.run(0.5, busy_cores=0.0)
    assert T.interactive_threads(reserved=1.0) == 2  # enough cores: the policy's maximum


def test_the_job_runner_passes_its_gui_cores_to_interactive_jobs(machine) -> None:
    seen: list[int] = []
    for gui_cores in (0.0, 1.0):
        runner = JobRunner(max_workers=1, gui_cores=gui_cores)
        try:
            T.work_done()
            machine.run(0.5, busy_cores=0.0)
            done = threading.Event()
            runner.submit("k", lambda token: seen.append(torch.get_num_threads()), on_done=lambda _, d=done: d.set(),
                          threads="interactive")
            assert done.wait(30)
        finally:
            runner.shutdown()
    assert seen == [2, 1]
