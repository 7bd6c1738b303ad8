"""Global attention over SegNext's 4,096 tokens on a CPU, split by heads across single-threaded workers.

torch's fused CPU attention kernel does not use the CPU's bfloat16 instructions (bfloat16 runs at its float32
speed), and it was half of a click. Here each head is a few products in bfloat16 on oneDNN (``F.linear``): the
scores of a block of queries against every key, their softmax, then the weighted sum of the values, block by block
so the scores stay small. The heads are shared out between workers that run torch on one thread each (as many as
the calling thread's torch thread count), so there is one wait per attention instead of one per product: torch's
parallel regions are short here, and on a shared machine each of them waits for a descheduled thread.

A head's result does not depend on the number of workers (each head is computed by one thread, in the same order).
The queries come pre-scaled (the 1/8 is folded into the query weights, exact in any binary float format). The
scores are rounded to bfloat16 before the softmax, the one difference in numerics from torch's kernel (which keeps
them in float32); the agreement with float32 is measured by ``benchmarks/bench_segnext.py`` and the tests.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

#: queries per block of scores (512 × 4,096 bfloat16 scores: 4 MiB)
QUERY_BLOCK = 512

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _single_threaded() -> None:
    torch.set_num_threads(1)


def _workers(n: int) -> ThreadPoolExecutor:
    """A pool of at least ``n`` threads, each running torch on one thread."""
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < n:
            old = _pool
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="focsam-segnext-attention",
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


def _heads(qkv: torch.Tensor, out: torch.Tensor, heads: range, head_dim: int, block: int) -> None:
    """Heads ``heads`` of the attention into their columns of ``out``."""
    n, c = out.shape
    with torch.inference_mode():  # a worker thread does not inherit the caller's mode
        for h in heads:
            cols = slice(h * head_dim, (h + 1) * head_dim)
            q = qkv[:, cols]
            k = qkv[:, c + cols.start:c + cols.stop].contiguous()
            vt = qkv[:, 2 * c + cols.start:2 * c + cols.stop].t().contiguous()
            for start in range(0, n, block):
                scores = F.linear(q[start:start + block], k)
                out[start:start + block, cols] = F.linear(torch.softmax(scores, dim=-1), vt)


def split_attention(qkv: torch.Tensor, num_heads: int, *, workers: int | None = None,
                    block: int = QUERY_BLOCK) -> torch.Tensor:
    """Softmax attention of the (N, 3C) ``[q | k | v]`` rows (queries already scaled): (N, C), in ``qkv``'s dtype.

    ``workers`` defaults to the calling thread's torch thread count; with one, the heads run in the calling thread.
    """
    n, c3 = qkv.shape
    c = c3 // 3
    head_dim = c // num_heads
    out = torch.empty(n, c, dtype=qkv.dtype, device=qkv.device)
    workers = max(1, min(num_heads, workers if workers is not None else torch.get_num_threads()))
    if workers == 1:
        _heads(qkv, out, range(num_heads), head_dim, block)
        return out
    pool = _workers(workers)
    jobs = [pool.submit(_heads, qkv, out, range(i, num_heads, workers), head_dim, block) for i in range(workers)]
    for job in jobs:
        job.result()
    return out
