"""Running stack jobs serially or on Dask: a local cluster of N worker processes, or an existing cluster.

:func:`dask_client` gives a ``distributed.Client``: with ``scheduler`` (an address such as ``tcp://host:8786``) it
connects to that cluster; with ``workers=N`` it starts a ``LocalCluster`` of N worker *processes* on 127.0.0.1 (one
task at a time per worker by default: torch already uses several threads inside one task) and closes it afterwards.
Its workers start without Dask's ``MALLOC_TRIM_THRESHOLD_`` (see :data:`MALLOC_TRIM`); start the workers of a cluster
of your own likewise (``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null`` in the Dask config of the
process that starts them, and not in its environment) for the same speed.

:class:`Runner` is what the precompute and batch loops submit their per-slice tasks to: :class:`SerialRunner` runs a
task at once in this process, :class:`DaskRunner` keeps at most ``window`` tasks in flight on the cluster, so the
client never holds more than ``window`` slices in memory however long the stack.

A remote cluster must see the same files as the client: the stack store path is opened by the workers (a shared file
system); a ``LocalCluster`` always does.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["DaskRunner", "Runner", "SerialRunner", "cluster_torch_threads", "dask_client",
           "default_torch_threads"]

#: Dask's nannies start workers with this glibc variable set (65536), so that freed memory goes back to the OS at
#: once. Setting it also pins glibc's mmap threshold at 128 KiB: every tensor larger than that is mapped afresh and
#: its pages faulted in on every use. On the 2-core development machine a tiny-SAM embedding took 30-55 % longer in
#: such a worker (or in a plain process with the variable) than without it: 64,000 instead of 32,000 page faults.
#: Stack tasks allocate the same buffers slice after slice, so keeping freed memory in the process costs nothing.
MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"


def default_torch_threads(n_workers: int, threads_per_worker: int = 1) -> int:
    """Torch threads per task so that all workers together use about the machine's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, n_workers * threads_per_worker))


@contextlib.contextmanager
def dask_client(
    workers: int | None = None, scheduler: str | None = None, *, threads_per_worker: int = 1,
    processes: bool = True, memory_limit: str | int = "auto",
) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler`` (an existing cluster) or a new ``LocalCluster`` of ``workers``.

    The local cluster listens on 127.0.0.1 only, has no dashboard and is closed when the block ends.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - distributed is a dependency of the stack tools
        raise RuntimeError("running on Dask needs the 'distributed' package (pip install distributed)") from exc
    if scheduler:
        client = Client(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    if not workers or workers < 1:
        raise ValueError("a local Dask cluster needs workers >= 1 (or give a scheduler address)")
    with _workers_without_malloc_trim(), LocalCluster(
        n_workers=int(workers), threads_per_worker=int(threads_per_worker), processes=processes, host="127.0.0.1",
        dashboard_address=None, memory_limit=memory_limit,
    ) as cluster, Client(cluster) as client:
        yield client


@contextlib.contextmanager
def _workers_without_malloc_trim() -> Iterator[None]:
    """Worker processes started in this block (a restarted one too) do not get :data:`MALLOC_TRIM` (see there).

    The nanny copies its variables into this process's environment, which the workers inherit: the variable is
    taken out of both for the block, and this process's own value (if any) is put back afterwards.
    """
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ[MALLOC_TRIM] = None  # None: not set (distributed's convention)
    saved = os.environ.pop(MALLOC_TRIM, None)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            yield
    finally:
        os.environ.pop(MALLOC_TRIM, None)
        if saved is not None:
            os.environ[MALLOC_TRIM] = saved


def cluster_threads(client: Any) -> tuple[int, int]:
    """(number of workers, summed worker threads) of the cluster behind ``client``."""
    info = client.scheduler_info(n_workers=-1) if _takes_n_workers(client) else client.scheduler_info()
    workers = info.get("workers", {})
    return len(workers), sum(int(w.get("nthreads", 1)) for w in workers.values())


def _host_cores() -> tuple[str, int]:
    import socket

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return socket.gethostname(), cores


def cluster_torch_threads(client: Any) -> int:
    """Torch threads per task so that the tasks running at once on each host share its cores (at least 1)."""
    hosts = client.run(_host_cores)
    info = client.scheduler_info(n_workers=-1) if _takes_n_workers(client) else client.scheduler_info()
    nthreads = {address: int(w.get("nthreads", 1)) for address, w in info.get("workers", {}).items()}
    per_host: dict[str, int] = {}
    cores: dict[str, int] = {}
    for address, (host, n) in hosts.items():
        per_host[host] = per_host.get(host, 0) + nthreads.get(address, 1)
        cores[host] = n
    return max(1, min((cores[h] // max(1, per_host[h]) for h in cores), default=1))


def _takes_n_workers(client: Any) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


class Runner:
    """Submit per-slice tasks and collect their results as they finish (in any order)."""

    threads = 1  #: tasks that run at once

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        raise NotImplementedError

    def results(self, *, wait: bool) -> list[Any]:
        """Results finished so far; with ``wait``, blocks until at least one is finished (if any is pending)."""
        raise NotImplementedError

    @property
    def pending(self) -> int:
        raise NotImplementedError

    @property
    def full(self) -> bool:
        return False

    def drain(self) -> Iterator[Any]:
        """Every remaining result, as each finishes."""
        while self.pending:
            yield from self.results(wait=True)
        yield from self.results(wait=False)

    def cancel(self) -> None:
        """Abandon the tasks not finished yet."""


class SerialRunner(Runner):
    """Runs every task at once, in this process."""

    def __init__(self) -> None:
        self._done: list[Any] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._done.append(fn(*args))

    def results(self, *, wait: bool) -> list[Any]:
        out, self._done = self._done, []
        return out

    @property
    def pending(self) -> int:
        return 0


class DaskRunner(Runner):
    """Tasks on a Dask cluster, at most ``window`` in flight (default: twice the cluster's threads, at least 2)."""

    def __init__(self, client: Any, window: int | None = None) -> None:
        self.client = client
        self.threads = max(1, cluster_threads(client)[1])
        self.window = int(window) if window is not None else max(2, 2 * self.threads)
        self._futures: set[Any] = set()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._futures.add(self.client.submit(fn, *args, pure=False))

    def results(self, *, wait: bool) -> list[Any]:
        from distributed import wait as dask_wait

        if wait and self._futures:
            dask_wait(list(self._futures), return_when="FIRST_COMPLETED")
        done = [f for f in self._futures if f.done()]
        self._futures.difference_update(done)
        out = []
        for future in done:
            out.append(future.result())  # raises the task's exception here
            future.release()
        return out

    @property
    def pending(self) -> int:
        return len(self._futures)

    @property
    def full(self) -> bool:
        return len(self._futures) >= self.window

    def cancel(self) -> None:
        if self._futures:
            self.client.cancel(list(self._futures))
        self._futures.clear()
