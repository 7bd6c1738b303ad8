"""SAM's output upscaling (two 2x2 stride-2 transposed convolutions with a layer norm and GELUs between them) as
GEMMs on token rows, contracted with the hypernetwork vectors before anything is rearranged into an image.

mkldnn's transposed-convolution kernels are several times slower on CPU for these shapes. A 2x2 transposed
convolution with stride 2 is one GEMM per input pixel (C_in -> 2 * 2 * C_out) followed by a rearrangement of the
2x2 outputs into the doubled grid. Layer norm, GELU, the second convolution and the dot product with the
hypernetwork vectors all act per output pixel, so nothing is rearranged until the (h, w, 2, 2, 2, 2) logits, whose
pixel (i, j, a1, b1, a2, b2) lands at row ``4i + 2a1 + a2`` and column ``4j + 2b1 + b2``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from .decoder_ops import Workspace

__all__ = ["Upscaling", "transposed_conv_matrix", "upscaled_logits"]


def transposed_conv_matrix(conv: torch.nn.ConvTranspose2d) -> torch.Tensor:
    """A 2x2, stride-2 transposed convolution's weight ``(C_in, C_out, 2, 2)`` as a ``(C_in, 2 * 2 * C_out)`` GEMM
    matrix whose columns are ordered (kernel row, kernel column, output channel)."""
    if conv.kernel_size != (2, 2) or conv.stride != (2, 2) or conv.padding != (0, 0) or conv.groups != 1:
        raise ValueError(f"expected a 2x2 stride-2 transposed convolution, got {conv}")
    return conv.weight.permute(0, 2, 3, 1).reshape(conv.in_channels, -1).contiguous()


class Upscaling(NamedTuple):
    """The output upscaling's parameters in one dtype: (GEMM matrix, bias, output channels) of each transposed
    convolution and (weight, bias, eps) of the norm between them."""

    first: tuple[torch.Tensor, torch.Tensor, int]
    norm: tuple[torch.Tensor, torch.Tensor, float]
    second: tuple[torch.Tensor, torch.Tensor, int]

    @classmethod
    def of(cls, output_upscaling: Any, dtype: torch.dtype) -> Upscaling:
        """The parameters of a ``MaskDecoder.output_upscaling`` (conv, norm, GELU, conv, GELU) in ``dtype``."""
        conv1, norm, _, conv2, _ = output_upscaling
        return cls(
            (transposed_conv_matrix(conv1).to(dtype), conv1.bias.repeat(4).to(dtype).contiguous(),
             conv1.out_channels),
            (norm.weight.to(dtype), norm.bias.to(dtype), norm.eps),
            (transposed_conv_matrix(conv2).to(dtype), conv2.bias.repeat(4).to(dtype).contiguous(),
             conv2.out_channels),
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.first[0].dtype


def upscaled_logits(
    upscaling: Upscaling, rows: torch.Tensor, hyper: torch.Tensor, batch: int, h: int, w: int,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """``output_upscaling`` on (B * h * w, C) token rows contracted with (B, c', M) hypernetwork vectors: (B, M, 4h,
    4w) logits in the upscaling's dtype.

    ``workspace``: the large intermediates go into its scratch buffers (see
    :class:`~napari_focsam.models.decoder_ops.Workspace`); None allocates them.
    """
    ws = workspace

    def scratch(name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
        return None if ws is None else ws.get(name, shape, like)

    matrix, bias, out = upscaling.first
    x = torch.addmm(bias, rows, matrix, out=scratch("up1", (rows.shape[0], 4 * out), matrix))
    x = x.view(-1, out)  # rows (b, i, j, a1, b1)
    if ws is not None and ws.active and x.device.type == "cpu":  # (CUDA keeps float32 statistics for bfloat16)
        weight, norm_bias, eps = upscaling.norm
        normed = ws.get("up1_norm", x.shape, x)
        stats = ws.get("up1_stats", (2, x.shape[0], 1), x)  # mean and 1/std, in x's dtype on the CPU
        assert normed is not None and stats is not None  # the workspace is active
        torch.ops.aten.native_layer_norm.out(x, [out], weight, norm_bias, eps, out0=normed, out1=stats[0],
                                             out2=stats[1])
    else:
        normed = F.layer_norm(x, (out,), *upscaling.norm)
    x = torch.ops.aten.gelu_(normed)
    matrix, bias, out = upscaling.second
    x = torch.addmm(bias, x, matrix, out=scratch("up2", (x.shape[0], matrix.shape[1]), x))
    x = torch.ops.aten.gelu_(x)  # rows (b, i, j, a1, b1), columns (a2, b2, channel)
    masks = hyper.shape[2]
    logits = torch.bmm(x.view(batch, -1, out), hyper.to(x.dtype))  # (B, h*w*2*2*2*2, M)
    logits = logits.view(batch, h, w, 2, 2, 2, 2, masks).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return logits.reshape(batch, masks, 4 * h, 4 * w)
