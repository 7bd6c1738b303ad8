"""How busy the machine's cores were between two moments: what the adaptive interactive thread count reads.

The measurement is the whole machine's busy CPU time (every process, this one included: napari's drawing, a
prefetch embedding, a browser, another program's torch threads) over the wall time since the last :meth:`mark`,
read from Linux's ``/proc/stat``. Where that file does not exist (macOS, Windows) the meter reads nothing and the
thread policy keeps its fixed count.

Reading ``/proc/stat`` costs a few microseconds; it counts in clock ticks (10 ms on most kernels), so windows
shorter than :data:`MIN_WINDOW` are not judged (the previous judgement stands).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

#: the shortest window a judgement is made on (seconds); shorter gaps keep the previous judgement
MIN_WINDOW = 0.1


def read_proc_stat(path: str = "/proc/stat") -> tuple[float, float] | None:
    """The machine's (busy, total) CPU seconds since boot, summed over its CPUs, or None where unreadable."""
    try:
        with open(path, encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        return None
    try:
        ticks = [int(value) for value in fields[1:9]]
    except ValueError:
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    total = sum(ticks)  # guest time is already inside user time
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (total - idle) / hz, total / hz


class BusyMeter:
    """The fraction of the machine's CPU time that was busy since the last :meth:`mark`.

    ``reader`` returns (busy, total) CPU seconds since some fixed origin, or None when unknown; ``clock`` is a
    monotonic wall clock (both replaceable for tests)."""

    def __init__(self, reader: Callable[[], tuple[float, float] | None] = read_proc_stat,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._reader = reader
        self._clock = clock
        self._lock = threading.Lock()
        self._mark: tuple[float, tuple[float, float]] | None = None
        self.available = reader() is not None

    def mark(self) -> None:
        """Start a new window now (at the end of our own interactive work, so the window holds only what others
        did, and what we did in the background)."""
        sample = self._reader()
        if sample is not None:
            with self._lock:
                self._mark = (self._clock(), sample)

    def busy_fraction(self) -> float | None:
        """Busy CPU time / total CPU time since the last mark, in [0, 1]; None when unknown, before the first mark
        (which this call then sets) or when the window is shorter than :data:`MIN_WINDOW`."""
        sample = self._reader()
        if sample is None:
            return None
        now = self._clock()
        with self._lock:
            mark = self._mark
            if mark is None:
                self._mark = (now, sample)
            if mark is None or now - mark[0] < MIN_WINDOW:
                return None
        busy, total = sample[0] - mark[1][0], sample[1] - mark[1][1]
        if total <= 0:
            return None
        return min(1.0, max(0.0, busy / total))
