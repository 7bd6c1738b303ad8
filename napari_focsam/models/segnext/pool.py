"""Single-threaded workers for SegNext's per-click network on a CPU, and a way to run one phase of work on them.

The per-click network is split into a few phases; in each, every worker computes its own rows of the token map
(see :mod:`.fast`) with torch on one thread, and the caller waits for all of them once. torch's own threads wait for
each other at the end of every operation instead (hundreds per click), and on a shared machine each of those waits
lasts as long as another program holds a core: a short operation took 5–10 times longer on two threads than on one
while the machine was loaded.

The jobs of a phase never wait for each other, so callers on several threads can share the pool. The number of
workers a call uses is the calling thread's torch thread count (what :mod:`napari_focsam.engine.threads` set for
it), so the thread policy decides how many cores a click takes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _single_threaded() -> None:
    torch.set_num_threads(1)


def workers(n: int) -> ThreadPoolExecutor:
    """A pool of at least ``n`` threads, each running torch on one thread."""
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < n:
            old = _pool
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="focsam-segnext",
                                       initializer=_single_threaded)
            _pool_size = n
            # start every worker now, then put back the count that threads started later begin with (each worker's
            # torch.set_num_threads(1) changed it)
            barrier = threading.Barrier(n + 1)
            for _ in range(n):
                _pool.submit(barrier.wait)
            barrier.wait()
            torch.set_num_threads(torch.get_num_threads())
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def _in_inference_mode(fn: Callable[[int], T], index: int) -> T:
    with torch.inference_mode():  # a worker thread does not inherit the caller's mode
        return fn(index)


def run_phase(fn: Callable[[int], T], n: int) -> list[T]:
    """``[fn(0), …, fn(n - 1)]``, each on its own single-threaded worker (in the calling thread when ``n`` is 1)."""
    if n == 1:
        return [_in_inference_mode(fn, 0)]
    pool = workers(n)
    jobs = [pool.submit(_in_inference_mode, fn, i) for i in range(n)]
    return [job.result() for job in jobs]
