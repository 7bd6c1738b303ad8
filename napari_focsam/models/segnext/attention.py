"""Global attention over SegNext's 4,096 tokens on a CPU, for one worker's rows of queries.

torch's fused CPU attention kernel does not use the CPU's bfloat16 instructions (bfloat16 runs at its float32
speed), and it was half of a click. Here each head is a few products in bfloat16 on oneDNN (``F.linear``): the
scores of a block of queries against every key, their softmax, then the weighted sum of the values, block by block
so the scores stay small. :func:`head_keys` gathers each head's keys and transposed values once from the workers'
``[q | k | v]`` rows; :func:`attend` then computes the attention of any rows of queries, so each worker attends for
its own rows and goes on with them without waiting for the others.

A query's result does not depend on how the rows are split (each is computed the same way, in the same order). The
queries come pre-scaled (the 1/8 is folded into the query weights, exact in any binary float format). The scores are
rounded to bfloat16 before the softmax, the one difference in numerics from torch's kernel (which keeps them in
float32); the agreement with float32 is measured by ``benchmarks/bench_segnext.py`` and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .pool import run_phase

#: queries per block of scores (512 × 4,096 bfloat16 scores: 4 MiB)
QUERY_BLOCK = 512

Keys = list[tuple[torch.Tensor, torch.Tensor]]


def head_keys(chunks: Sequence[torch.Tensor], num_heads: int) -> Keys:
    """Per head, the (N, d) keys and (d, N) transposed values of the (n_i, 3C) ``[q | k | v]`` row chunks (in row
    order), each contiguous."""
    c = chunks[0].shape[1] // 3
    d = c // num_heads
    out = []
    for h in range(num_heads):
        k = torch.cat([chunk[:, c + h * d:c + (h + 1) * d] for chunk in chunks])
        v = torch.cat([chunk[:, 2 * c + h * d:2 * c + (h + 1) * d] for chunk in chunks])
        out.append((k, v.t().contiguous()))
    return out


def attend(q: torch.Tensor, keys: Keys, *, block: int = QUERY_BLOCK) -> torch.Tensor:
    """Softmax attention of the (n, C) pre-scaled queries ``q`` (the heads side by side) against ``keys``: (n, C), in
    ``q``'s dtype."""
    n, c = q.shape
    d = c // len(keys)
    out = torch.empty(n, c, dtype=q.dtype, device=q.device)
    for h, (k, vt) in enumerate(keys):
        cols = slice(h * d, (h + 1) * d)
        qh = q[:, cols]
        for start in range(0, n, block):
            scores = F.linear(qh[start:start + block], k)
            out[start:start + block, cols] = F.linear(torch.softmax(scores, dim=-1), vt)
    return out


def split_attention(qkv: torch.Tensor, num_heads: int, *, workers: int = 1, block: int = QUERY_BLOCK) -> torch.Tensor:
    """Softmax attention of the (N, 3C) ``[q | k | v]`` rows (queries already scaled): (N, C), the queries' rows
    shared out between ``workers`` single-threaded workers."""
    n, c = qkv.shape[0], qkv.shape[1] // 3
    keys = head_keys([qkv], num_heads)
    bounds = [n * i // workers for i in range(workers + 1)]
    parts = run_phase(lambda i: attend(qkv[bounds[i]:bounds[i + 1], :c], keys, block=block), workers)
    return torch.cat(parts)
