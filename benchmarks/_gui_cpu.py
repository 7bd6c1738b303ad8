"""The CPU time a click costs napari's GUI thread and Mesa's rasterizer, by part (for ``bench_widget.py --gui-cpu``).

CPU time, unlike wall time, hardly depends on what else runs on the machine, so this split stays meaningful on a
loaded machine. The GUI thread is profiled with :mod:`cProfile` on its own CPU clock (``time.thread_time``); the
parts are the cumulative times of the functions named in :data:`PARTS` (they do not overlap). Mesa's software
rasterizer threads (``llvmpipe-*``, Linux) are read from ``/proc/self/task``.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import time
from pathlib import Path

#: part → (file name ending, function name) whose cumulative GUI-thread CPU time is that part; the plugin's
#: handler of the new point runs inside napari's ``Points.add`` and is subtracted from it
PARTS = {
    "napari adds the point": ("layers/points/points.py", "add"),
    "frames drawn (vispy)": ("app/backends/_qt.py", "paintGL"),
    "layer list repainted": ("containers/_layer_delegate.py", "paint"),
    "plugin: prompts read, job started": ("napari_focsam/plugin/prompt_input.py", "_on_points_data"),
    "plugin: mask written": ("napari_focsam/plugin/layers.py", "write_object"),
}


def rasterizer_seconds() -> float:
    """CPU seconds used so far by this process's llvmpipe threads (0 where unknown)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for task in Path("/proc/self/task").glob("*"):
        try:
            if not (task / "comm").read_text().startswith("llvmpipe"):
                continue
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


class GuiCpu:
    """Profile the calling (GUI) thread's CPU time while enabled; :meth:`summary` gives ms per click by part."""

    def __init__(self) -> None:
        self.profile = cProfile.Profile(time.thread_time)
        self.clicks = 0
        self.thread_seconds = 0.0
        self.raster_seconds = 0.0
        self._start: tuple[float, float] | None = None

    def __enter__(self) -> GuiCpu:
        self._start = (time.thread_time(), rasterizer_seconds())
        self.profile.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        self.profile.disable()
        assert self._start is not None
        self.thread_seconds += time.thread_time() - self._start[0]
        self.raster_seconds += rasterizer_seconds() - self._start[1]
        self.clicks += 1

    def summary(self) -> str:
        """One line: GUI thread ms per click in total and by part, and the rasterizer's ms per click."""
        stats = pstats.Stats(self.profile).stats  # type: ignore[attr-defined]
        parts = dict.fromkeys(PARTS, 0.0)
        for (filename, _, name), (_, _, _, cumulative, _) in stats.items():
            for part, (ending, function) in PARTS.items():
                if name == function and filename.replace(os.sep, "/").endswith(ending):
                    parts[part] += cumulative
        parts["napari adds the point"] -= parts["plugin: prompts read, job started"]
        n = max(1, self.clicks)
        cells = [f"{part} {1000 * seconds / n:.0f}" for part, seconds in parts.items()]
        return (f"GUI thread {1000 * self.thread_seconds / n:.0f} ms CPU per click ({', '.join(cells)}); "
                f"rasterizer threads {1000 * self.raster_seconds / n:.0f} ms")
