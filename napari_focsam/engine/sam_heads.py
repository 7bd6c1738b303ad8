"""The decoder heads of SAM's variants behind :class:`~.sam_predictor.SamFamilyPredictor`: HQ-SAM's and PA-SAM's
decoders (:mod:`~napari_focsam.models.hq_decoder`, :mod:`~napari_focsam.models.pa_decoder`) and the per-image
extra each reads from the embedding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..models.decoding import DecoderOutput

__all__ = ["EXTRAS", "decode_head", "extras_payload", "image_extras"]

#: the per-image extra tensor each decoder head needs, and its payload version (part of the fingerprint)
EXTRAS = {"hq": ("hq_features", 1), "pa": ("pa_guide", 1)}


def extras_payload(head: str) -> str:
    """The name of the per-image extra a decoder head reads from the embedding ('' for SAM's plain decoder).

    HQ-SAM: ``"hq_features"``, (1, 32, 256, 256), ``embedding_encoder(embedding) + compress_vit_feat(early ViT
    features)``, which no prompt changes (8 MiB in float32; the early features themselves would be 12-20 MiB).
    PA-SAM: ``"pa_guide"``, (1, 256, 64, 64), the guiding branch's embedding of the preprocessed image (4 MiB).
    """
    return EXTRAS[head][0] if head in EXTRAS else ""


def image_extras(
    head: str, mask_decoder: Any, features: torch.Tensor, early: torch.Tensor | None, x: torch.Tensor,
) -> dict[str, torch.Tensor] | None:
    """The per-image extras of ``head`` (None for SAM's plain decoder) from one encoder pass: its ``features``, the
    ``early`` ViT tokens (HQ-SAM) and the preprocessed input ``x`` (PA-SAM), in ``features``' dtype."""
    if head == "hq":
        from ..models.hq_decoder import hq_image_features

        assert early is not None  # wanted for HQ-SAM
        return {"hq_features": hq_image_features(mask_decoder, features, early).to(features.dtype)}
    if head == "pa":
        from ..models.pa_decoder import guiding_features

        return {"pa_guide": guiding_features(mask_decoder, x).to(features.dtype)}
    return None


def decode_head(
    head: str, model, image_pe: torch.Tensor, features: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
    extras: Mapping[str, torch.Tensor], *, display_name: str, hq_token_only: bool = False,
    upscale_dtype: torch.dtype | None = None, fast=None,
) -> DecoderOutput:
    """HQ-SAM's or PA-SAM's decoder, single-mask output (SAM's token 0 plus the HQ mask / PA's token 0).

    ``upscale_dtype`` and ``fast`` (a :class:`~napari_focsam.models.fast_decoder.FastDecoder`) apply to HQ-SAM;
    ``display_name`` names the model in the error for an embedding without the head's extra.
    """
    needed = extras_payload(head)
    if needed not in extras:
        raise ValueError(f"this embedding has no {needed!r}: it was not computed by {display_name} "
                         f"(its extras: {sorted(extras) or 'none'})")
    if head == "hq":
        from ..models.hq_decoder import decode_hq

        if upscale_dtype is not None and features.device.type == "cpu" and not torch.backends.mkldnn.enabled:
            upscale_dtype = None  # torch's generic bfloat16 convolution is far slower than float32
        hq = decode_hq(model.mask_decoder, features, extras[needed], image_pe, sparse, dense,
                       hq_token_only=hq_token_only, upscale_dtype=upscale_dtype, fast=fast)
        return DecoderOutput(logits=hq.logits, iou=hq.iou, token=hq.token)
    from ..models.pa_decoder import decode_pa

    out = decode_pa(model.mask_decoder, model.prompt_encoder, features, extras[needed], image_pe, sparse, dense)
    return DecoderOutput(logits=out.logits, iou=out.iou[:, :1], token=out.hs[:, 1:2])
