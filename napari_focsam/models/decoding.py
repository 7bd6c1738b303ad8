"""Prompt encoding and mask decoding with the mask-token (query) embedding that the FocSAM refiner needs.

segment-anything's ``PromptEncoder`` and ``MaskDecoder`` modules are used for their weights and sub-modules; the
forward passes here differ from theirs in two ways only:

* they keep the model's dtype end to end (segment-anything casts point encodings to float32, which would make a
  float64 parity run lose precision), with the float32 arithmetic otherwise in the same order;
* :func:`decode` returns, besides the single-mask low-resolution logits (token 0, ``multimask_output=False``) and
  its IoU estimate, the mask token 0 after the final token-to-image attention and its norm, before the
  hypernetwork MLP: the query the focus refiner consumes.

Coordinates here are already in the model's input frame, in (x, y) order: see :mod:`.transforms`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from torch import nn


@dataclass(frozen=True)
class DecoderOutput:
    logits: torch.Tensor  # (B, 1, 256, 256) raw low-resolution logits of mask token 0
    iou: torch.Tensor  # (B, 1) the IoU head's estimate for that mask
    token: torch.Tensor  # (B, 1, C) mask token 0 after the final attention + norm


def _positional_encoding(prompt_encoder: PromptEncoder, coords01: torch.Tensor) -> torch.Tensor:
    """SAM's random-Fourier encoding of coordinates normalised to [0, 1], in the dtype of its Gaussian matrix."""
    gaussian = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    coords = 2 * coords01.to(gaussian.dtype) - 1
    coords = coords @ gaussian
    coords = 2 * math.pi * coords
    return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)


def _encode_coords(prompt_encoder: PromptEncoder, coords: torch.Tensor) -> torch.Tensor:
    """Encode (B, N, 2) (x, y) coordinates in input pixels (already shifted to pixel centres)."""
    height, width = prompt_encoder.input_image_size
    normalised = coords.clone()
    normalised[..., 0] = normalised[..., 0] / width
    normalised[..., 1] = normalised[..., 1] / height
    return _positional_encoding(prompt_encoder, normalised)


def dense_positional_encoding(prompt_encoder: PromptEncoder) -> torch.Tensor:
    """The (1, C, h, w) encoding of the embedding grid (``PromptEncoder.get_dense_pe``) in the model's dtype."""
    gaussian = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    h, w = prompt_encoder.image_embedding_size
    grid = torch.ones((h, w), device=gaussian.device, dtype=torch.float32)
    ys = (grid.cumsum(dim=0) - 0.5) / h
    xs = (grid.cumsum(dim=1) - 0.5) / w
    encoding = _positional_encoding(prompt_encoder, torch.stack([xs, ys], dim=-1))
    return encoding.permute(2, 0, 1).unsqueeze(0)


def encode_points(
    prompt_encoder: PromptEncoder, coords: torch.Tensor, labels: torch.Tensor, *, pad: bool
) -> torch.Tensor:
    """Sparse embeddings of (B, N, 2) points with labels 1/0 (and -1 = not a point); ``pad`` appends SAM's
    padding point (used when there is no box)."""
    coords = coords + 0.5
    if pad:
        batch = coords.shape[0]
        coords = torch.cat([coords, coords.new_zeros((batch, 1, 2))], dim=1)
        labels = torch.cat([labels, -torch.ones((batch, 1), device=labels.device, dtype=labels.dtype)], dim=1)
    embedding = _encode_coords(prompt_encoder, coords)
    not_a_point = labels == -1
    embedding[not_a_point] = 0.0
    embedding[not_a_point] += prompt_encoder.not_a_point_embed.weight
    embedding[labels == 0] += prompt_encoder.point_embeddings[0].weight
    embedding[labels == 1] += prompt_encoder.point_embeddings[1].weight
    return embedding


def encode_boxes(prompt_encoder: PromptEncoder, boxes: torch.Tensor) -> torch.Tensor:
    """Sparse embeddings of (B, 4) boxes in (x0, y0, x1, y1) input pixels: two corner tokens each."""
    corners = (boxes + 0.5).reshape(-1, 2, 2)
    embedding = _encode_coords(prompt_encoder, corners)
    embedding[:, 0, :] += prompt_encoder.point_embeddings[2].weight
    embedding[:, 1, :] += prompt_encoder.point_embeddings[3].weight
    return embedding


def encode_prompts(
    prompt_encoder: PromptEncoder,
    coords: torch.Tensor | None,
    labels: torch.Tensor | None,
    boxes: torch.Tensor | None = None,
    mask_logits: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse (B, N, C) and dense (B, C, h, w) prompt embeddings, as ``PromptEncoder.forward`` computes them."""
    weight = prompt_encoder.not_a_point_embed.weight
    if coords is not None:
        batch = coords.shape[0]
    elif boxes is not None:
        batch = boxes.shape[0]
    elif mask_logits is not None:
        batch = mask_logits.shape[0]
    else:
        batch = 1
    parts = [weight.new_empty((batch, 0, weight.shape[1]))]
    if coords is not None:
        if labels is None:
            raise ValueError("point coordinates need their labels")
        parts.append(encode_points(prompt_encoder, coords, labels, pad=boxes is None))
    if boxes is not None:
        parts.append(encode_boxes(prompt_encoder, boxes))
    sparse = torch.cat(parts, dim=1)
    if mask_logits is not None:
        dense = prompt_encoder.mask_downscaling(mask_logits)
    else:
        h, w = prompt_encoder.image_embedding_size
        dense = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, h, w)
    return sparse, dense


def sam_decoder_arguments(transformer_dim: int) -> dict[str, Any]:
    """The arguments of segment-anything's ``MaskDecoder`` as every SAM checkpoint has it (HQ-SAM's and PA-SAM's
    decoders extend that one): a two-layer two-way transformer, three multimask tokens, a 3-layer IoU head."""
    return {
        "transformer_dim": transformer_dim,
        "transformer": TwoWayTransformer(depth=2, embedding_dim=transformer_dim, mlp_dim=2048, num_heads=8),
        "num_multimask_outputs": 3,
        "iou_head_depth": 3,
        "iou_head_hidden_dim": 256,
    }


def run_transformer(
    transformer: nn.Module,
    output_tokens: torch.Tensor,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's two-way transformer on the tokens ``[output_tokens, sparse]`` and the image ``embeddings + dense``.

    ``output_tokens`` is (T, C) (shared by the batch), ``sparse`` (B, N, C), ``image_embeddings`` (1 or B, C, h, w).
    Returns the tokens after the final attention (B, T + N, C) and the image keys (B, C, h, w).
    """
    batch = sparse.shape[0]
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
    if image_embeddings.shape[0] != batch:
        image_embeddings = image_embeddings.expand(batch, -1, -1, -1)
    src = image_embeddings + dense
    pos_src = image_pe.expand(batch, -1, -1, -1)
    b, c, h, w = src.shape
    hs, keys = transformer(src, pos_src, tokens)
    return hs, keys.transpose(1, 2).reshape(b, c, h, w)


def decode(
    mask_decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
) -> DecoderOutput:
    """SAM's mask decoder for the single-mask output (token 0), also returning that token's final embedding.

    ``image_embeddings`` is (1, C, h, w) (shared by every prompt set in the batch) or (B, C, h, w).
    """
    output_tokens = torch.cat([mask_decoder.iou_token.weight, mask_decoder.mask_tokens.weight], dim=0)
    hs, keys = run_transformer(mask_decoder.transformer, output_tokens, image_embeddings, image_pe, sparse, dense)
    iou_token_out = hs[:, 0, :]
    mask_token = hs[:, 1:2, :]

    upscaled = mask_decoder.output_upscaling(keys)
    hyper_in = mask_decoder.output_hypernetworks_mlps[0](mask_token[:, 0, :]).unsqueeze(1)
    b, c, h, w = upscaled.shape
    logits = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, 1, h, w)
    iou = mask_decoder.iou_prediction_head(iou_token_out)[:, 0:1]
    return DecoderOutput(logits=logits, iou=iou, token=mask_token)
