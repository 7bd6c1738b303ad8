"""SegNext's per-click half in a lower precision, channels last: the same function as
:meth:`~.network.SegNextNet.prompt_logits`, arranged for speed on a CPU.

* Every product with the tokens is a matmul on (pixels, channels) rows in the compute dtype (bfloat16 by default),
  with weights derived once and, on CPUs with native bfloat16, pre-packed for oneDNN (GELU or ReLU fused into the
  matmul where one follows): the prompt map's patch embedding (a linear over 16 × 16 patches), the fusion blocks'
  linears, the pyramid's transposed 2 × 2 convolutions (a linear to 4 × the channels, then a pixel shuffle), its
  strided 2 × 2 convolution (a linear over gathered 2 × 2 patches) and 1 × 1 convolutions, and the head's 1 × 1
  convolutions.
* Attention on a CPU is :func:`.attention.split_attention` (bfloat16 products, heads shared out between
  single-threaded workers; the queries' 1/8 folded into their weights); elsewhere torch's fused kernel in the
  compute dtype. The residual stream, LayerNorms, GroupNorms and GELUs after a norm stay in float32, computed in
  place where possible (fresh large buffers are slow to fault in).
* The head applies the fusion convolution's slice of each coarse scale before the bilinear upsampling (both are
  linear, so they commute), which saves about 13 of its 17 GMAC; the coarse slices are upsampled in the compute
  dtype and added into one float32 map.

The derived weights are made on first use and remade when a parameter changes. Thread safe.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ..fast_linear import DerivedWeights, PackedLinear, onednn_packing
from .attention import split_attention
from .network import Block, ConvRelu, SegNextNet

M = TypeVar("M", bound=nn.Module)


def _each(modules: Iterable[nn.Module], kind: type[M]) -> list[M]:
    """The modules of a ``ModuleList``, each checked to be a ``kind``."""
    out = []
    for module in modules:
        if not isinstance(module, kind):
            raise TypeError(f"expected a {kind.__name__}, got {type(module).__name__}")
        out.append(module)
    return out


def _bias(layer: nn.Conv2d | nn.ConvTranspose2d) -> torch.Tensor:
    if layer.bias is None:
        raise TypeError(f"{layer!r} has no bias")
    return layer.bias


def _as_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return layer


def _relu_linear(layer: PackedLinear, x: torch.Tensor) -> torch.Tensor:
    """``relu(layer(x))``, the ReLU fused into a pre-packed matmul."""
    if layer.packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, layer.packed, layer.bias, "relu", [], "")
    assert layer.weight is not None  # kept when not packed
    return F.relu(F.linear(x, layer.weight, layer.bias))


class FastPromptPath:
    """``net.prompt_logits`` in ``dtype`` (see the module)."""

    def __init__(self, net: SegNextNet, dtype: torch.dtype = torch.bfloat16, *, split: bool | None = None) -> None:
        self.net = net
        self.dtype = dtype
        self.split = split
        self._parts = DerivedWeights(net, self._make_parts)

    def _lin(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int | None) -> PackedLinear:
        return PackedLinear(_as_linear(weight.float(), None if bias is None else bias.float()), self.dtype,
                       rows if self._pack else None)

    def _prepare(self) -> dict[str, Any]:
        return self._parts.get()

    def _make_parts(self) -> dict[str, Any]:
        net = self.net
        device = next(net.parameters()).device
        self._pack = onednn_packing(device, self.dtype)
        g = net.cfg.grid
        n = g * g
        parts: dict[str, Any] = {}
        with torch.no_grad():
            blocks = []
            self._split = device.type == "cpu" if self.split is None else self.split
            for b in _each(net.fusion_blocks, Block):
                qkv_w, qkv_b = b.attn.qkv.weight.float(), b.attn.qkv.bias.float()
                if self._split:  # the queries pre-scaled by head_dim ** -0.5 (1/8: exact)
                    scale = torch.ones_like(qkv_b)
                    scale[:net.cfg.embed_dim] = (net.cfg.embed_dim // b.attn.num_heads) ** -0.5
                    qkv_w, qkv_b = qkv_w * scale[:, None], qkv_b * scale
                blocks.append((
                    (b.norm1.weight.float(), b.norm1.bias.float(), b.norm1.eps),
                    self._lin(qkv_w, qkv_b, n),
                    self._lin(b.attn.proj.weight, b.attn.proj.bias, n),
                    (b.norm2.weight.float(), b.norm2.bias.float(), b.norm2.eps),
                    self._lin(b.mlp.fc1.weight, b.mlp.fc1.bias, n),
                    self._lin(b.mlp.fc2.weight, b.mlp.fc2.bias, n),
                    b.attn.num_heads))
            parts["blocks"] = blocks
            parts["neck"] = [self._sequence(seq, g) for seq in
                             (net.neck.down_4, net.neck.down_8, net.neck.down_16, net.neck.down_32)]
            head = net.head
            convs = _each(head.convs, ConvRelu)
            sizes = [g * 4 // (2 ** i) for i in range(4)]
            parts["convs"] = [self._lin(c.conv.weight.flatten(1), c.conv.bias, s * s)
                              for c, s in zip(convs, sizes)]
            weight = head.fusion_conv.conv.weight.flatten(1)
            slices = weight.split([c.conv.weight.shape[0] for c in convs], dim=1)
            parts["fusion"] = [self._lin(w, None, s * s) for w, s in zip(slices, sizes)]
            parts["fusion_bias"] = _bias(head.fusion_conv.conv).float()
            parts["seg"] = (head.seg_conv.weight.flatten(1).float(), _bias(head.seg_conv).float())
            proj = net.visual_prompts_encoder.proj  # a 16 × 16 stride-16 convolution: a linear over patches
            parts["prompt"] = self._lin(proj.weight.flatten(1), _bias(proj), n)
        return parts

    def _sequence(self, seq: nn.Sequential, size: int) -> list[tuple]:
        """One pyramid branch as steps on (H, W, C) maps: ("up", linear, cout), ("down", linear), ("mm", linear),
        ("gn", w, b, eps) and ("gn-gelu", w, b, eps) (every GELU of the pyramid follows a GroupNorm)."""
        steps: list[tuple] = []
        for layer in seq:
            if isinstance(layer, nn.ConvTranspose2d):
                cout = layer.weight.shape[1]
                w = layer.weight.permute(1, 2, 3, 0).reshape(cout * 4, -1)
                steps.append(("up", self._lin(w, _bias(layer).repeat_interleave(4), size * size), cout))
                size *= 2
            elif isinstance(layer, nn.Conv2d) and layer.kernel_size == (2, 2):
                size //= 2
                w = layer.weight.permute(0, 2, 3, 1).reshape(layer.weight.shape[0], -1)
                steps.append(("down", self._lin(w, layer.bias, size * size)))
            elif isinstance(layer, nn.Conv2d):
                steps.append(("mm", self._lin(layer.weight.flatten(1), layer.bias, size * size)))
            elif isinstance(layer, nn.GroupNorm):
                steps.append(("gn", layer.weight.float(), layer.bias.float(), layer.eps))
            elif isinstance(layer, nn.GELU) and steps and steps[-1][0] == "gn":
                steps[-1] = ("gn-gelu", *steps[-1][1:])
            else:  # pragma: no cover - the architecture has nothing else
                raise TypeError(f"unexpected pyramid layer {layer!r}")
        return steps

    # ------------------------------------------------------------------ forward
    def __call__(self, features: torch.Tensor, prompt_map: torch.Tensor) -> torch.Tensor:
        """(1, 1, 256, 256) logits in float32 from (1, C, 64, 64) features and the (1, 3, S, S) prompt map."""
        parts = self._prepare()
        _, c, g, _ = features.shape
        k, p = prompt_map.shape[1], prompt_map.shape[-1] // g
        patches = prompt_map[0].reshape(k, g, p, g, p).permute(1, 3, 0, 2, 4).reshape(g * g, k * p * p)
        x = parts["prompt"](patches.to(self.dtype)).float()  # (tokens, C) in raster order
        x.add_(features[0].reshape(c, g * g).t())
        for norm1, qkv, proj, norm2, fc1, fc2, heads in parts["blocks"]:
            h = F.layer_norm(x, (c,), *norm1).to(self.dtype)
            if self._split:
                att = split_attention(qkv(h), heads)
            else:
                q, k, v = qkv(h).reshape(g * g, 3, heads, c // heads).permute(1, 2, 0, 3).unbind(0)
                att = F.scaled_dot_product_attention(q[None], k[None], v[None])[0].transpose(0, 1).reshape(g * g, c)
            x = x + proj(att).float()
            h = F.layer_norm(x, (c,), *norm2).to(self.dtype)
            x = x + fc2(fc1(h, gelu=True)).float()
        fused = x.reshape(g, g, c)
        feats = [self._branch(steps, fused) for steps in parts["neck"]]
        return self._head(parts, feats)

    def _branch(self, steps: list[tuple], x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            kind = step[0]
            h, w, c = x.shape
            if kind == "up":
                y = step[1](x.reshape(h * w, c).to(self.dtype))
                x = y.reshape(h, w, step[2], 2, 2).permute(0, 3, 1, 4, 2).reshape(2 * h, 2 * w, step[2])
            elif kind == "down":
                patches = x.reshape(h // 2, 2, w // 2, 2, c).permute(0, 2, 1, 3, 4).reshape(h * w // 4, 4 * c)
                x = step[1](patches.to(self.dtype)).reshape(h // 2, w // 2, -1)
            elif kind == "mm":
                x = step[1](x.reshape(h * w, c).to(self.dtype)).reshape(h, w, -1)
            else:  # GroupNorm(1, C): a LayerNorm over the whole map, then the per-channel affine, in place
                x = F.layer_norm(x.float(), x.shape, eps=step[3]).mul_(step[1]).add_(step[2])
                if kind == "gn-gelu":
                    torch.ops.aten.gelu_(x)
        return x

    def _head(self, parts: dict, feats: list[torch.Tensor]) -> torch.Tensor:
        """The head at the finest scale, accumulated in place in one float32 map (fresh large buffers are slow)."""
        size = feats[0].shape[:2]
        total = None
        for f, conv, fusion in zip(feats, parts["convs"], parts["fusion"]):
            h, w, c = f.shape
            mapped = _relu_linear(conv, f.reshape(h * w, c).to(self.dtype))
            part = fusion(mapped).reshape(1, h, w, -1).permute(0, 3, 1, 2)  # channels-last NCHW view
            if total is None:
                total = part.float().add_(parts["fusion_bias"].view(1, -1, 1, 1))
            else:  # upsampled in the compute dtype, added in float32
                total.add_(F.interpolate(part, size, mode="bilinear", align_corners=False))
        assert total is not None
        fused = total.relu_()
        weight, bias = parts["seg"]
        return torch.einsum("bchw,oc->bohw", fused, weight) + bias.view(1, -1, 1, 1)
