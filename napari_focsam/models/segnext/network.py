"""SegNext's network in plain torch, with the module names of the official checkpoints.

:class:`SegNextNet` holds the five parts whose weights a checkpoint stores (``backbone.``, ``visual_prompts_encoder.``,
``fusion_blocks.``, ``neck.``, ``head.``) and computes the official click-inference path in two halves:

* :meth:`SegNextNet.image_features`: the image at 1024² (normalised, then resized) through the ViT-B backbone (16-px
  patches, the cls slot of the position table unused, windowed attention on a 4 × 4 grid of 16 × 16-token windows
  except in blocks 2, 5, 8 and 11, LayerNorm eps 1e-6, ``fc_norm`` unused): (1, 768, 64, 64), once per image;
* :meth:`SegNextNet.prompt_logits`: the 3-channel prompt map ([previous probability, positive disks, negative
  disks] at 1024²) through its patch embedding, added to the image features, then the fusion blocks (global
  attention over all 4096 tokens, LayerNorm eps 1e-5), the simple feature pyramid and the MLP head: (1, 1, 256, 256)
  logits, once per click.

The backbone's linears and attention can run in a lower precision (``lowp``, e.g. bfloat16) while the residual
stream and the norms stay in the model's dtype (the per-click half's fast path is :mod:`.fast`);
``attention="explicit"`` writes the attention out as
``softmax(q kᵀ / 8) v`` (the official formulation) instead of torch's fused kernel.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import SegNextConfig

ATTENTION = ("sdpa", "explicit")


def _linear(layer: nn.Linear, x: torch.Tensor, lowp: torch.dtype | None,
            out: torch.dtype | None = None) -> torch.Tensor:
    """``layer(x)``; with ``lowp`` the product runs in that dtype (a cached weight copy) and the result comes back in
    ``out`` (default: ``x``'s dtype)."""
    if lowp is None or lowp == layer.weight.dtype:
        return layer(x.to(layer.weight.dtype)).to(out or x.dtype)
    cache = layer.__dict__.setdefault("_lowp_copies", {})
    key = (lowp, layer.weight.data_ptr(), layer.weight._version)
    if key not in cache:
        cache.clear()
        cache[key] = (layer.weight.detach().to(lowp), layer.bias.detach().to(lowp))
    weight, bias = cache[key]
    return F.linear(x.to(lowp), weight, bias).to(out or x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attention: str = "sdpa", lowp: torch.dtype | None = None) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        qkv = _linear(self.qkv, x, lowp, out=lowp).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if attention == "explicit":
            weights = (q @ k.transpose(-2, -1)) * (c // heads) ** -0.5
            out = weights.softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, n, c)
        return _linear(self.proj, out, lowp, out=x.dtype)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, lowp: torch.dtype | None = None) -> torch.Tensor:
        if lowp is not None and lowp != self.fc1.weight.dtype:
            hidden = F.gelu(_linear(self.fc1, x, lowp, out=lowp))
            return _linear(self.fc2, hidden, lowp, out=x.dtype)
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(LN x)``, then ``x + mlp(LN x)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, attention: str = "sdpa", lowp: torch.dtype | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), attention, lowp)
        return x + self.mlp(self.norm2(x), lowp)


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Backbone(nn.Module):
    """The plain ViT image encoder (``backbone.`` keys)."""

    def __init__(self, cfg: SegNextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid + 1, dim))
        self.patch_embed = PatchEmbed(3, dim, cfg.patch_size)
        self.blocks = nn.ModuleList(Block(dim, cfg.num_heads, cfg.mlp_ratio, 1e-6) for _ in range(cfg.depth))
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6)  # stored in the checkpoints, unused by the forward pass

    def forward(self, x: torch.Tensor, *, attention: str = "sdpa", lowp: torch.dtype | None = None,
                before_block: Callable[[int], None] | None = None,
                after_block: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
        cfg = self.cfg
        g, w = cfg.grid, cfg.window
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed[:, 1:]
        b, _, c = x.shape
        n = g // w
        for index, block in enumerate(self.blocks):
            if before_block is not None:
                before_block(index)
            if cfg.is_global(index):
                x = block(x, attention, lowp)
            else:  # raster tokens -> (b·n·n windows, w·w tokens) -> back
                win = x.reshape(b, n, w, n, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b * n * n, w * w, c)
                win = block(win, attention, lowp)
                x = win.reshape(b, n, n, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, g * g, c)
            if after_block is not None:
                after_block(index, x)
        return x.transpose(1, 2).reshape(b, c, g, g)


class PromptEncoder(nn.Module):
    """The dense prompt map's patch embedding (``visual_prompts_encoder.``): no norm, no position."""

    def __init__(self, cfg: SegNextConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, prompt_map: torch.Tensor) -> torch.Tensor:
        return self.proj(prompt_map)


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(1, channels)


class SimpleFPN(nn.Module):
    """Four scales from the single 1/16 map (``neck.``): ×4 and ×2 up by transposed convolutions, ×1, ×½ down."""

    def __init__(self, cfg: SegNextConfig) -> None:
        super().__init__()
        d, (o4, o8, o16, o32) = cfg.embed_dim, cfg.neck_dims
        self.down_4 = nn.Sequential(
            nn.ConvTranspose2d(d, d // 2, 2, stride=2), _gn(d // 2), nn.GELU(),
            nn.ConvTranspose2d(d // 2, d // 4, 2, stride=2), _gn(d // 4),
            nn.Conv2d(d // 4, o4, 1), _gn(o4), nn.GELU())
        self.down_8 = nn.Sequential(
            nn.ConvTranspose2d(d, d // 2, 2, stride=2), _gn(d // 2), nn.Conv2d(d // 2, o8, 1), _gn(o8), nn.GELU())
        self.down_16 = nn.Sequential(nn.Conv2d(d, o16, 1), _gn(o16), nn.GELU())
        self.down_32 = nn.Sequential(
            nn.Conv2d(d, d * 2, 2, stride=2), _gn(d * 2), nn.Conv2d(d * 2, o32, 1), _gn(o32), nn.GELU())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [seq(x) for seq in (self.down_4, self.down_8, self.down_16, self.down_32)]


class ConvRelu(nn.Module):
    """A 1 × 1 convolution with bias followed by ReLU (keys ``conv.weight``, ``conv.bias``)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class Head(nn.Module):
    """The MLP head (``head.``): each scale to 256 channels at the finest scale, fused, then one logit channel."""

    def __init__(self, cfg: SegNextConfig) -> None:
        super().__init__()
        out = cfg.head_channels
        self.convs = nn.ModuleList(ConvRelu(c, out) for c in cfg.neck_dims)
        self.fusion_conv = ConvRelu(out * len(cfg.neck_dims), out)
        self.seg_conv = nn.Conv2d(out, 1, 1)

    def forward(self, feats: list[torch.Tensor], *, folded: bool = True) -> torch.Tensor:
        """The logits at the finest scale. ``folded`` applies the fusion convolution's slice for each coarse scale
        before the (linear) bilinear upsampling instead of after it: the same function, about 10 × less work."""
        size = feats[0].shape[-2:]
        mapped = [conv(f) for conv, f in zip(self.convs, feats)]
        fusion = self.fusion_conv.conv
        if not folded:
            ups = [m if m.shape[-2:] == size else F.interpolate(m, size, mode="bilinear", align_corners=False)
                   for m in mapped]
            fused = F.relu(fusion(torch.cat(ups, dim=1)))
            return self.seg_conv(fused)
        slices = fusion.weight.split([m.shape[1] for m in mapped], dim=1)
        total = None
        for m, weight in zip(mapped, slices):
            part = F.conv2d(m, weight)
            if part.shape[-2:] != size:
                part = F.interpolate(part, size, mode="bilinear", align_corners=False)
            total = part if total is None else total + part
        assert total is not None and fusion.bias is not None  # at least one scale; the fusion has a bias
        fused = F.relu(total + fusion.bias.view(1, -1, 1, 1))
        return self.seg_conv(fused)


class SegNextNet(nn.Module):
    """The whole network; the state dict has exactly the official checkpoint's keys."""

    def __init__(self, cfg: SegNextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = Backbone(cfg)
        self.neck = SimpleFPN(cfg)
        self.head = Head(cfg)
        self.visual_prompts_encoder = PromptEncoder(cfg)
        self.fusion_blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, 1e-5) for _ in range(cfg.fusion_depth))

    def normalize_resize(self, image: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) values in [0, 1] → normalised, then resized to the square input (no padding, no
        antialiasing), as the official predictor does."""
        mean = torch.tensor(self.cfg.mean, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.std, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        x = (image - mean) / std
        size = self.cfg.img_size
        return F.interpolate(x, (size, size), mode="bilinear", align_corners=False)

    def image_features(self, x: torch.Tensor, **kwargs: object) -> torch.Tensor:
        """(1, 768, 64, 64) features of a normalised, resized image (keyword options: see :class:`Backbone`)."""
        return self.backbone(x, **kwargs)

    def fuse(self, features: torch.Tensor, prompt_map: torch.Tensor, *, attention: str = "sdpa") -> torch.Tensor:
        """Image features + the prompt map's embedding, through the fusion blocks: (1, 768, 64, 64)."""
        prompt = self.visual_prompts_encoder(prompt_map.to(features.dtype))
        b, c, g, _ = features.shape
        x = (features + prompt).flatten(2).transpose(1, 2)
        for block in self.fusion_blocks:
            x = block(x, attention)
        return x.transpose(1, 2).reshape(b, c, g, g)

    def decode(self, fused: torch.Tensor, *, folded: bool = True) -> torch.Tensor:
        """The fused map through the pyramid and the head: (1, 1, 256, 256) logits."""
        return self.head(self.neck(fused), folded=folded)

    def prompt_logits(self, features: torch.Tensor, prompt_map: torch.Tensor, *, attention: str = "sdpa",
                      folded: bool = True) -> torch.Tensor:
        """(1, 1, 256, 256) logits of one prompt map on the image features, in the model's dtype (the fast
        lower-precision path is :class:`~.fast.FastPromptPath`)."""
        return self.decode(self.fuse(features, prompt_map, attention=attention), folded=folded)
