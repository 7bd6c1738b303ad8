"""How many CPU threads torch may use for each kind of work: few for interactive calls, all for bulk work.

A click's decoder pass is a chain of small operations, each a short parallel region of torch's OpenMP threads; an
embedding is a few large matrix products and keeps every core busy. Measured on a 2-core machine (docs/performance.md,
"Thread policy"): on an idle machine a click is faster on two threads than on one (SAM ViT-B-sized, 29–33 ms against
49–51 ms); but when another program, or napari's own drawing, takes a core, every parallel region of a two-thread
click waits for the descheduled thread (100–1,000 ms a click under a 2-thread torch job, against 40–80 ms on one
thread). So the policy has two numbers:

* ``interactive``: the most threads for clicks, boxes, undo/redo replays and FocSAM's refiner (the job runner's click
  jobs). With ``adaptive`` (the default where the load can be measured: Linux), a job gets fewer when the machine was
  busy since the previous job ended (:mod:`.cpu_load`): with ``c`` usable cores and a busy fraction ``f`` of the
  machine's CPU time in that window, ``floor(c·(1−f) + 0.25)`` threads, at least 1 and at most ``interactive``.
  A window shorter than 0.1 s (clicks in quick succession) keeps the previous count; before any window, 1. A
  front-end whose own work runs at the same time as its clicks (napari's GUI thread adding the clicked point and the
  window drawing it) reserves cores for it: ``floor(c·(1−f) − r + 0.25)`` (the job runner's ``gui_cores``).
* ``bulk``: threads for embeddings, stacks and batch work — by default torch's own setting when this module was
  first imported (the number of cores, or ``OMP_NUM_THREADS``).

The defaults: ``interactive`` at most 2, adaptive, on machines with at least 2 cores where ``/proc/stat`` can be read;
elsewhere a fixed 1 on machines with up to 4 cores and 2 above. Users set a fixed count with :func:`set_thread_policy`
or the environment variables ``NAPARI_FOCSAM_INTERACTIVE_THREADS`` and ``NAPARI_FOCSAM_BULK_THREADS`` (read when this
module is imported); ``set_thread_policy(adaptive=True)`` makes a count the adaptive maximum again.

Torch keeps its thread count per OS thread: :func:`use_threads` sets it for the calling thread and leaves it so
(for the job runner's own threads); :func:`threads_for` sets it for a block and restores the caller's count (for
code that may run on a user's thread); :func:`bulk_work` is an embedding's: the bulk count inside interactive work,
the caller's count anywhere else. ``torch.set_num_threads`` also changes the count that threads started later
begin with; that default is put back to ``bulk`` after each change, so other libraries' threads are not slowed down.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .cpu_load import BusyMeter

KINDS = ("interactive", "bulk")
ENV_INTERACTIVE = "NAPARI_FOCSAM_INTERACTIVE_THREADS"
ENV_BULK = "NAPARI_FOCSAM_BULK_THREADS"
#: part of a core that, free, counts as a whole free core for the adaptive interactive count
FREE_MARGIN = 0.25


@dataclass(frozen=True)
class ThreadPolicy:
    """Torch intra-op threads for interactive calls (at most, when ``adaptive``) and for bulk work."""

    interactive: int
    bulk: int
    adaptive: bool = False

    def __post_init__(self) -> None:
        for kind in KINDS:
            value = getattr(self, kind)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"the number of {kind} threads must be a whole number ≥ 1, got {value!r}")

    def for_kind(self, kind: str) -> int:
        if kind not in KINDS:
            raise ValueError(f"unknown kind of work {kind!r}; one of {KINDS}")
        return self.interactive if kind == "interactive" else self.bulk

    def __str__(self) -> str:
        interactive = f"up to {self.interactive} interactive (adaptive)" if self.adaptive else \
            f"{self.interactive} interactive"
        return f"{interactive} / {self.bulk} bulk threads"


def usable_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_policy(cores: int | None = None, bulk: int | None = None,
                   measurable: bool | None = None) -> ThreadPolicy:
    """The default policy for a machine with ``cores`` usable cores (this machine's by default) on which the load
    can (``measurable``; this machine's by default) or cannot be measured."""
    cores = usable_cores() if cores is None else cores
    measurable = _meter.available if measurable is None else measurable
    bulk = max(1, bulk or _STARTUP_THREADS)
    if measurable and cores >= 2:
        return ThreadPolicy(interactive=2, bulk=bulk, adaptive=True)
    return ThreadPolicy(interactive=1 if cores <= 4 else 2, bulk=bulk)


def _from_environment(policy: ThreadPolicy) -> ThreadPolicy:
    values = {}
    for kind, name in (("interactive", ENV_INTERACTIVE), ("bulk", ENV_BULK)):
        text = os.environ.get(name, "").strip()
        if text:
            try:
                values[kind] = int(text)
            except ValueError:
                raise ValueError(f"{name}={text!r}: expected a whole number of threads ≥ 1") from None
    if "interactive" in values:
        values["adaptive"] = False  # a count the user chose is kept as it is
    return ThreadPolicy(**{**policy.__dict__, **values})


_STARTUP_THREADS = torch.get_num_threads()
_CORES = usable_cores()
_meter = BusyMeter()
_judged: float | None = None  # the free cores last judged (adaptive interactive count)
_lock = threading.Lock()
_policy = _from_environment(default_policy())
_local = threading.local()
_anchor: ThreadPoolExecutor | None = None


def thread_policy() -> ThreadPolicy:
    """The policy in force."""
    return _policy


def set_thread_policy(interactive: int | None = None, bulk: int | None = None,
                      adaptive: bool | None = None) -> ThreadPolicy:
    """Change the policy (``None`` keeps a value); takes effect at the next job of each kind. Returns it.

    An ``interactive`` count given without ``adaptive`` is fixed; ``adaptive=True`` makes it the most an
    interactive job gets."""
    global _policy
    if adaptive is None:
        adaptive = _policy.adaptive if interactive is None else False
    with _lock:
        _policy = ThreadPolicy(interactive=_policy.interactive if interactive is None else interactive,
                               bulk=_policy.bulk if bulk is None else bulk, adaptive=bool(adaptive))
        return _policy


def interactive_threads(reserved: float = 0.0) -> int:
    """The thread count for an interactive job starting now, leaving ``reserved`` cores to work that runs beside it
    (see the module's docstring)."""
    global _judged
    policy = _policy
    if not policy.adaptive:
        return policy.interactive
    fraction = _meter.busy_fraction()
    with _lock:
        if fraction is not None:
            _judged = _CORES * (1.0 - fraction)
        if _judged is None:
            return 1
        return max(1, min(policy.interactive, int(_judged - reserved + FREE_MARGIN)))


def work_done() -> None:
    """Our own work of either kind has ended: the adaptive count's next window starts now."""
    if _policy.adaptive:
        _meter.mark()


def _count(kind: str, reserved: float = 0.0) -> int:
    n = _policy.for_kind(kind)
    return interactive_threads(reserved) if kind == "interactive" else n


def _set_this_thread(n: int) -> None:
    torch.get_num_threads()  # torch sets a thread's count on its first use: do that first, or it would undo ours
    if getattr(_local, "threads", None) != n or torch.get_num_threads() != n:
        torch.set_num_threads(n)
        _local.threads = n
        if n != _policy.bulk:
            _reset_default()


def _reset_default() -> None:
    """Put the count that new threads start with back to ``bulk`` (set from a thread of ours that does no work)."""
    global _anchor
    with _lock:
        if _anchor is None:
            _anchor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="focsam-threads")
        anchor = _anchor
    anchor.submit(lambda: torch.set_num_threads(_policy.bulk)).result()


def use_threads(kind: str, reserved: float = 0.0) -> int:
    """Set the calling thread's torch thread count for ``kind`` of work (``"interactive"`` or ``"bulk"``; an adaptive
    interactive count leaves ``reserved`` cores free) and leave it so. For threads this package owns. Returns the
    count."""
    n = _count(kind, reserved)
    _set_this_thread(n)
    _local.kind = kind
    return n


@contextlib.contextmanager
def bulk_work() -> Iterator[None]:
    """Bulk work (an embedding) from any thread: in a thread set for interactive work (a click job that has to embed
    its slice first) the block runs with the bulk count; anywhere else the caller's own count is left as it is (a
    Dask worker's, a user's)."""
    if getattr(_local, "kind", None) != "interactive":
        yield
        return
    with threads_for("bulk"):
        yield


@contextlib.contextmanager
def threads_for(kind: str) -> Iterator[int]:
    """Run a block with the thread count for ``kind`` of work; the caller's count is restored afterwards."""
    n = _count(kind)
    before, before_kind = torch.get_num_threads(), getattr(_local, "kind", None)
    _local.kind = kind
    try:
        if before == n:
            yield n
            return
        _set_this_thread(n)
        try:
            yield n
        finally:
            _set_this_thread(before)
    finally:
        _local.kind = before_kind
        if kind == "interactive":
            work_done()


def current_policy() -> str:
    """A one-line description for logs and benchmarks."""
    return str(_policy)
