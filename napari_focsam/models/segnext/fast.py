"""SegNext's per-click half in a lower precision, split by rows between single-threaded workers: the same function
as :meth:`~.network.SegNextNet.prompt_logits`, arranged for speed on a CPU.

* The token map is cut into horizontal strips, one per worker (:mod:`.pool`; as many as the calling thread's torch
  thread count). A worker embeds its strip's prompt patches, adds the image features and runs it through the fusion
  blocks; the only exchange is each block's keys and values (one wait per block), since each worker attends for its
  own queries (:mod:`.attention`). It then goes on into the pyramid and head with the same rows
  (:mod:`.pyramid`, four more waits for the GroupNorms' statistics and the coarse scales). Six waits per click
  instead of one per operation of torch's own threads, which wait for any descheduled thread on a shared machine.
* Every product with the tokens is a matmul on (pixels, channels) rows in the compute dtype (bfloat16 by default),
  with weights derived once and, on CPUs with native bfloat16, pre-packed for oneDNN (GELU or ReLU fused into the
  matmul where one follows). The residual stream and LayerNorms of the fusion blocks stay in float32; the queries'
  1/8 is folded into their weights. Off the CPU (or with ``split=False``) attention is torch's fused kernel.

The derived weights are made on first use and remade when a parameter changes. Thread safe; the result does not
depend on the number of workers beyond the rounding of the norms' statistics (see the tests).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..fast_linear import DerivedWeights, PackedLinear, onednn_packing
from .attention import attend, head_keys
from .network import Block, SegNextNet
from .pool import run_phase
from .pyramid import PyramidHead, Strip, norm_stats

M = TypeVar("M", bound=nn.Module)


def _each(modules: Iterable[nn.Module], kind: type[M]) -> list[M]:
    """The modules of a ``ModuleList``, each checked to be a ``kind``."""
    out = []
    for module in modules:
        if not isinstance(module, kind):
            raise TypeError(f"expected a {kind.__name__}, got {type(module).__name__}")
        out.append(module)
    return out


def _as_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return layer


def _done(x: torch.Tensor | None) -> torch.Tensor:
    assert x is not None  # every worker has finished this part
    return x


def strips(grid: int, workers: int) -> list[int]:
    """Row bounds of ``workers`` strips of a ``grid``-row token map, each an even number of rows (the pyramid's
    strided 2 × 2 convolution pairs rows): as equal as possible, fewer strips than workers on a small grid."""
    n = max(1, min(workers, grid // 2))
    return [2 * ((grid // 2) * i // n) for i in range(n + 1)]


class FastPromptPath:
    """``net.prompt_logits`` in ``dtype`` (see the module). ``workers`` (default: the calling thread's torch thread
    count on a CPU, 1 elsewhere) fixes the number of strips; ``split`` (default: on a CPU) chooses the per-head
    bfloat16 attention over torch's fused kernel."""

    def __init__(self, net: SegNextNet, dtype: torch.dtype = torch.bfloat16, *, split: bool | None = None,
                 workers: int | None = None) -> None:
        self.net = net
        self.dtype = dtype
        self.split = split
        self.workers = workers
        self._parts = DerivedWeights(net, self._make_parts)

    def _prepare(self) -> dict[str, Any]:
        return self._parts.get()

    def _make_parts(self) -> dict[str, Any]:
        net = self.net
        device = next(net.parameters()).device
        pack = onednn_packing(device, self.dtype)
        rows = net.cfg.grid ** 2 // max(1, torch.get_num_threads())  # a hint for oneDNN's blocking

        def lin(weight: torch.Tensor, bias: torch.Tensor | None) -> PackedLinear:
            return PackedLinear(_as_linear(weight.float(), None if bias is None else bias.float()), self.dtype,
                                rows if pack else None)

        parts: dict[str, Any] = {"device": device}
        with torch.no_grad():
            split = device.type == "cpu" if self.split is None else self.split
            blocks = []
            for b in _each(net.fusion_blocks, Block):
                qkv_w, qkv_b = b.attn.qkv.weight.float(), b.attn.qkv.bias.float()
                if split:  # the queries pre-scaled by head_dim ** -0.5 (1/8: exact)
                    scale = torch.ones_like(qkv_b)
                    scale[:net.cfg.embed_dim] = (net.cfg.embed_dim // b.attn.num_heads) ** -0.5
                    qkv_w, qkv_b = qkv_w * scale[:, None], qkv_b * scale
                blocks.append((
                    (b.norm1.weight.float(), b.norm1.bias.float(), b.norm1.eps), lin(qkv_w, qkv_b),
                    lin(b.attn.proj.weight, b.attn.proj.bias),
                    (b.norm2.weight.float(), b.norm2.bias.float(), b.norm2.eps),
                    lin(b.mlp.fc1.weight, b.mlp.fc1.bias), lin(b.mlp.fc2.weight, b.mlp.fc2.bias),
                    b.attn.num_heads))
            parts["split"] = split
            parts["blocks"] = blocks
            parts["pyramid"] = PyramidHead(net, self.dtype, lin)
            proj = net.visual_prompts_encoder.proj  # a 16 × 16 stride-16 convolution: a linear over patches
            parts["prompt"] = lin(proj.weight.flatten(1), proj.bias)
        return parts

    # ------------------------------------------------------------------ forward
    def __call__(self, features: torch.Tensor, prompt_map: torch.Tensor) -> torch.Tensor:
        """(1, 1, 256, 256) logits in float32 from (1, C, 64, 64) features and the (1, 3, S, S) prompt map."""
        parts = self._prepare()
        g = features.shape[-1]
        workers = self.workers or (torch.get_num_threads() if parts["device"].type == "cpu" else 1)
        bounds = strips(g, workers)
        n = len(bounds) - 1
        blocks = parts["blocks"]
        state: list[Any] = [None] * n

        def first(i: int) -> torch.Tensor:
            state[i] = self._embed(parts, features, prompt_map, bounds[i], bounds[i + 1])
            return self._qkv(blocks[0], state[i])

        chunks = run_phase(first, n)
        for index in range(len(blocks)):
            last = index + 1 == len(blocks)

            def attention(i: int, index: int = index, last: bool = last, chunks: list = chunks) -> Any:
                x = self._attend_mlp(parts, blocks[index], state[i], chunks, i)
                if not last:
                    state[i] = x
                    return self._qkv(blocks[index + 1], x)
                rows = bounds[i + 1] - bounds[i]
                state[i] = parts["pyramid"].start(x.to(self.dtype).view(rows, g, -1), bounds[i])
                return parts["pyramid"].advance(state[i], [None] * 4)

            chunks = run_phase(attention, n)
        return self._decode(parts["pyramid"], state, chunks, n)

    def _embed(self, parts: dict, features: torch.Tensor, prompt_map: torch.Tensor, r0: int, r1: int) -> torch.Tensor:
        """Rows ``r0:r1`` of the token grid: the prompt patches' embedding + the image features, (n, C) float32."""
        _, c, g, _ = features.shape
        k, p = prompt_map.shape[1], prompt_map.shape[-1] // g
        rows = r1 - r0
        patches = prompt_map[0, :, r0 * p:r1 * p].reshape(k, rows, p, g, p).permute(1, 3, 0, 2, 4)
        x = parts["prompt"](patches.reshape(rows * g, k * p * p).to(self.dtype)).float()
        return x.add_(features[0, :, r0:r1].reshape(c, rows * g).t())

    def _qkv(self, block: tuple, x: torch.Tensor) -> torch.Tensor:
        norm1, qkv = block[0], block[1]
        return qkv(F.layer_norm(x, (x.shape[1],), *norm1).to(self.dtype))

    def _attend_mlp(self, parts: dict, block: tuple, x: torch.Tensor, chunks: list[torch.Tensor],
                    i: int) -> torch.Tensor:
        """The rest of a fusion block for one worker's rows ``x`` (float32, updated in place)."""
        _, _, proj, norm2, fc1, fc2, heads = block
        c = x.shape[1]
        q = chunks[i][:, :c]
        if parts["split"]:
            att = attend(q, head_keys(chunks, heads))
        else:
            d = c // heads
            kv = torch.cat(chunks)[:, c:].reshape(-1, 2, heads, d).permute(1, 2, 0, 3)
            qh = q.reshape(-1, heads, d).transpose(0, 1)
            att = F.scaled_dot_product_attention(qh[None], kv[0][None], kv[1][None])[0].transpose(0, 1)
            att = att.reshape(-1, c)
        x.add_(proj(att))
        h = F.layer_norm(x, (c,), *norm2).to(self.dtype)
        return x.add_(fc2(fc1(h, gelu=True)))

    def _decode(self, pyramid: PyramidHead, strips_: list[Strip], pending: list, n: int) -> torch.Tensor:
        """The pyramid's remaining phases, the head in the last: (1, 1, H, W) float32 logits."""
        coarse: list[torch.Tensor] | None = None
        while True:
            if coarse is None and all(b.part is not None for b in strips_[0].branches[1:]):
                coarse = [torch.cat([_done(s.branches[b].part) for s in strips_]) for b in range(1, len(pending[0]))]
            stats = [norm_stats([p[b] for p in pending]) if pending[0][b] is not None else None
                     for b in range(len(pending[0]))]

            def phase(i: int, stats: list = stats, coarse: list | None = coarse) -> Any:
                strip = strips_[i]
                out = pyramid.advance(strip, stats)
                if coarse is not None and strip.branches[0].done and strip.logits is None:
                    strip.logits = pyramid.head(strip, coarse)
                return out

            pending = run_phase(phase, n)
            if all(s.logits is not None for s in strips_):
                return torch.cat([_done(s.logits) for s in strips_])[None, None]
