"""A faster forward pass of segment-anything's ``ImageEncoderViT``: the same function of the same parameters.

:class:`FastImageEncoder` wraps an ``ImageEncoderViT`` without touching it (its modules and ``state_dict`` stay as
they are, so official checkpoints load unchanged) and computes ``ImageEncoderViT.forward`` differently:

* **Attention** goes through ``F.scaled_dot_product_attention`` (a fused kernel: the ``heads x L x L`` logits and
  their softmax are never materialised, where segment-anything holds both in float32). SAM's decomposed
  relative-position term ``rel_h[q, k_row] + rel_w[q, k_col]`` (from the unscaled query, as segment-anything
  computes it) is passed as the additive ``attn_mask``, which is exact: the reference adds the same term to the
  scaled logits before the softmax. The mask is built for at most :data:`MASK_BUDGET` elements at a time (one
  head of a global block), in float32 on the CPU whatever the compute dtype.
* **Windowed blocks** scatter q/k/v straight into window order with one ``index_copy_`` and gather the attention
  output back with one ``index_select`` that also drops the padding. Padded tokens get the qkv bias as their q/k/v
  (the reference pads the *normalised* tokens with zeros, and ``qkv(0)`` is the bias), so the qkv and output
  projections run on the real tokens only (64x64 instead of the 70x70 padded grid of a 1024 input), exactly.
* **Compute dtype** (:attr:`FastImageEncoder.dtype`): the linears and the attention run in bfloat16 / float16 on
  derived weight copies kept in memory (made once, remade when a parameter changes), while the residual stream,
  the LayerNorms, the relative-position term, the softmax statistics, the patch embedding and the neck stay in
  float32. In float32 the path equals the reference within float rounding (relative 1e-6).
* **CPU, bfloat16**: linear weights are pre-packed once for oneDNN and GELU is fused into the first MLP linear
  (about 1.4x a bf16-autocast linear + GELU; ~95 % of the CPU's bf16 peak on ViT-B's shapes).
* **Channels last throughout**: tokens stay (B, H, W, C) from the patch embedding (one linear over flattened
  patches, which unlike a convolution does not depend on ``torch.backends.mkldnn``) to the neck (the 1x1
  convolution is a linear, ``LayerNorm2d`` a LayerNorm over channels).

:func:`default_encoder_dtype` names the compute dtype used by default: bfloat16 on CPUs with AVX512-BF16 or AMX
and on CUDA devices that support it, float16 on older CUDA devices, and the model's own dtype otherwise.

``torch.compile`` is not used: compiled ``flex_attention`` with the relative-position term as a ``score_mod`` was
2.6x slower than the fused kernel with a mask on the CPU (and needs a C++ compiler and ~40 s to compile).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import ImageEncoderViT, get_rel_pos
from torch import nn

from .fast_linear import DerivedWeights, PackedLinear, cpu_has_fast_bf16, onednn_packing

#: the attention implementations of :class:`~napari_focsam.engine.sam_predictor.SamFamilyPredictor`
ATTENTION_MODES = ("fast", "reference")
#: the largest attention mask (elements) built at once: 2**24 is one head of a 64x64-token global block (64 MiB
#: in float32). Slicing heads costs nothing; slicing query rows does (every call re-packs K and V), so the budget is
#: in whole heads for SAM's grids.
MASK_BUDGET = 1 << 24
_REDUCED = (torch.bfloat16, torch.float16)
#: part of the embedding-cache key of the fast path: bump whenever its numerics change
FAST_ENCODER_VERSION = 1


def default_encoder_dtype(device: torch.device | str, model_dtype: torch.dtype = torch.float32) -> torch.dtype:
    """The encoder compute dtype chosen by default on ``device`` for a model held in ``model_dtype``.

    Only a float32 model is moved to a reduced precision (a float64 model asked for float64 on purpose):
    bfloat16 on a CPU with AVX512-BF16/AMX (about 2.5x float32 on the matmuls), bfloat16 on CUDA where supported,
    float16 on older CUDA devices; the model's dtype everywhere else (MPS, CPUs without bf16 instructions, where
    bfloat16 is emulated and slower than float32).
    """
    device = torch.device(device)
    if model_dtype != torch.float32:
        return model_dtype
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return model_dtype


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of statistics (LayerNorm, relative-position term, residual stream) for a compute dtype."""
    return torch.float32 if dtype in _REDUCED else dtype


@dataclass
class _Block:
    """The derived parameters of one ViT block."""

    norm1: tuple[torch.Tensor, torch.Tensor, float]
    norm2: tuple[torch.Tensor, torch.Tensor, float]
    qkv: PackedLinear
    proj: PackedLinear
    fc1: PackedLinear
    fc2: PackedLinear
    rel_pos_h: torch.Tensor | None
    rel_pos_w: torch.Tensor | None
    num_heads: int
    window_size: int


class FastImageEncoder:
    """``ImageEncoderViT.forward`` of ``encoder``'s parameters, computed in ``dtype`` (see the module docstring).

    Holds no parameters of its own: derived copies (weights in the compute dtype, packed weights, gathered
    relative-position tables) are made on first use and remade whenever a parameter of ``encoder`` changes
    (``load_state_dict``, ``.to()``), so one instance stays valid for the life of the model. Thread safe.
    """

    def __init__(self, encoder: ImageEncoderViT, dtype: torch.dtype | None = None, *,
                 mask_budget: int = MASK_BUDGET) -> None:
        self.encoder = encoder
        param = next(encoder.parameters())
        self.dtype = dtype or param.dtype
        if not self.dtype.is_floating_point:
            raise ValueError(f"encoder dtype must be a floating point dtype, got {self.dtype}")
        self.stat_dtype = _stat_dtype(self.dtype)
        self.mask_budget = int(mask_budget)
        self._blocks = DerivedWeights(encoder, self._make_blocks)
        self._tables: dict[tuple, object] = {}

    # ------------------------------------------------------------------ derived parameters
    def prepare(self) -> None:
        """Make the derived weights now (the first forward does it otherwise: about 1 s for ViT-H on a CPU)."""
        self._prepare()

    def _prepare(self) -> list[_Block]:
        return self._blocks.get()

    def _make_blocks(self) -> list[_Block]:
        blocks = []
        device = self.encoder.pos_embed.device if self.encoder.pos_embed is not None else next(
            self.encoder.parameters()).device
        pack = onednn_packing(device, self.dtype)
        grid = self.encoder.patch_embed.proj.stride
        tokens = (self.encoder.img_size // grid[0]) * (self.encoder.img_size // grid[1])
        with torch.no_grad():
            for blk in self.encoder.blocks:
                attn = blk.attn
                rows = tokens if pack else None
                use_rel = getattr(attn, "use_rel_pos", False)
                blocks.append(_Block(
                    norm1=(blk.norm1.weight.detach().to(self.stat_dtype),
                           blk.norm1.bias.detach().to(self.stat_dtype), blk.norm1.eps),
                    norm2=(blk.norm2.weight.detach().to(self.stat_dtype),
                           blk.norm2.bias.detach().to(self.stat_dtype), blk.norm2.eps),
                    qkv=PackedLinear(attn.qkv, self.dtype, rows),
                    proj=PackedLinear(attn.proj, self.dtype, rows),
                    fc1=PackedLinear(blk.mlp.lin1, self.dtype, rows),
                    fc2=PackedLinear(blk.mlp.lin2, self.dtype, rows),
                    rel_pos_h=attn.rel_pos_h.detach().to(self.stat_dtype) if use_rel else None,
                    rel_pos_w=attn.rel_pos_w.detach().to(self.stat_dtype) if use_rel else None,
                    num_heads=attn.num_heads,
                    window_size=blk.window_size,
                ))
                if not isinstance(blk.mlp.act, nn.GELU) or blk.mlp.act.approximate != "none":
                    raise NotImplementedError("the fast encoder path implements SAM's exact GELU MLP only")
        self._tables = {}
        return blocks

    def _table(self, key: tuple, make: Callable[[], object]) -> object:
        table = self._tables.get(key)
        if table is None:
            table = make()
            self._tables[key] = table  # a benign race: two threads may both make the same table
        return table

    def _window_index(self, h: int, w: int, ws: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Where token (y, x) of an (h, w) grid sits in window order, the padded positions, and the window count."""

        def make() -> tuple[torch.Tensor, torch.Tensor, int]:
            nwh, nww = math.ceil(h / ws), math.ceil(w / ws)
            y = torch.arange(h, device=device)[:, None]
            x = torch.arange(w, device=device)[None, :]
            index = (((y // ws) * nww + x // ws) * ws + y % ws) * ws + x % ws
            index = index.reshape(-1)
            is_pad = torch.ones(nwh * nww * ws * ws, dtype=torch.bool, device=device)
            is_pad[index] = False
            return index, is_pad.nonzero().reshape(-1), nwh * nww

        return self._table(("window", h, w, ws, device), make)  # type: ignore[return-value]

    def _rel_tables(self, i: int, blk: _Block, q_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        def make() -> tuple[torch.Tensor, torch.Tensor]:
            return (get_rel_pos(q_size[0], q_size[0], blk.rel_pos_h),
                    get_rel_pos(q_size[1], q_size[1], blk.rel_pos_w))

        return self._table(("rel", i, q_size), make)  # type: ignore[return-value]

    # ------------------------------------------------------------------ forward
    def __call__(self, x: torch.Tensor, cancel_check: Callable[[], None] | None = None,
                 *, early: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The image embedding of a preprocessed (B, 3, S, S) input, in the stat dtype (float32 for bf16/fp16).

        ``cancel_check`` is called before every block (it raises to abandon the computation). With ``early``, also
        the tokens after the first global-attention block, channels last (B, H, W, C) in the stat dtype: HQ-SAM's
        early ViT features (segment_anything_hq's ``interm_embeddings[0]``), from the same pass.
        """
        blocks = self._prepare()
        enc = self.encoder
        stat = self.stat_dtype
        x = self._patch_embed(x)  # (B, H, W, C) in the stat dtype, a fresh tensor
        if enc.pos_embed is not None:
            x += enc.pos_embed.to(stat)
        kept = None
        for i, blk in enumerate(blocks):
            if cancel_check is not None:
                cancel_check()
            x = self._block(i, blk, x)
            if early and kept is None and blk.window_size == 0:
                kept = x.clone()  # later blocks may update the token tensor in place
        if not early:
            return self._neck(x)
        if kept is None:
            raise ValueError("this encoder has no global-attention block, so it has no early features")
        return self._neck(x), kept

    def _patch_embed(self, x: torch.Tensor) -> torch.Tensor:
        """The non-overlapping patch convolution as one linear over flattened patches, in the stat dtype.

        Exactly the convolution's sum, and unlike a convolution it does not change with ``torch.backends.mkldnn``
        (the stack pipeline switches oneDNN off): in bfloat16, float noise here would be amplified to bfloat16
        rounding differences by the blocks.
        """
        proj = self.encoder.patch_embed.proj
        stat = self.stat_dtype
        ph, pw = proj.kernel_size
        b, c, h, w = x.shape
        if proj.stride != proj.kernel_size or proj.padding != (0, 0) or h % ph or w % pw or proj.groups != 1:
            return self.encoder.patch_embed(x.to(proj.weight.dtype)).to(stat)
        patches = x.to(stat).view(b, c, h // ph, ph, w // pw, pw).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(b, h // ph, w // pw, c * ph * pw)
        bias = None if proj.bias is None else proj.bias.to(stat)
        return F.linear(patches, proj.weight.to(stat).flatten(1), bias)

    def _block(self, i: int, blk: _Block, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        tokens = x.view(b, h * w, c)
        normed = F.layer_norm(tokens, (c,), *blk.norm1).to(self.dtype)
        qkv = blk.qkv(normed)  # (B, HW, 3C) in the compute dtype
        if blk.window_size > 0:
            attended = self._window_attention(i, blk, qkv, b, h, w)
        else:
            attended = self._attention(i, blk, qkv.view(b, h * w, 3, blk.num_heads, -1), (h, w))
        tokens.add_(blk.proj(attended))  # in place: ``x`` is always a tensor this forward made
        normed = F.layer_norm(tokens, (c,), *blk.norm2).to(self.dtype)
        tokens += blk.fc2(blk.fc1(normed, gelu=True))
        return tokens.view(b, h, w, c)

    def _window_attention(self, i: int, blk: _Block, qkv: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        ws = blk.window_size
        index, pad, windows = self._window_index(h, w, ws, qkv.device)
        width = qkv.shape[-1]
        grid = qkv.new_empty(b, windows * ws * ws, width)
        if pad.numel():
            # the reference pads the normalised tokens with zeros: qkv(0) is the bias
            grid[:, pad] = blk.qkv.bias if blk.qkv.bias is not None else 0
        grid.index_copy_(1, index, qkv)
        grid = grid.view(b * windows, ws * ws, 3, blk.num_heads, -1)
        out = self._attention(i, blk, grid, (ws, ws))  # (B * windows, ws * ws, C)
        return out.view(b, windows * ws * ws, -1).index_select(1, index)

    def _attention(self, i: int, blk: _Block, qkv: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Attention of ``qkv`` (N, L, 3, heads, head_dim) over an (h, w) token grid; returns (N, L, C)."""
        n, length, _, heads, head_dim = qkv.shape
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (N, heads, L, head_dim) views
        if blk.rel_pos_h is None:
            out = F.scaled_dot_product_attention(q, k, v)
            return out.transpose(1, 2).reshape(n, length, heads * head_dim)
        rh, rw = self._rel_tables(i, blk, size)
        qh, qw = size
        r_q = q.to(self.stat_dtype).reshape(n * heads, qh, qw, head_dim)
        # contiguous: the broadcast add that builds the mask is several times slower on strided operands
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh).contiguous().view(n, heads, qh, qw, qh, 1)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw).contiguous().view(n, heads, qh, qw, 1, qw)
        # the mask in float32 where the kernel takes it with a reduced-precision query (CPU), else in q's dtype
        mask_dtype = self.stat_dtype if q.device.type == "cpu" else q.dtype
        ns, gh, gr = self._slices(n, heads, qh, qw, length)
        if (ns, gh, gr) == (n, heads, qh):
            mask = torch.empty(n, heads, qh, qw, qh, qw, dtype=mask_dtype, device=q.device)
            torch.add(rel_h, rel_w, out=mask)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.view(n, heads, length, length))
            return out.transpose(1, 2).reshape(n, length, heads * head_dim)
        out = q.new_empty(n, length, heads, head_dim)
        buffer = torch.empty(ns * gh * gr * qw * length, dtype=mask_dtype, device=q.device)
        for s0 in range(0, n, ns):
            s1 = min(n, s0 + ns)
            for h0 in range(0, heads, gh):
                h1 = min(heads, h0 + gh)
                for r0 in range(0, qh, gr):
                    r1 = min(qh, r0 + gr)
                    shape = (s1 - s0, h1 - h0, r1 - r0, qw, qh, qw)
                    mask = buffer[: math.prod(shape)].view(shape)
                    torch.add(rel_h[s0:s1, h0:h1, r0:r1], rel_w[s0:s1, h0:h1, r0:r1], out=mask)
                    part = F.scaled_dot_product_attention(
                        q[s0:s1, h0:h1, r0 * qw:r1 * qw], k[s0:s1, h0:h1], v[s0:s1, h0:h1],
                        attn_mask=mask.view(s1 - s0, h1 - h0, (r1 - r0) * qw, length),
                    )
                    out[s0:s1, r0 * qw:r1 * qw, h0:h1] = part.transpose(1, 2)
        return out.view(n, length, heads * head_dim)

    def _slices(self, n: int, heads: int, qh: int, qw: int, length: int) -> tuple[int, int, int]:
        """Samples, heads and query-grid rows per attention call, so that a mask holds at most the budget."""
        budget = self.mask_budget
        per_head = length * length
        if heads * per_head <= budget:
            return max(1, min(n, budget // (heads * per_head))), heads, qh
        if per_head <= budget:
            return 1, budget // per_head, qh
        return 1, 1, max(1, budget // (qw * length))

    def _neck(self, x: torch.Tensor) -> torch.Tensor:
        """SAM's neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d) on channels-last tokens, in the stat dtype.

        The 1x1 convolution is a linear over channels and ``LayerNorm2d`` a LayerNorm over the channel axis (the same
        biased variance), so no NCHW round trip is needed until the end.
        """
        neck = self.encoder.neck
        assert isinstance(neck, nn.Module)
        parts = list(neck) if isinstance(neck, nn.Sequential) else []
        if not _is_sam_neck(parts):
            return neck(x.to(next(neck.parameters()).dtype).permute(0, 3, 1, 2))
        conv1, conv2 = parts[0], parts[2]
        assert isinstance(conv1, nn.Conv2d) and isinstance(conv2, nn.Conv2d)
        norm1, norm2 = cast(_ChannelNorm, parts[1]), cast(_ChannelNorm, parts[3])  # LayerNorm2d: checked above
        stat = self.stat_dtype
        y = F.linear(x, conv1.weight.to(stat).flatten(1))
        y = F.layer_norm(y, y.shape[-1:], norm1.weight.to(stat), norm1.bias.to(stat), norm1.eps)
        y = F.conv2d(y.permute(0, 3, 1, 2), conv2.weight.to(stat), None, conv2.stride, conv2.padding)
        y = F.layer_norm(y.permute(0, 2, 3, 1), y.shape[1:2], norm2.weight.to(stat), norm2.bias.to(stat), norm2.eps)
        return y.permute(0, 3, 1, 2).contiguous()


class _ChannelNorm(Protocol):
    """segment-anything's (or segment-anything-hq's) ``LayerNorm2d``: a LayerNorm over the channel axis."""

    weight: torch.Tensor
    bias: torch.Tensor
    eps: float


def _is_sam_neck(parts: list[nn.Module]) -> bool:
    if len(parts) != 4:
        return False
    conv1, norm1, conv2, norm2 = parts
    return (isinstance(conv1, nn.Conv2d) and conv1.kernel_size == (1, 1) and conv1.bias is None
            and conv1.stride == (1, 1) and conv1.groups == 1
            and isinstance(conv2, nn.Conv2d) and conv2.bias is None and conv2.groups == 1 and conv2.dilation == (1, 1)
            and isinstance(conv2.padding, tuple)
            and all(type(n).__name__ == "LayerNorm2d" and hasattr(n, "eps") for n in (norm1, norm2)))
