"""The modulated deformable 3x3 convolution of FocSAM's refiner (DCNv2, mmcv's offset layout: channel ``2k`` = dy,
``2k + 1`` = dx of tap ``k = 3 * ki + kj``), channel-last.

The default backend samples with an ``embedding_bag`` of the four bilinear corners and contracts with the kernel in
one GEMM (:func:`modulated_deform_conv3x3`); ``"torchvision"`` uses ``torchvision.ops.deform_conv2d`` (the same im2col
algorithm as mmcv's CPU kernel, which the official code uses; 5-8x slower on CPU as measured by
``benchmarks/bench_engine.py``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DcnBackend", "DeformableConvLayer", "ModulatedDeformConv3x3", "gemm_kernel", "modulated_deform_conv3x3"]

DcnBackend = Literal["gather", "torchvision"]


def _corner_gather_plan(
    offset: torch.Tensor, mask: torch.Tensor, height: int, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat corner indices and modulated bilinear weights of every deformable 3x3 sample.

    Sample ``(b, i, j, k)`` (output pixel ``(i, j)``, tap ``k = 3 * ki + kj``) reads the input at
    ``y = i - 1 + ki + dy``, ``x = j - 1 + kj + dx`` by bilinear interpolation between rows ``y0, y0 + 1`` and
    columns ``x0, x0 + 1`` (``y0 = floor(y)``, ``x0 = floor(x)``). A row or column outside the image gets weight 0
    (zero padding); its index is clamped into the image so that every index stays valid.

    Returns ``(n * H * W * 9, 4)`` indices into the flattened ``(n * H * W, C)`` input and matching weights, corners in
    the order ``(y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)``.
    """
    n = offset.shape[0]
    dtype, device = offset.dtype, offset.device
    taps = torch.arange(3, device=device)
    base_y = (torch.arange(height, device=device)[:, None] - 1 + taps.repeat_interleave(3)).to(dtype)
    base_x = (torch.arange(width, device=device)[:, None] - 1 + taps.repeat(3)).to(dtype)
    offset = offset.permute(0, 2, 3, 1)
    y = base_y.view(1, height, 1, 9) + offset[..., 0::2]
    x = base_x.view(1, 1, width, 9) + offset[..., 1::2]
    y0, x0 = y.floor(), x.floor()
    frac_y, frac_x = y - y0, x - x0
    mask = mask.permute(0, 2, 3, 1)
    top = torch.where((y0 >= 0) & (y0 < height), (1 - frac_y) * mask, 0)
    bottom = torch.where((y0 >= -1) & (y0 < height - 1), frac_y * mask, 0)
    left = torch.where((x0 >= 0) & (x0 < width), 1 - frac_x, 0)
    right = torch.where((x0 >= -1) & (x0 < width - 1), frac_x, 0)
    weights = torch.stack((top * left, top * right, bottom * left, bottom * right), dim=-1)
    image_start = (torch.arange(n, device=device) * (height * width)).view(n, 1, 1, 1)
    row0 = y0.clamp(0, height - 1).long() * width + image_start
    row1 = (y0 + 1).clamp(0, height - 1).long() * width + image_start
    col0 = x0.clamp(0, width - 1).long()
    col1 = (x0 + 1).clamp(0, width - 1).long()
    indices = torch.stack((row0 + col0, row0 + col1, row1 + col0, row1 + col1), dim=-1)
    return indices.view(-1, 4), weights.view(-1, 4)


def gemm_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The ``(C_out, C, 3, 3)`` kernel as the ``(9 * C, C_out)`` matrix that :func:`modulated_deform_conv3x3` uses."""
    return weight.permute(2, 3, 1, 0).reshape(9 * weight.shape[1], weight.shape[0])


def modulated_deform_conv3x3(
    image: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    *,
    kernel: torch.Tensor | None = None,
) -> torch.Tensor:
    """Modulated deformable 3x3 convolution (DCNv2; stride 1, padding 1, dilation 1, one group, no bias).

    Channel-last in and out. The modulated bilinear samples of all taps are formed by one weighted ``embedding_bag``
    over the four corners, then contracted with the kernel in one GEMM.

    ``image``: ``(n, H, W, C)`` input; ``offset``: ``(n, 18, H, W)``; channel ``2k`` = dy, ``2k + 1`` = dx of tap
    ``k = 3 * ki + kj`` (mmcv layout); ``mask``: ``(n, 9, H, W)`` modulation of each tap; ``weight``:
    ``(C_out, C, 3, 3)`` kernel; ``kernel``: ``gemm_kernel(weight)`` when the caller keeps it (saves a copy of the
    weights per call).

    Returns ``(n, H, W, C_out)``.
    """
    n, height, width, channels = image.shape
    indices, weights = _corner_gather_plan(offset, mask, height, width)
    table = image.reshape(n * height * width, channels)
    columns = F.embedding_bag(indices, table, mode="sum", per_sample_weights=weights)
    if kernel is None:
        kernel = gemm_kernel(weight)
    return (columns.view(n * height * width, 9 * channels) @ kernel).view(n, height, width, -1)


class ModulatedDeformConv3x3(nn.Module):
    """Holds the deformable kernel ``weight`` ``(C_out, C_in, 3, 3)`` (no bias) and applies it (see ``backend``)."""

    def __init__(self, in_channels: int, out_channels: int, backend: DcnBackend = "gather") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.backend: DcnBackend = backend
        fan_in, fan_out = in_channels * 9, out_channels
        nn.init.normal_(self.weight, std=(2.0 / (fan_in + fan_out)) ** 0.5)
        self._kernel: tuple[tuple, torch.Tensor] | None = None

    def _gemm_kernel(self) -> torch.Tensor:
        """``gemm_kernel(weight)``, kept until the weight changes (loading, ``.to()``, in-place edits)."""
        weight = self.weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, weight.requires_grad)
        if weight.requires_grad and torch.is_grad_enabled():
            return gemm_kernel(weight)  # training: the kernel must stay in the autograd graph
        if self._kernel is None or self._kernel[0] != key:
            with torch.no_grad():
                self._kernel = (key, gemm_kernel(weight).contiguous())
        return self._kernel[1]

    def forward(self, image: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``image`` ``(n, H, W, C)`` channel-last, ``offset`` ``(n, 18, H, W)``, ``mask`` ``(n, 9, H, W)``."""
        if self.backend == "gather":
            return modulated_deform_conv3x3(image, offset, mask, self.weight, kernel=self._gemm_kernel())
        if self.backend == "torchvision":
            from torchvision.ops import deform_conv2d

            out = deform_conv2d(image.permute(0, 3, 1, 2), offset, self.weight, padding=1, mask=mask)
            return out.permute(0, 2, 3, 1)
        raise ValueError(f"unknown deformable-conv backend {self.backend!r}")


class DeformableConvLayer(nn.Module):
    """``conv2``: predict per-tap offsets and modulation with a 3x3 conv, then apply the deformable 3x3 conv.

    The 27 predicted channels are 18 offsets (as is) and 9 modulation logits (sigmoid).
    """

    def __init__(self, channels: int, backend: DcnBackend = "gather") -> None:
        super().__init__()
        self.dcn_offset = nn.Conv2d(channels, 27, kernel_size=3, padding=1)
        self.dcn = ModulatedDeformConv3x3(channels, channels, backend)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` ``(n, H, W, C)`` channel-last -> ``(n, H, W, C)``."""
        offset_and_mask = self.dcn_offset(image.permute(0, 3, 1, 2))
        offset, mask_logits = offset_and_mask.split((18, 9), dim=1)
        return self.dcn(image, offset, mask_logits.sigmoid())
