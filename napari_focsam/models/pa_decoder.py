"""PA-SAM's mask decoder (Xie et al., ICME 2024; xzz2/pa-sam): SAM's decoder plus a guiding branch and a prompt adapter.

:class:`PAMaskDecoder` is segment-anything's ``MaskDecoder`` (the same 120 keys) plus, under the official
``MaskDecoderPA`` names, ``guiding_conv`` (10 keys) and ``prompt_adapter`` (22 keys): 152 keys, 4,431,140
parameters, which is what the official ``epoch_20.pth`` holds, without any key prefix.

Inference follows the official evaluation code step by step (``shared/reference/golden/pa_sam/README.md``
describes it; ``tests/test_pa_sam.py`` checks every step against the golden data in float64):

* **once per image** (:func:`guiding_features`): the preprocessed input (normalised, zero-padded to 1024²) is
  resized to 256² (bilinear), an edge map is computed with OpenCV's Canny (thresholds 10/100) on that *normalised*
  image cast to uint8 the way numpy does on x86-64 (truncation, wrapping modulo 256: the official code's quirk,
  kept because the weights were trained with it), and ``guiding_conv`` turns the four channels into the guiding
  embedding ``G`` (1, 256, 64, 64). The embedding cache keeps ``G``, so a click never recomputes it;
* **per prompt set** (:func:`decode_pa`): SAM's two-way transformer, whose second layer is extended by the prompt
  adapter: the image tokens gated by ``G`` are attended by the tokens, an uncertainty map selects refined or coarse
  logits per 64² cell, the 4 most and 4 least uncertain-improved cells (in raster order) become 8 new prompt tokens
  with SAM's point encodings, and the refined token replaces the adapter's output for mask token 0;
* **selection**: single-mask output is mask token 0 with all four IoU estimates; multimask output picks among mask
  tokens 1 and 2 only (the official slice, inherited from HQ-SAM's token count), never token 3.

The edge detector needs ``opencv-python-headless`` (the ``pa`` extra).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from segment_anything.modeling.transformer import Attention
from torch import nn

from .decoding import sam_decoder_arguments

__all__ = ["PADecoderOutput", "PAMaskDecoder", "canny_edges", "decode_pa", "guiding_features"]

#: how many cells the adapter mines on each side (positive, negative)
TOP_K = 4


class PromptAdapter(nn.Module):
    """The adapter's parameters (official names): two static tokens, two MLPs and a token-to-image attention."""

    def __init__(self, dim: int = 256) -> None:
        super().__init__()
        self.static_uncertain_token = nn.Embedding(1, dim)
        self.static_refined_token = nn.Embedding(1, dim)
        self.uncertain_mlp = MLP(2 * dim, dim // 4, dim, 3)
        self.refined_mlp = MLP(2 * dim, dim // 4, dim, 3)
        self.cross_attn_token_to_image = Attention(dim, 8, downsample_rate=2)


class PAMaskDecoder(MaskDecoder):
    """SAM's mask decoder plus PA-SAM's guiding branch and prompt adapter (the official state-dict keys)."""

    def __init__(self, *, transformer_dim: int = 256) -> None:
        super().__init__(**sam_decoder_arguments(transformer_dim))
        self.guiding_conv = nn.Sequential(
            nn.Conv2d(4, 64, kernel_size=2, stride=2),
            LayerNorm2d(64),
            nn.GELU(),
            nn.Conv2d(64, transformer_dim, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim),
            nn.GELU(),
            nn.Conv2d(transformer_dim, transformer_dim, kernel_size=1),
        )
        self.prompt_adapter = PromptAdapter(transformer_dim)


@dataclass(frozen=True)
class PADecoderOutput:
    logits: torch.Tensor  # (1, 1, 256, 256): the selected mask's low-resolution logits
    iou: torch.Tensor  # (1, 4) single-mask output (as returned officially), (1, 1) multimask output
    all_logits: torch.Tensor  # (1, 4, 256, 256): every mask token's logits
    iou_all: torch.Tensor  # (1, 4)
    selected: int  # the mask token returned
    hs: torch.Tensor  # (1, N + 8, C): the tokens after the final attention
    #: the adapter's intermediate results (uncertainty map, mined cells, ...), for tests and inspection
    adapter: dict[str, torch.Tensor]


def _wrapping_uint8(values: np.ndarray) -> np.ndarray:
    """numpy's float → uint8 cast as it behaves on x86-64: truncation toward zero, then modulo 256."""
    return (np.trunc(values).astype(np.int64) & 255).astype(np.uint8)


def canny_edges(small: torch.Tensor) -> torch.Tensor:
    """The official edge map of the (1, 3, 256, 256) normalised image: (1, 1, 256, 256) with values 0 or 1."""
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("PA-SAM needs OpenCV for its edge map: pip install 'napari-focsam[pa]' "
                          "(opencv-python-headless)") from exc
    image = _wrapping_uint8(small[0].detach().to("cpu", torch.float64).numpy().transpose(1, 2, 0))
    edges = cv2.Canny(np.ascontiguousarray(image), 10, 100)
    return torch.from_numpy(edges.astype(np.float64) / 255.0)[None, None].to(small.device, small.dtype)


def guiding_features(decoder: PAMaskDecoder, input_image: torch.Tensor) -> torch.Tensor:
    """The guiding embedding ``G`` (1, 256, 64, 64) of a preprocessed (1, 3, 1024, 1024) input image."""
    dtype = decoder.iou_token.weight.dtype
    small = F.interpolate(input_image.to(dtype), (256, 256), mode="bilinear", align_corners=False)
    edges = canny_edges(small)
    return decoder.guiding_conv(torch.cat([small, edges], dim=1))


def _cell_encoding(prompt_encoder: PromptEncoder, flat: torch.Tensor, size: int) -> torch.Tensor:
    """SAM's positional encoding of the centres of 64² cells given by flat (raster) indices: (K, C)."""
    gaussian = prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    rows, cols = flat // size, flat % size
    coords = torch.stack([(cols.to(torch.float32) + 0.5) / size, (rows.to(torch.float32) + 0.5) / size], dim=-1)
    coords = (2 * coords.to(gaussian.dtype) - 1) @ gaussian * (2 * math.pi)
    return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)


def _adapted_layer(layer, adapter: PromptAdapter, prompt_encoder: PromptEncoder, guide: torch.Tensor,
                   q: torch.Tensor, k: torch.Tensor, qpe: torch.Tensor, kpe: torch.Tensor, size: int,
                   record: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The transformer's second layer with the prompt adapter in it; returns (queries, keys, query_pe)."""
    qq = q + qpe
    q = layer.norm1(q + layer.self_attn(q=qq, k=qq, v=q))
    record["queries_in"], record["query_pe_in"] = q, qpe
    a = layer.cross_attn_token_to_image(q=q + qpe, k=k + kpe, v=k)
    x = guide.flatten(2).transpose(1, 2) * k
    record["x_pa"] = x
    t = adapter.cross_attn_token_to_image(q=q + qpe, k=x + kpe, v=x)
    record["attn_out"] = t
    batch = t.shape[0]
    u = adapter.uncertain_mlp(torch.cat([adapter.static_uncertain_token.weight.expand(batch, -1), t[:, 1]], dim=1))
    r = adapter.refined_mlp(torch.cat([adapter.static_refined_token.weight.expand(batch, -1), t[:, 1]], dim=1))
    record["uncertain_token"], record["refined_token"] = u, r
    xt = x.transpose(1, 2)  # (1, C, N)
    uncertainty = torch.sigmoid(u.unsqueeze(1) @ xt).view(batch, 1, size, size)
    refined = (r.unsqueeze(1) @ xt).view(batch, 1, size, size)
    coarse = (t[:, 1:2] @ xt).view(batch, 1, size, size)
    record.update(uncertainty=uncertainty, refined=refined, coarse=coarse,
                  final=torch.where(uncertainty >= 0.5, refined, coarse))
    score = (uncertainty * (torch.sigmoid(refined) - torch.sigmoid(coarse))).flatten()
    pos = torch.sort(torch.topk(score, TOP_K).indices).values
    neg = torch.sort(torch.topk(-score, TOP_K).indices).values
    record["pos_idx"], record["neg_idx"] = pos, neg
    points = prompt_encoder.point_embeddings
    pe_new = torch.cat([_cell_encoding(prompt_encoder, pos, size).to(q.dtype) + points[1].weight,
                        _cell_encoding(prompt_encoder, neg, size).to(q.dtype) + points[0].weight])[None]
    content = (k + x)[:, torch.cat([pos, neg])]  # (1, 8, C)
    adapted = torch.cat([t[:, :1], r.unsqueeze(1), t[:, 2:], content], dim=1)
    zeros = q.new_zeros((batch, 2 * TOP_K, q.shape[2]))
    qpe = torch.cat([qpe, pe_new], dim=1)
    record["queries_out"], record["query_pe_out"] = adapted, qpe  # the adapter's outputs
    q = layer.norm2(torch.cat([q, zeros], dim=1) + torch.cat([a, zeros], dim=1) + adapted)
    k = k + x
    q = layer.norm3(q + layer.mlp(q))
    k = layer.norm4(k + layer.cross_attn_image_to_token(q=k + kpe, k=q + qpe, v=q))
    return q, k, qpe


def decode_pa(
    decoder: PAMaskDecoder,
    prompt_encoder: PromptEncoder,
    image_embeddings: torch.Tensor,
    guide: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
    *,
    multimask_output: bool = False,
) -> PADecoderOutput:
    """PA-SAM's decoder for one image and one prompt set (the official code handles exactly one)."""
    if sparse.shape[0] != 1:
        raise ValueError("PA-SAM decodes one prompt set at a time (the official decoder fails on more)")
    transformer = decoder.transformer
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens[None], sparse], dim=1)
    src = image_embeddings + dense
    b, c, h, w = src.shape
    k = src.flatten(2).transpose(1, 2)
    kpe = image_pe.flatten(2).transpose(1, 2)
    record: dict[str, torch.Tensor] = {}
    q, k = transformer.layers[0](queries=tokens, keys=k, query_pe=tokens, key_pe=kpe)
    record["layer0_queries"], record["layer0_keys"] = q, k
    q, k, qpe = _adapted_layer(transformer.layers[1], decoder.prompt_adapter, prompt_encoder, guide,
                               q, k, tokens, kpe, h, record)
    record["layer1_queries"], record["layer1_keys"] = q, k
    final = transformer.final_attn_token_to_image(q=q + qpe, k=k + kpe, v=k)
    hs = transformer.norm_final_attn(q + final)
    upscaled = decoder.output_upscaling(k.transpose(1, 2).reshape(b, c, h, w))
    n = decoder.num_mask_tokens
    hyper_in = torch.stack([decoder.output_hypernetworks_mlps[i](hs[:, 1 + i]) for i in range(n)], dim=1)
    record["src"], record["upscaled"], record["hyper_in"] = k, upscaled, hyper_in
    ub, uc, uh, uw = upscaled.shape
    all_logits = (hyper_in @ upscaled.reshape(ub, uc, uh * uw)).reshape(ub, n, uh, uw)
    iou_all = decoder.iou_prediction_head(hs[:, 0])
    if multimask_output:
        candidates = iou_all[:, 1:n - 1]  # the official slice(1, num_mask_tokens - 1): tokens 1 and 2
        best = int(torch.argmax(candidates[0]))
        selected, iou = 1 + best, candidates[:, best:best + 1]
    else:
        selected, iou = 0, iou_all
    return PADecoderOutput(logits=all_logits[:, selected:selected + 1], iou=iou, all_logits=all_logits,
                           iou_all=iou_all, selected=selected, hs=hs, adapter=record)
