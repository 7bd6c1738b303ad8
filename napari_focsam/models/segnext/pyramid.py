"""SegNext's simple feature pyramid and head in a lower precision, computed by workers on horizontal strips.

Every step of the pyramid is local (transposed 2 × 2 convolutions, a strided 2 × 2 convolution, 1 × 1
convolutions), so a worker holding some rows of the fused token map computes the same rows of every scale — except
the GroupNorms (one group: mean and variance over the whole map). A worker runs each branch up to its next
GroupNorm and returns the per-row sums and norms there (:meth:`PyramidHead.advance`); the caller adds them up over
all workers (:func:`norm_stats`, in float64 in a fixed order, so the result does not depend on how the rows are
split) and the next call applies the norm and goes on. Four waits in all, for eight norms.

* Products are pre-packed linears in the compute dtype on (pixels, channels) rows, as in :mod:`.fast`; a transposed
  convolution is a linear to 4 × the channels whose output rows are put in place by the norm that follows it (one
  pass: the affine map reads the permuted view). Norms, their affine maps and GELUs run in place in the compute
  dtype (computed in float32 per element): no large float32 buffer is made (fresh large buffers are slow to fault
  in on a VM).
* The head applies the fusion convolution's slice of each coarse scale before the bilinear upsampling (both linear,
  so they commute: about 13 of its 17 GMAC saved) and builds the finest scale band by band (16 rows of 256): the
  band's own slice, plus each coarse slice upsampled from just the rows it needs (the same interpolation weights as
  upsampling the whole map), summed in float32, ReLU, then the 1-logit convolution — all in cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..fast_linear import PackedLinear
from .network import ConvRelu, SegNextNet

#: rows of the finest scale per band of the head
BAND = 16

Step = tuple  # ("up", linear, cout) | ("down", linear) | ("mm", linear) | ("gn" | "gn-gelu", weight, bias, eps)


def relu_linear(layer: PackedLinear, x: torch.Tensor) -> torch.Tensor:
    """``relu(layer(x))``, the ReLU fused into a pre-packed matmul."""
    if layer.packed is not None:
        return torch.ops.mkldnn._linear_pointwise(x, layer.packed, layer.bias, "relu", [], "")
    assert layer.weight is not None  # kept when not packed
    return F.relu(F.linear(x, layer.weight, layer.bias))


def _bias(layer: nn.Conv2d | nn.ConvTranspose2d) -> torch.Tensor:
    if layer.bias is None:
        raise TypeError(f"{layer!r} has no bias")
    return layer.bias


def pyramid_steps(seq: nn.Sequential, lin: Callable[[torch.Tensor, torch.Tensor | None], PackedLinear]) -> list[Step]:
    """One pyramid branch as steps on (H, W, C) maps (every GELU of the pyramid follows a GroupNorm)."""
    steps: list[Step] = []
    for layer in seq:
        if isinstance(layer, nn.ConvTranspose2d):  # rows ordered (ki, kj, cout): a pixel's 4 outputs side by side
            cout = layer.weight.shape[1]
            w = layer.weight.permute(2, 3, 1, 0).reshape(cout * 4, -1)
            steps.append(("up", lin(w, _bias(layer).repeat(4)), cout))
        elif isinstance(layer, nn.Conv2d) and layer.kernel_size == (2, 2):
            w = layer.weight.permute(0, 2, 3, 1).reshape(layer.weight.shape[0], -1)
            steps.append(("down", lin(w, layer.bias)))
        elif isinstance(layer, nn.Conv2d):
            steps.append(("mm", lin(layer.weight.flatten(1), layer.bias)))
        elif isinstance(layer, nn.GroupNorm):
            steps.append(("gn", layer.weight.float(), layer.bias.float(), layer.eps))
        elif isinstance(layer, nn.GELU) and steps and steps[-1][0] == "gn":
            steps[-1] = ("gn-gelu", *steps[-1][1:])
        else:  # pragma: no cover - the architecture has nothing else
            raise TypeError(f"unexpected pyramid layer {layer!r}")
    return steps


@dataclass
class _Branch:
    """One branch's progress on one strip: the map (``x``, maybe a permuted view) and its rows for the statistics."""

    steps: list[Step]
    x: torch.Tensor
    flat: torch.Tensor
    shape: tuple[int, int, int]
    pos: int = 0
    part: torch.Tensor | None = None  # the head's slice of this scale, once the branch is done

    @property
    def done(self) -> bool:
        return self.pos == len(self.steps)


@dataclass
class Strip:
    """A worker's rows: ``row0`` is its first row of the token grid."""

    row0: int
    branches: list[_Branch] = field(default_factory=list)
    logits: torch.Tensor | None = None


Stats = tuple[torch.Tensor, torch.Tensor, int]  # per-row sums, per-row norms (in row order), element count


def norm_stats(parts: Sequence[Stats]) -> tuple[float, float]:
    """Mean and (biased) variance from the workers' per-row sums and norms, in row order."""
    sums = torch.cat([p[0] for p in parts]).double().cpu().numpy()
    norms = torch.cat([p[1] for p in parts]).double().cpu().numpy()
    count = sum(p[2] for p in parts)
    mean = float(np.sum(sums)) / count
    return mean, max(float(np.sum(norms * norms)) / count - mean * mean, 0.0)


class PyramidHead:
    """The pyramid and head of a :class:`~.network.SegNextNet` in ``dtype`` (see the module)."""

    def __init__(self, net: SegNextNet, dtype: torch.dtype,
                 lin: Callable[[torch.Tensor, torch.Tensor | None], PackedLinear]) -> None:
        self.dtype = dtype
        neck, head = net.neck, net.head
        self.branches = [pyramid_steps(seq, lin) for seq in (neck.down_4, neck.down_8, neck.down_16, neck.down_32)]
        convs = [c for c in head.convs if isinstance(c, ConvRelu)]
        if len(convs) != len(head.convs):  # pragma: no cover - the architecture has nothing else
            raise TypeError("the head's scale convolutions must be ConvRelu modules")
        self.convs = [lin(c.conv.weight.flatten(1), c.conv.bias) for c in convs]
        weight = head.fusion_conv.conv.weight.flatten(1)
        slices = weight.split([c.conv.weight.shape[0] for c in convs], dim=1)
        fusion_bias = _bias(head.fusion_conv.conv)
        self.fusion = [lin(w, None) for w in slices]  # the coarse slices' (the finest one's is fine_fusion)
        self.fine_fusion = (slices[0].detach().to(dtype).contiguous(), fusion_bias.detach().float()[:, None])
        self.seg = (head.seg_conv.weight.flatten(1).float(), _bias(head.seg_conv).float()[:, None])

    # ------------------------------------------------------------------ pyramid
    def start(self, fused: torch.Tensor, row0: int) -> Strip:
        """A strip of the (rows, W, C) fused map in the compute dtype, its first row ``row0`` (even)."""
        strip = Strip(row0)
        for steps in self.branches:
            rows, width, channels = fused.shape
            strip.branches.append(_Branch(steps, fused, fused.reshape(-1, channels), (rows, width, channels)))
        return strip

    def advance(self, strip: Strip, stats: Sequence[tuple[float, float] | None]) -> list[Stats | None]:
        """Apply each branch's pending norm (``stats``: its mean and variance, None where none is pending), run it up
        to its next norm and return the per-row sums there (None for a branch that finished)."""
        out: list[Stats | None] = []
        for index, (branch, stat) in enumerate(zip(strip.branches, stats)):
            if stat is not None:
                self._norm(branch, *stat)
            out.append(self._run(branch))
            if branch.done and branch.part is None and index > 0:
                h, w, _ = branch.shape
                mapped = relu_linear(self.convs[index], branch.flat)
                branch.part = self.fusion[index](mapped).reshape(h, w, -1)
        return out

    def _run(self, b: _Branch) -> Stats | None:
        while not b.done:
            step = b.steps[b.pos]
            kind = step[0]
            if kind.startswith("gn"):
                return b.flat.sum(dim=1), torch.linalg.vector_norm(b.flat, dim=1), b.flat.numel()
            h, w, c = b.shape
            x = b.x.to(self.dtype)
            if kind == "up":  # (h·w, [ki, kj, cout]) → (h, ki, w, kj, cout), put in place by the norm that follows
                b.flat = step[1](x.reshape(h * w, c))
                b.x = b.flat.view(h, w, 2, 2, step[2]).permute(0, 2, 1, 3, 4)
                b.shape = (2 * h, 2 * w, step[2])
            elif kind == "down":
                patches = x.reshape(h // 2, 2, w // 2, 2, c).permute(0, 2, 1, 3, 4).reshape(h * w // 4, 4 * c)
                b.flat = step[1](patches)
                b.shape = (h // 2, w // 2, b.flat.shape[1])
                b.x = b.flat.view(b.shape)
            else:  # "mm"
                b.flat = step[1](x.reshape(h * w, c))
                b.shape = (h, w, b.flat.shape[1])
                b.x = b.flat.view(b.shape)
            b.pos += 1
        return None

    def _norm(self, b: _Branch, mean: float, var: float) -> None:
        kind, weight, bias, eps = b.steps[b.pos]
        scale = weight / math.sqrt(var + eps)
        shift = (bias - mean * scale).to(self.dtype)
        scale = scale.to(self.dtype)
        if b.x.is_contiguous():
            torch.addcmul(shift, b.x, scale, out=b.x)
        else:  # a transposed convolution's output: the affine map writes it in place
            out = torch.empty(b.x.shape, dtype=b.x.dtype, device=b.x.device)
            b.x = torch.addcmul(shift, b.x, scale, out=out).view(b.shape)
            b.flat = b.x.view(-1, b.shape[2])
        if kind == "gn-gelu":
            torch.ops.aten.gelu_(b.x)
        b.pos += 1

    # ------------------------------------------------------------------ head
    def head(self, strip: Strip, coarse: Sequence[torch.Tensor]) -> torch.Tensor:
        """The (rows, W) float32 logits of the strip's finest-scale rows, from the finished branch 0 and the whole
        coarse slices ``coarse`` ((h, w, C) each, in the compute dtype). Each band is summed channel-major (the layout
        in which torch's bilinear upsampling is fastest): the finest slice as ``W · mappedᵀ``, then the upsampled
        coarse slices, the ReLU and the logit as one row vector times the band."""
        fine = strip.branches[0]
        rows, width, _ = fine.shape
        y_start = strip.row0 * 4  # the finest scale has 4 rows per token row
        size = coarse[0].shape[0] * 2  # the finest scale's height (the first coarse scale is half of it)
        planes = []  # each coarse slice's rows that this strip needs, channel-major float32
        for part in coarse:
            s = size // part.shape[0]
            first, last = _source_rows(y_start, y_start + rows, s, part.shape[0])
            plane = torch.empty(part.shape[2], last - first, part.shape[1], dtype=torch.float32, device=part.device)
            planes.append((first, s, plane.copy_(part[first:last].permute(2, 0, 1))))
        weight, bias = self.fine_fusion
        seg_weight, seg_bias = self.seg
        out = torch.empty(rows, width, dtype=torch.float32, device=fine.x.device)
        for y0 in range(0, rows, BAND):
            y1 = min(rows, y0 + BAND)
            mapped = relu_linear(self.convs[0], fine.x[y0:y1].reshape(-1, fine.shape[2]))
            acc = torch.mm(weight, mapped.t()).float().add_(bias)  # (C, band pixels)
            band = acc.view(-1, y1 - y0, width)
            for first, s, plane in planes:
                a, b = _source_rows(y_start + y0, y_start + y1, s, first + plane.shape[1])
                up = F.interpolate(plane[None, :, a - first:b - first], size=((b - a) * s, width), mode="bilinear",
                                   align_corners=False)
                offset = y_start + y0 - a * s
                band.add_(up[0, :, offset:offset + y1 - y0])
            out[y0:y1] = torch.addmm(seg_bias, seg_weight, acc.relu_()).view(y1 - y0, width)
        return out


def _source_rows(y0: int, y1: int, s: int, h: int) -> tuple[int, int]:
    """The rows ``first:last`` of an ``h``-row map that output rows ``y0:y1`` of its ``s``-fold bilinear upsampling
    (half-pixel centres, as ``F.interpolate(..., align_corners=False)``) read. Upsampling just those rows to
    ``(last - first) · s`` rows gives the same interpolation weights: output row y reads source position
    (y + 0.5) / s − 0.5, clamped at 0, and its row and the next."""
    first = max(0, math.floor((y0 + 0.5) / s - 0.5))
    last = min(h, max(0, math.floor((y1 - 1 + 0.5) / s - 0.5)) + 2)
    return first, last
