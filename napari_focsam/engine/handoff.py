"""How fast a click's thread gets the Python interpreter back while the front-end's thread runs Python.

A click's model step is a few hundred torch calls; each releases the interpreter lock (the GIL) while it computes and
takes it back when it returns. While the front-end's thread runs Python at the same time (napari adding the clicked
point and drawing the frame, a notebook kernel answering its comm), the click's thread waits for the lock after
every call, and CPython hands it over only once the holder has run for the *switch interval*
(``sys.getswitchinterval()``, 5 ms by default). Measured on a 2-core machine (docs/performance.md, "Interpreter
hand-off"): a ViT-B-sized click took 31 ms alone and 147 ms while another thread of the process ran Python; 71 ms
with a 0.2 ms interval.

So while a front-end's click job runs (:class:`~napari_focsam.engine.jobs.JobRunner`, ``threads="interactive"``),
the interval is lowered to 0.2 ms, and put back when the last such job ends. The other threads pay a little more
switching for those milliseconds. :func:`set_click_switch_interval` (or the environment variable
``NAPARI_FOCSAM_SWITCH_INTERVAL_MS``, read at import; ``0`` or ``off``: leave the interval alone) changes it.
An interval already lower than this one is left as it is.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator

__all__ = ["DEFAULT_INTERVAL_MS", "click_handoff", "click_switch_interval", "set_click_switch_interval"]

DEFAULT_INTERVAL_MS = 0.2
ENV_INTERVAL = "NAPARI_FOCSAM_SWITCH_INTERVAL_MS"

_lock = threading.Lock()
_running = 0  # click jobs inside click_handoff()
_saved: float | None = None  # the interval before the first of them


def _parse(value: str | float | None) -> float | None:
    """An interval in milliseconds as seconds; None for off (0, "off", "none", "")."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "off", "none", "0"):
            return None
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{ENV_INTERVAL} must be a number of milliseconds or 'off', got {text!r}") from None
    if not value == value or value < 0 or value > 1000:  # NaN, negative, absurd
        raise ValueError(f"the click switch interval must be between 0 and 1000 ms, got {value!r}")
    return float(value) / 1000 if value > 0 else None


_interval: float | None = _parse(os.environ.get(ENV_INTERVAL, str(DEFAULT_INTERVAL_MS)))


def click_switch_interval() -> float | None:
    """The switch interval (seconds) click jobs run with; None when they leave it alone."""
    return _interval


def set_click_switch_interval(milliseconds: float | None) -> None:
    """Set the switch interval click jobs run with, in milliseconds (None or 0: leave the interpreter's alone)."""
    global _interval
    _interval = _parse(milliseconds)


@contextlib.contextmanager
def click_handoff() -> Iterator[None]:
    """Run the block (a click job) with the click switch interval; the interpreter's own comes back after the last
    block ends."""
    global _running, _saved
    with _lock:
        if _running == 0:
            _saved = None
            current = sys.getswitchinterval()
            if _interval is not None and _interval < current:
                _saved = current
                sys.setswitchinterval(_interval)
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0 and _saved is not None:
                sys.setswitchinterval(_saved)
                _saved = None
