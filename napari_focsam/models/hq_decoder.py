"""HQ-SAM's mask decoder (Ke et al., NeurIPS 2023; SysCV/sam-hq): SAM's decoder plus a high-quality output token.

:class:`HQMaskDecoder` is segment-anything's ``MaskDecoder`` with the five parts HQ-SAM adds, under the official
``segment_anything_hq`` attribute names so that ``sam_hq_vit_{b,l,h}.pth`` load strictly into it:

* ``hf_token`` (the HQ output token, a 6th output token after the IoU token and SAM's four mask tokens) and
  ``hf_mlp`` (its hypernetwork MLP, 256 → 256 → 32);
* ``compress_vit_feat``: two 2x2 stride-2 transposed convolutions (ViT width → 256 → 32, LayerNorm2d + GELU between)
  that bring the *early* ViT features (the output of the encoder's first global-attention block, channels last)
  to the 256² mask resolution;
* ``embedding_encoder``: the same shape of upsampler (256 → 64 → 32) applied to the final image embedding;
* ``embedding_maskfeature``: two 3x3 convolutions (32 → 64 → 32, LayerNorm2d + GELU between) applied to SAM's
  upscaled mask features after the transformer.

Inference, as the official ``MaskDecoderHQ.forward`` computes it:

1. per image: ``hq_features = embedding_encoder(embedding) + compress_vit_feat(early)`` (B, 32, 256, 256); it
   depends on no prompt, so :func:`hq_image_features` computes it once and the embedding cache keeps it;
2. per prompt set: the two-way transformer on ``[iou, mask_0..3, hf, prompts]``; SAM's upscaled features ``U``;
   the four SAM masks are ``mlp_i(token_i) . U`` and the HQ mask ``hf_mlp(token_hf) . (embedding_maskfeature(U) +
   hq_features)``;
3. selection: ``multimask_output=False`` takes SAM's token 0; ``multimask_output=True`` takes, among tokens 1-3,
   the one with the highest predicted IoU (one mask, not three as in SAM's predictor), and its IoU;
4. ``hq_token_only=True`` returns the HQ mask alone, otherwise the *sum* of the selected SAM mask's logits and the
   HQ mask's logits (the official default); the IoU is always the selected SAM token's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from .decoding import run_transformer, sam_decoder_arguments
from .fast_decoder import FastDecoder

__all__ = ["HQDecoderOutput", "HQMaskDecoder", "decode_hq", "hq_image_features"]


def _upsampler(in_channels: int, mid: int, out: int) -> nn.Sequential:
    """Two 2x2 stride-2 transposed convolutions (x4 resolution) with LayerNorm2d and GELU between them."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, mid, kernel_size=2, stride=2),
        LayerNorm2d(mid),
        nn.GELU(),
        nn.ConvTranspose2d(mid, out, kernel_size=2, stride=2),
    )


class HQMaskDecoder(MaskDecoder):
    """SAM's mask decoder plus HQ-SAM's output token and feature fusion (the official state-dict keys)."""

    def __init__(self, *, vit_dim: int, transformer_dim: int = 256) -> None:
        super().__init__(**sam_decoder_arguments(transformer_dim))
        self.hf_token = nn.Embedding(1, transformer_dim)
        self.hf_mlp = MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
        self.compress_vit_feat = _upsampler(vit_dim, transformer_dim, transformer_dim // 8)
        self.embedding_encoder = _upsampler(transformer_dim, transformer_dim // 4, transformer_dim // 8)
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(transformer_dim // 8, transformer_dim // 4, 3, 1, 1),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.Conv2d(transformer_dim // 4, transformer_dim // 8, 3, 1, 1),
        )


@dataclass(frozen=True)
class HQDecoderOutput:
    logits: torch.Tensor  # (B, 1, 256, 256): the selected SAM mask + the HQ mask (or the HQ mask alone)
    iou: torch.Tensor  # (B, 1): the selected SAM token's IoU estimate
    token: torch.Tensor  # (B, 1, C): SAM's mask token 0 after the final attention (as DecoderOutput.token)
    selected: torch.Tensor  # (B,) int64: the SAM mask token that was selected (0, or 1-3 with multimask output)


def hq_image_features(decoder: HQMaskDecoder, image_embeddings: torch.Tensor, early: torch.Tensor) -> torch.Tensor:
    """The per-image HQ feature map (B, 32, 256, 256) from the embedding and the early ViT features.

    ``early`` is the output of the encoder's first global-attention block, channels last (B, 64, 64, ViT width), as
    segment_anything_hq's ``ImageEncoderViT`` returns it in ``interm_embeddings[0]``.
    """
    dtype = decoder.hf_token.weight.dtype
    early = early.to(dtype).permute(0, 3, 1, 2)
    return decoder.embedding_encoder(image_embeddings.to(dtype)) + decoder.compress_vit_feat(early)


def _maskfeature_in(module: nn.Sequential, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``embedding_maskfeature(x)`` with both convolutions in ``dtype`` (the LayerNorm's statistics in x's dtype)."""
    conv1, norm, act, conv2 = module
    assert isinstance(conv1, nn.Conv2d) and isinstance(conv2, nn.Conv2d)
    assert conv1.bias is not None and conv2.bias is not None
    y = F.conv2d(x.to(dtype), conv1.weight.to(dtype), conv1.bias.to(dtype), padding=1).to(x.dtype)
    y = act(norm(y))
    return F.conv2d(y.to(dtype), conv2.weight.to(dtype), conv2.bias.to(dtype), padding=1).to(x.dtype)


def decode_hq(
    decoder: HQMaskDecoder,
    image_embeddings: torch.Tensor,
    hq_features: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
    *,
    multimask_output: bool = False,
    hq_token_only: bool = False,
    upscale_dtype: torch.dtype | None = None,
    fast: FastDecoder | None = None,
) -> HQDecoderOutput:
    """HQ-SAM's decoder for one image and a batch of prompt sets (see the module docstring for the selection).

    ``upscale_dtype`` (e.g. ``torch.bfloat16``) runs the 3x3 convolutions of ``embedding_maskfeature`` on the
    256² features, the largest per-click cost HQ-SAM adds, in that dtype (None: the model's dtype). ``fast``: a
    :class:`~napari_focsam.models.fast_decoder.FastDecoder` of this decoder, which then runs the two-way
    transformer (the same function, fused; only the output tokens read afterwards go through the final attention).
    """
    batch = sparse.shape[0]
    n_sam = decoder.num_mask_tokens  # SAM's four mask tokens; the HQ token follows them
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight, decoder.hf_token.weight], dim=0)
    if fast is not None:
        kept = list(range(n_sam + 2)) if multimask_output else [0, 1, 1 + n_sam]
        hs_kept, keys = fast.transformer(image_embeddings, sparse, dense, output_tokens, kept)
        hs = hs_kept.new_zeros((batch, n_sam + 2, hs_kept.shape[2]))
        hs[:, kept] = hs_kept
    else:
        hs, keys = run_transformer(decoder.transformer, output_tokens, image_embeddings, image_pe, sparse, dense)
    iou_all = decoder.iou_prediction_head(hs[:, 0, :])  # (B, 4)
    if multimask_output:
        iou, best = torch.max(iou_all[:, 1:n_sam], dim=1)
        selected = best + 1
        iou = iou.unsqueeze(1)
    else:
        selected = torch.zeros(batch, dtype=torch.long, device=hs.device)
        iou = iou_all[:, 0:1]
    upscaled = decoder.output_upscaling(keys)
    up_b, up_c, up_h, up_w = upscaled.shape
    rows = torch.arange(batch, device=hs.device)
    hq_hyper = decoder.hf_mlp(hs[:, 1 + n_sam, :]).unsqueeze(1)  # (B, 1, 32)
    if upscale_dtype is not None and upscale_dtype != upscaled.dtype:
        refined = _maskfeature_in(decoder.embedding_maskfeature, upscaled, upscale_dtype)
    else:
        refined = decoder.embedding_maskfeature(upscaled)
    hq_up = refined + hq_features.expand(batch, -1, -1, -1)
    hq_logits = (hq_hyper @ hq_up.reshape(up_b, up_c, up_h * up_w)).reshape(up_b, 1, up_h, up_w)
    if hq_token_only:
        logits = hq_logits
    else:
        mask_tokens = hs[rows, 1 + selected, :]  # (B, C)
        sam_hyper = torch.stack(
            [decoder.output_hypernetworks_mlps[int(i)](mask_tokens[j]) for j, i in enumerate(selected.tolist())]
        ).unsqueeze(1)
        sam_logits = (sam_hyper @ upscaled.reshape(up_b, up_c, up_h * up_w)).reshape(up_b, 1, up_h, up_w)
        logits = sam_logits + hq_logits
    return HQDecoderOutput(logits=logits, iou=iou, token=hs[:, 1:2, :], selected=selected)
