"""The building blocks of :class:`~napari_focsam.models.fast_decoder.FastDecoder`: per-thread scratch buffers and
the attention and projection operations that its fused and folded paths share.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .fast_upscaling import Upscaling

__all__ = ["Workspace", "attention", "merge_heads", "project", "self_attention", "split_heads"]


class Workspace(threading.local):
    """Scratch tensors of one thread, reused from call to call.

    A click allocates tens of megabytes of image-sized temporaries; glibc hands such blocks back to the OS and
    every call faults their pages in again, which on the development VM cost about a third of the decoder's time.
    The large intermediates are written into these buffers instead (``out=`` and in-place operations); nothing
    returned to the caller lives in them.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}
        self.active = True  #: off under autocast, whose results' dtypes the buffers cannot know in advance
        # the precisions of the call under way (see FastDecoder.precisions)
        self.attention_dtype: torch.dtype | None = None
        self.upscaling: Upscaling | None = None

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor,
            dtype: torch.dtype | None = None) -> torch.Tensor | None:
        """A ``shape`` tensor on ``like``'s device, of ``dtype`` (default: ``like``'s), its contents undefined; or
        None when inactive (every ``out=`` then allocates as usual)."""
        if not self.active:
            return None
        size = math.prod(shape)
        dtype = dtype or like.dtype
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype or buffer.device != like.device:
            buffer = torch.empty(size, dtype=dtype, device=like.device)
            self.buffers[name] = buffer
        return buffer[:size].view(shape)

    def converted(self, tokens: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
        """``tokens`` in ``dtype``, in the same layout: the scratch buffer ``name`` when converted, ``tokens``
        itself when already in ``dtype`` or under autocast (whose GEMMs cast their inputs themselves)."""
        buffer = None if tokens.dtype == dtype else self.get(name, tokens.shape, tokens, dtype)
        return tokens if buffer is None else buffer.copy_(tokens)

    @property
    def attention(self) -> torch.dtype:
        """The attention dtype of the call under way."""
        dtype = self.attention_dtype
        assert dtype is not None  # chosen at the start of the call
        return dtype

    @property
    def upscaling_now(self) -> Upscaling:
        """The output upscaling of the call under way."""
        upscaling = self.upscaling
        assert upscaling is not None  # chosen at the start of the call
        return upscaling


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, C) tokens as (B, heads, N, C / heads)."""
    batch, length, channels = x.shape
    return x.view(batch, length, num_heads, channels // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`split_heads`."""
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


def project(tokens: torch.Tensor, weight: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
    """``tokens @ weight + constant`` for (B, N, C) tokens and a per-token (N, K) constant, fused when B is 1."""
    batch, length, channels = tokens.shape
    if batch == 1:
        return torch.addmm(constant, tokens.reshape(length, channels), weight).unsqueeze(0)
    return torch.matmul(tokens, weight) + constant


def attention(module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment-anything's ``Attention.forward`` on already projected q, k, v, through SDPA, then ``out_proj``."""
    heads = module.num_heads
    out = F.scaled_dot_product_attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads))
    return module.out_proj(merge_heads(out))


def self_attention(layer, queries: torch.Tensor, query_pe: torch.Tensor) -> torch.Tensor:
    """The first step of ``TwoWayAttentionBlock.forward``: the prompt tokens' self attention (with its residual
    unless the layer skips the positional encoding), before ``norm1``."""
    sa = layer.self_attn
    if layer.skip_first_layer_pe:
        return attention(sa, sa.q_proj(queries), sa.k_proj(queries), sa.v_proj(queries))
    q = queries + query_pe
    return queries + attention(sa, sa.q_proj(q), sa.k_proj(q), sa.v_proj(queries))
