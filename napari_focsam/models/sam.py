"""SAM, FocSAM, HQ-SAM and PA-SAM networks, built from segment-anything's own module classes.

:class:`InteractiveModel` holds SAM's image encoder, prompt encoder and mask decoder under the same attribute names
as segment-anything's ``Sam``, so an official SAM checkpoint's ``state_dict`` loads into it unchanged. A FocSAM model
adds the :class:`~napari_focsam.models.refiner.FocusRefiner` as ``refiner``; HQ-SAM and PA-SAM models have their own
``mask_decoder`` (:mod:`.hq_decoder`, :mod:`.pa_decoder`), which extends SAM's under the official key names.
"""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder
from torch import nn

from .decoding import sam_decoder_arguments
from .refiner import FocusRefiner
from .specs import ModelSpec

PROMPT_EMBED_DIM = 256
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


class InteractiveModel(nn.Module):
    """SAM's three modules (segment-anything classes) plus, for FocSAM, the focus refiner."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        enc = spec.encoder
        self.spec = spec
        self.image_encoder = ImageEncoderViT(
            depth=enc.depth,
            embed_dim=enc.embed_dim,
            img_size=enc.img_size,
            mlp_ratio=enc.mlp_ratio,
            norm_layer=partial(nn.LayerNorm, eps=enc.layer_norm_eps),
            num_heads=enc.num_heads,
            patch_size=enc.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=list(enc.global_attn_indexes),
            window_size=enc.window_size,
            out_chans=enc.out_chans,
        )
        size = enc.embedding_size
        self.prompt_encoder = PromptEncoder(
            embed_dim=PROMPT_EMBED_DIM,
            image_embedding_size=(size, size),
            input_image_size=(enc.img_size, enc.img_size),
            mask_in_chans=16,
        )
        self.mask_decoder = _mask_decoder(spec)
        self.refiner = FocusRefiner(embed_dim=PROMPT_EMBED_DIM, depth=spec.refiner_depth) if spec.refiner else None
        self.eval()

    @property
    def input_size(self) -> int:
        return self.spec.encoder.img_size


def _mask_decoder(spec: ModelSpec) -> MaskDecoder:
    """SAM's mask decoder, or HQ-SAM's / PA-SAM's (both extend it and keep its keys)."""
    if spec.decoder == "hq":
        from .hq_decoder import HQMaskDecoder

        return HQMaskDecoder(vit_dim=spec.encoder.embed_dim, transformer_dim=PROMPT_EMBED_DIM)
    if spec.decoder == "pa":
        from .pa_decoder import PAMaskDecoder

        return PAMaskDecoder(transformer_dim=PROMPT_EMBED_DIM)
    if spec.decoder != "sam":
        raise ValueError(f"unknown decoder {spec.decoder!r} in spec {spec.name!r}")
    return MaskDecoder(**sam_decoder_arguments(PROMPT_EMBED_DIM))


def build_model(spec: ModelSpec, *, seed: int | None = None) -> InteractiveModel:
    """Build a model with random weights (``seed`` makes them reproducible), ready for ``load_state_dict``.

    The refiner's layer-scale ``gamma`` parameters start at zero in the official code, which would make a random
    FocSAM refiner an identity; with a seed they are drawn like everything else so tests exercise every branch.
    """
    generator_state = None
    if seed is not None:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    try:
        model = InteractiveModel(spec)
        if seed is not None:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name.startswith("refiner.") and "gamma" in name:
                        param.normal_(0.0, 0.1)
    finally:
        if generator_state is not None:
            torch.random.set_rng_state(generator_state)
    return model
