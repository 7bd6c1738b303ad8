"""Click jobs run with a short interpreter switch interval (the click's thread gets the GIL back quickly from a
front-end thread running Python), and the interpreter's own comes back after the last one."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from napari_focsam.engine import handoff
from napari_focsam.engine.handoff import click_handoff, click_switch_interval, set_click_switch_interval
from napari_focsam.engine.jobs import JobRunner


@pytest.fixture(autouse=True)
def _restore():
    before_interval, before_setting = sys.getswitchinterval(), click_switch_interval()
    yield
    sys.setswitchinterval(before_interval)
    handoff._interval = before_setting


def test_a_click_job_runs_with_the_short_interval_and_a_bulk_job_does_not():
    sys.setswitchinterval(0.005)
    set_click_switch_interval(0.2)
    runner = JobRunner()  # callbacks run on the worker (no front-end loop needed)
    seen: dict[str, float] = {}
    try:
        runner.submit("click", lambda token: seen.setdefault("click", sys.getswitchinterval()), threads="interactive")
        runner.submit("embed", lambda token: seen.setdefault("bulk", sys.getswitchinterval()), threads="bulk")
        deadline = time.monotonic() + 30
        while runner.busy:
            assert time.monotonic() < deadline, "jobs still running"
            time.sleep(0.01)
    finally:
        runner.shutdown()
    assert seen["click"] == pytest.approx(0.0002)
    assert seen["bulk"] == pytest.approx(0.005)
    assert sys.getswitchinterval() == pytest.approx(0.005)  # back once the click ended


def test_overlapping_click_jobs_restore_the_interval_after_the_last():
    sys.setswitchinterval(0.005)
    set_click_switch_interval(0.2)
    first_in, second_done, inside = threading.Event(), threading.Event(), []

    def first() -> None:
        with click_handoff():
            first_in.set()
            second_done.wait(10)
            inside.append(sys.getswitchinterval())

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(10)
    with click_handoff():
        assert sys.getswitchinterval() == pytest.approx(0.0002)
    second_done.set()
    thread.join(10)
    assert inside == [pytest.approx(0.0002)]  # still short: the first job was running
    assert sys.getswitchinterval() == pytest.approx(0.005)


def test_off_and_lower_intervals_are_left_alone():
    set_click_switch_interval(None)
    sys.setswitchinterval(0.005)
    with click_handoff():
        assert sys.getswitchinterval() == pytest.approx(0.005)
    set_click_switch_interval(0.2)
    sys.setswitchinterval(0.0001)  # someone chose an even shorter one
    with click_handoff():
        assert sys.getswitchinterval() == pytest.approx(0.0001)
    assert sys.getswitchinterval() == pytest.approx(0.0001)


@pytest.mark.parametrize("text, expected", [("0.5", 0.0005), ("off", None), ("0", None), ("", None)])
def test_the_environment_setting_is_parsed(text, expected):
    assert handoff._parse(text) == (pytest.approx(expected) if expected else None)


@pytest.mark.parametrize("bad", ["fast", "-1", "5000", "nan"])
def test_a_bad_setting_gets_a_clear_message(bad):
    with pytest.raises(ValueError, match="milliseconds|between 0 and 1000"):
        handoff._parse(bad)
