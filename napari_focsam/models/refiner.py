"""FocSAM focus refiner: re-attend SAM image embeddings inside the windows around the coarse object.

Given SAM's image embedding, the coarse mask logits of a first decoder pass and that pass's mask token, the refiner
runs ``depth`` blocks over the embedding windows that touch an enlarged box around the coarse object (Dwin-MSA),
alternating plain and half-window-shifted partitions. Each block

1. updates a per-window copy of the query (mask) token by cross-attention to its window (``img2cls``);
2. mixes each selected window with window self-attention, a query-conditioned pixel-wise dynamic ReLU (P-DyReLU) and
   a modulated deformable 3x3 convolution (``cls2img``);
3. merges the per-window queries back into one query by a learned rescaling of their mean.

Windows that are never selected come out as ``embed_proj(image_embeds)``. Module and parameter names follow the
official FocSAM checkpoint (``refine_head.*`` with the prefix stripped), so its tensors load with ``strict=True``.

Implementation notes:

* the embedding is kept channel-last as a flat ``(B * Hp * Wp, C)`` canvas; selected windows are gathered by flat token
  index, processed as one batch, and written back in place, so unselected windows cost nothing;
* the shifted partition is a cyclic roll by ``-window_size // 2`` without an attention mask: windows at the
  bottom/right border hold tokens of the opposite border;
* attention appends an all-zero key and value to every sequence (a "null" slot with logit 0);
* the deformable convolution (:mod:`napari_focsam.models.deform_conv`) samples with an ``embedding_bag`` of the four
  bilinear corners and one GEMM, the default; ``dcn_backend="torchvision"`` uses ``torchvision.ops.deform_conv2d``;
  both use mmcv's offset layout;
* nothing assumes a dtype: the model runs in whatever dtype its parameters have (float32 in use, float64 for parity).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_focsam._cancel import CancelToken, check_cancel
from napari_focsam.models.deform_conv import DcnBackend, DeformableConvLayer, ModulatedDeformConv3x3
from napari_focsam.models.focus import FocusPlan, WindowSelection, focus_bbox, plan_focus
from napari_focsam.models.geometry import as_size

__all__ = [
    "FocusBlock",
    "FocusRefiner",
    "NullSlotAttention",
    "PixelDynamicReLU",
    "QueryFromWindow",
    "WindowMixer",
]


class NullSlotAttention(nn.Module):
    """Multi-head attention whose keys and values get one extra all-zero entry after projection.

    The zero key adds a logit of exactly 0 to every softmax, and its zero value contributes nothing, so a query can
    attend "nowhere". Separate q/k/v/out projections with bias; scale ``head_dim ** -0.5``; no positional terms.

    :meth:`forward` is the plain definition. The refiner calls two equivalent fast paths: :meth:`self_attend`
    (one fused q/k/v projection) and :meth:`attend_single` (one query token, keys and values never materialised).
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def _heads(self, sequence: torch.Tensor) -> torch.Tensor:
        """``(n, L, C)`` -> ``(n, heads, L, head_dim)`` view; channel ``c`` belongs to head ``c // head_dim``."""
        batch, length, channels = sequence.shape
        return sequence.view(batch, length, self.num_heads, channels // self.num_heads).transpose(1, 2)

    def _merge(self, heads: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = heads.shape
        return self.proj(heads.transpose(1, 2).reshape(batch, length, -1))

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Attend ``query`` ``(n, Lq, C)`` to ``context`` ``(n, Lk, C)`` (keys and values); returns ``(n, Lq, C)``."""
        q = self._heads(self.q_proj(query))
        k = self._heads(F.pad(self.k_proj(context), (0, 0, 0, 1)))
        v = self._heads(F.pad(self.v_proj(context), (0, 0, 0, 1)))
        return self._merge(F.scaled_dot_product_attention(q, k, v))

    def self_attend(self, tokens: torch.Tensor) -> torch.Tensor:
        """``forward(tokens, tokens)`` with one GEMM for q, k and v.

        The input gets a zero row first; its projection is the bias, which is zeroed for k and v to form the null
        slot (the query of that row is dropped).
        """
        length, channels = tokens.shape[1], tokens.shape[2]
        weight = torch.cat((self.q_proj.weight, self.k_proj.weight, self.v_proj.weight))
        bias = torch.cat((self.q_proj.bias, self.k_proj.bias, self.v_proj.bias))
        qkv = F.linear(F.pad(tokens, (0, 0, 0, 1)), weight, bias)
        qkv[:, length, channels:] = 0
        q = self._heads(qkv[:, :length, :channels])
        k = self._heads(qkv[:, :, channels : 2 * channels])
        v = self._heads(qkv[:, :, 2 * channels :])
        return self._merge(F.scaled_dot_product_attention(q, k, v))

    def attend_single(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``forward`` for a single query token ``(n, 1, C)``, folding the k/v projections into the query side.

        Per head ``h``: ``q_h . (Wk_h t + bk_h) = (Wk_h^T q_h) . t + q_h . bk_h`` and
        ``sum_j a_j (Wv_h t_j + bv_h) = Wv_h (sum_j a_j t_j) + bv_h sum_j a_j``, where the null slot has logit 0 and
        adds nothing to the value. This costs O(L * C * heads) instead of O(L * C^2).
        """
        batch, length, channels = context.shape
        heads, head_dim = self.num_heads, channels // self.num_heads
        q = self.q_proj(query).view(batch, heads, 1, head_dim)
        key_weight = self.k_proj.weight.view(heads, head_dim, channels)
        value_weight = self.v_proj.weight.view(heads, head_dim, channels)
        folded_query = (q @ key_weight).squeeze(2)
        key_bias = (q.squeeze(2) * self.k_proj.bias.view(heads, head_dim)).sum(dim=-1, keepdim=True)
        logits = (folded_query @ context.transpose(1, 2) + key_bias) * head_dim**-0.5
        attn = F.pad(logits, (0, 1)).softmax(dim=-1)[..., :length]
        pooled = attn @ context
        out = (pooled.unsqueeze(2) @ value_weight.transpose(1, 2)).squeeze(2)
        out = out + self.v_proj.bias.view(heads, head_dim) * attn.sum(dim=-1, keepdim=True)
        return self.proj(out.reshape(batch, 1, channels))


class QueryFromWindow(nn.Module):
    """``img2cls``: a pre-norm transformer step that updates each window's query token from that window's tokens.

    ``q = q + gamma1 * attn(norm_q(q), norm_kv(tokens))`` then ``q = q + gamma2 * mlp(norm(q))``.
    """

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(mlp_ratio * embed_dim)
        self.gamma1 = nn.Parameter(torch.ones(embed_dim))
        self.gamma2 = nn.Parameter(torch.ones(embed_dim))
        self.norm_q = nn.LayerNorm(embed_dim)
        self.norm_kv = nn.LayerNorm(embed_dim)
        self.attn = NullSlotAttention(embed_dim, num_heads)
        self.norm = nn.LayerNorm(embed_dim)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, embed_dim))

    def forward(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``query`` ``(n, 1, C)``, ``tokens`` ``(n, N, C)`` -> updated query ``(n, 1, C)``."""
        query = query + self.gamma1 * self.attn.attend_single(self.norm_q(query), self.norm_kv(tokens))
        return query + self.gamma2 * self.mlp(self.norm(query))


class PixelDynamicReLU(nn.Module):
    """P-DyReLU: ``max`` of two affine maps of ``x`` whose slopes/offsets come from the query.

    * pixel branch: per token, from the raw dot product ``x . c`` through ``pixel_mlp`` (1 -> C -> 2C, tanh);
    * channel branch: per window, from the token mean through ``channel_mlp`` (C -> C -> 2C, tanh).

    Each branch's 2C outputs are rescaled by ``exp(*_scale)`` and shifted by ``*_bias``; the first C are the slope,
    the last C the offset: ``act = slope * x + offset``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pixel_scale = nn.Parameter(torch.zeros(2 * channels))
        self.pixel_bias = nn.Parameter(torch.zeros(2 * channels))
        self.channel_scale = nn.Parameter(torch.zeros(2 * channels))
        self.channel_bias = nn.Parameter(torch.zeros(2 * channels))
        self.pixel_mlp = nn.Sequential(
            nn.Linear(1, channels), nn.ReLU(inplace=True), nn.Linear(channels, 2 * channels), nn.Tanh()
        )
        self.channel_mlp = nn.Sequential(
            nn.Linear(channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, 2 * channels), nn.Tanh()
        )

    @staticmethod
    def _affine(x: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
        slope, offset = coefficients.chunk(2, dim=-1)
        return torch.addcmul(offset, slope, x)

    def forward(self, x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``x`` ``(n, N, C)``, ``query`` ``(n, 1, C)`` -> ``(n, N, C)``."""
        pixel = torch.addcmul(self.pixel_bias, self.pixel_mlp(x @ query.transpose(-1, -2)), self.pixel_scale.exp())
        channel = self.channel_mlp(x.mean(dim=1, keepdim=True)) * self.channel_scale.exp() + self.channel_bias
        return torch.maximum(self._affine(x, pixel), self._affine(x, channel))


class WindowMixer(nn.Module):
    """``cls2img`` (the MSA module): update the tokens of each selected window, conditioned on its query.

    ``t = P-DyReLU(norm1(self_attn(x)), cls_proj(q))``; ``u = x + gamma1 * t``;
    ``out = x + gamma2 * relu(norm2(deform_conv(u)))``. The final residual goes to the block input ``x``, so the
    attention branch reaches the output only through the deformable convolution, which sees one window at a time
    with zero padding.
    """

    def __init__(self, embed_dim: int, num_heads: int, dcn_backend: DcnBackend = "gather") -> None:
        super().__init__()
        self.gamma1 = nn.Parameter(torch.ones(1, embed_dim, 1, 1))
        self.gamma2 = nn.Parameter(torch.ones(1, embed_dim, 1, 1))
        self.cls_proj = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.LayerNorm(embed_dim))
        self.attn = NullSlotAttention(embed_dim, num_heads)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.relu1 = PixelDynamicReLU(embed_dim)
        self.conv2 = DeformableConvLayer(embed_dim, dcn_backend)
        self.norm2 = nn.GroupNorm(1, embed_dim)

    def forward(self, windows: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``windows`` ``(n, S, S, C)`` channel-last, ``query`` ``(n, 1, C)`` -> ``(n, S, S, C)``."""
        n, size, _, channels = windows.shape
        tokens = windows.reshape(n, size * size, channels)
        mixed = self.relu1(self.norm1(self.attn.self_attend(tokens)), self.cls_proj(query))
        updated = (tokens + self.gamma1.view(channels) * mixed).view(n, size, size, channels)
        conv = self.conv2(updated)
        conv = F.relu(self.norm2(conv.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        return windows + self.gamma2.view(channels) * conv


class FocusBlock(nn.Module):
    """One refine block over the selected windows of one partition (plain or shifted).

    It edits the flat channel-last canvas in place (only the selected windows' tokens) and returns the new query.
    The query is copied to every window; selected windows update their copy; the block's new query is
    ``pre + s * (mean_over_all_windows - pre)`` where unselected windows contribute ``pre`` and, with
    ``rescale_query``, ``s = exp(w * -log(max(f, 0.01)) + b)`` for the selected fraction ``f`` (else ``s = 1``).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        mlp_ratio: float,
        shifted: bool,
        rescale_query: bool,
        dcn_backend: DcnBackend = "gather",
    ) -> None:
        super().__init__()
        self.shifted = shifted
        self.img2cls = QueryFromWindow(embed_dim, num_heads, mlp_ratio)
        self.cls2img = WindowMixer(embed_dim, num_heads, dcn_backend)
        self.cls_scale_proj: nn.Linear | None = None
        if rescale_query:
            self.cls_scale_proj = nn.Linear(1, 1)
            nn.init.ones_(self.cls_scale_proj.weight)
            nn.init.zeros_(self.cls_scale_proj.bias)

    def forward(
        self, canvas: torch.Tensor, query: torch.Tensor, selection: WindowSelection, window_size: int
    ) -> torch.Tensor:
        """Refine the selected windows of the flat ``canvas`` ``(B * Hp * Wp, C)`` in place; return the new query."""
        channels = canvas.shape[-1]
        window_queries = query[selection.batch_index]
        if selection.count:
            windows = canvas.index_select(0, selection.token_index)
            windows = windows.view(selection.count, window_size, window_size, channels)
            window_queries = self.img2cls(window_queries, windows.view(selection.count, -1, channels))
            refined = self.cls2img(windows, window_queries)
            canvas.index_copy_(0, selection.token_index, refined.reshape(-1, channels))
        return self._merge_queries(query, window_queries, selection)

    def _merge_queries(
        self, query: torch.Tensor, window_queries: torch.Tensor, selection: WindowSelection
    ) -> torch.Tensor:
        batch, num_windows = selection.selected.shape
        per_window = query.expand(batch, num_windows, query.shape[-1]).clone()
        per_window[selection.batch_index, selection.window_index] = window_queries[:, 0]
        mean = per_window.mean(dim=1, keepdim=True)
        if self.cls_scale_proj is None:
            return mean
        fraction = selection.selected.to(query.dtype).mean(dim=1).view(batch, 1, 1)
        scale = self.cls_scale_proj(-fraction.clamp(min=0.01).log()).exp()
        return scale * (mean - query) + query


class FocusRefiner(nn.Module):
    """FocSAM's refine head (Dwin-MSA + P-DyReLU) with the official parameter names.

    ``embed_dim``: channels of the SAM image embedding; ``depth``: number of blocks; even blocks use the plain window
    partition, odd ones the shifted one; ``num_heads``: attention heads; ``mlp_ratio``: hidden width of the query MLP
    relative to ``embed_dim``; ``window_size``: window side in embedding cells (16 on SAM's 64x64 grid gives 4x4
    windows); ``expand_ratio``: focus-box scale, one value or ``(height_ratio, width_ratio)``; ``dcn_backend``:
    ``"gather"`` (default: our corner gather + one GEMM, equal to ``torchvision`` within 1e-12 in float64) or
    ``"torchvision"`` (``torchvision.ops.deform_conv2d``) for the deformable convolution. The default was chosen by
    measurement: on a 2-core CPU the gather kernel makes the whole refiner 5-8x faster.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        window_size: int = 16,
        expand_ratio: float | Sequence[float] = 1.4,
        *,
        dcn_backend: DcnBackend = "gather",
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.expand_ratio = expand_ratio
        self.embed_proj = nn.Conv2d(embed_dim, embed_dim, kernel_size=1)
        self.token_proj = nn.Linear(embed_dim, embed_dim)
        self.blocks = nn.ModuleList(
            FocusBlock(
                embed_dim,
                num_heads,
                mlp_ratio,
                shifted=index % 2 == 1,
                rescale_query=index < depth - 1,
                dcn_backend=dcn_backend,
            )
            for index in range(depth)
        )

    def set_dcn_backend(self, backend: DcnBackend) -> None:
        """Switch every block's deformable convolution between ``"gather"`` and ``"torchvision"``."""
        for module in self.modules():
            if isinstance(module, ModulatedDeformConv3x3):
                module.backend = backend

    def plan(
        self,
        coarse_logits: torch.Tensor,
        grid_size: tuple[int, int],
        input_size: tuple[int, int] = (1024, 1024),
    ) -> FocusPlan:
        """Focus boxes and selected windows for coarse logits ``(B, 1, h, w)`` and an embedding grid ``(h, w)``."""
        boxes = focus_bbox(coarse_logits, input_size, self.expand_ratio)
        return plan_focus(boxes, input_size, grid_size, self.window_size, coarse_logits.device)

    def forward(
        self,
        image_embeds: torch.Tensor,
        coarse_logits: torch.Tensor,
        mask_token: torch.Tensor,
        *,
        input_size: tuple[int, int] = (1024, 1024),
        cancel: CancelToken | None = None,
    ) -> torch.Tensor:
        """Refine ``image_embeds`` around the coarse object.

        ``image_embeds``: ``(B, C, h, w)`` SAM image embedding; ``coarse_logits``: ``(B, 1, Hl, Wl)`` raw logits of the
        coarse decoder pass; ``mask_token``: ``(B, 1, C)`` (or ``(B, C)``) mask-token output of that pass, before the
        hypernetwork MLP; ``input_size``: ``(height, width)`` of the padded model input the logits are resized to
        (1024x1024); ``cancel``: polled before every block; a cancelled token raises
        :class:`~napari_focsam._cancel.Cancelled`.

        Returns the refined embedding ``(B, C, h, w)``, to replace ``image_embeds`` for all later decoder calls.
        """
        if image_embeds.ndim != 4:
            raise ValueError(f"image_embeds must be (B, C, h, w), got shape {tuple(image_embeds.shape)}")
        plan = self.plan(coarse_logits, as_size(image_embeds.shape[-2:]), input_size)
        return self.refine(image_embeds, mask_token, plan, cancel=cancel)

    def refine(
        self,
        image_embeds: torch.Tensor,
        mask_token: torch.Tensor,
        plan: FocusPlan,
        *,
        cancel: CancelToken | None = None,
    ) -> torch.Tensor:
        """Run the blocks for a given :class:`FocusPlan` (e.g. from explicit boxes via ``plan_focus``)."""
        batch, channels, height, width = image_embeds.shape
        if mask_token.ndim == 2:
            mask_token = mask_token[:, None]
        if mask_token.shape != (batch, 1, channels):
            raise ValueError(f"mask_token must be ({batch}, 1, {channels}), got shape {tuple(mask_token.shape)}")
        if plan.cell_mask.shape != (batch, height, width):
            raise ValueError(f"plan is for {tuple(plan.cell_mask.shape)}, embedding is {(batch, height, width)}")
        grid = plan.plain_grid
        x = self.embed_proj(image_embeds).permute(0, 2, 3, 1)
        canvas = grid.pad(x).contiguous()
        flat = canvas.view(-1, channels)
        query = self.token_proj(mask_token)
        for block in self.blocks:
            check_cancel(cancel)
            selection = plan.shifted if block.shifted else plan.plain
            query = block(flat, query, selection, self.window_size)
            if grid.has_padding:
                canvas[:, height:].zero_()
                canvas[:, :, width:].zero_()
        return canvas[:, :height, :width].permute(0, 3, 1, 2).contiguous()
