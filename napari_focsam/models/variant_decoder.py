"""SAM's single-mask decoder for many prompt sets on one image: the jittered copies of a stability or robust step.

The copies of an object's prompts (:mod:`napari_focsam.engine.stability`) share the image embedding, its positional
encoding and the dense prompt (the object's mask input); only their sparse prompt tokens differ. Decoding them as a
batch of ordinary decoder calls spends most of its time passing over B copies of the 4096 image tokens, not in
arithmetic. :class:`VariantDecoder` computes the same function as
:func:`~napari_focsam.models.decoding.decode` (logits of mask token 0 only) organised for that case:

* the image tokens are channel-last (B, N, C) rows throughout, so every norm over the channels is one kernel, the
  output upscaling reads them as they are, and every product with them has them as the GEMM's rows (with oneDNN
  several times faster than as its columns: the attention scores come out transposed, (N, heads * tokens));
* the first layer's image tokens (embedding + dense prompt) are the same for every copy: their sum with the
  positional encoding, their conversion to the work dtype and the three products with them (token-to-image
  attention scores and pooling, image-to-token attention scores) are one GEMM for all copies, the keys of
  B * heads * tokens queries; only the residual update of the image tokens is per copy;
* both cross attentions are folded onto the prompt tokens' side, as in
  :class:`~napari_focsam.models.fast_decoder.FastDecoder`: the image tokens are never projected;
* in a work dtype below the model's (bfloat16 on CPUs with native bfloat16) the copies' image tokens are held in
  it from the first layer's residual update on, and the layer norms, softmaxes and the upscaling act on them there
  (accumulating in float32); the prompt tokens stay in the model's dtype;
* only mask token 0 is carried through the final attention and upscaled, no IoU estimate is made, and a
  ``region`` limits the upscaling to the tokens that cover the image (a stability reads nothing else).

In the model's dtype the logits agree with :func:`decode` to float rounding (about 1e-5 relative in float32); in
bfloat16 they stay within 1.5 % (relative L2), 99.5 % of the mask pixels agree and ST moves by at most 0.005
(measured on random weights: 0.6 %, 99.8 %, 0.0008; ``tests/test_variant_decoder.py`` checks the bounds).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder

from .decoder_ops import Workspace, self_attention
from .fast_upscaling import Upscaling, upscaled_logits

__all__ = ["VariantDecoder"]


class _Constants(NamedTuple):
    """The image-side parameters in one work dtype."""

    pe: torch.Tensor  # (N, C) the dense positional encoding, channel-last
    norms: tuple[tuple[torch.Tensor, torch.Tensor, float], ...]  # each layer's norm4: weight, bias, eps
    upscaling: Upscaling


def _queries_folded(module, q: torch.Tensor) -> torch.Tensor:
    """Token-to-image attention, queries' side: per head ``Wk_h^T (Wq_h q + bq_h) / sqrt(d)`` (B, H * T, C), whose
    dot products with the image tokens are the attention scores up to a constant per query (the key bias, which
    cancels in the softmax over the image tokens)."""
    batch, tokens, _ = q.shape
    heads, head_dim = module.num_heads, module.internal_dim // module.num_heads
    qp = module.q_proj(q).view(batch, tokens, heads, head_dim).transpose(1, 2)
    folded = (qp * head_dim**-0.5) @ module.k_proj.weight.view(heads, head_dim, -1)
    return folded.reshape(batch, heads * tokens, -1)


def _pooled_output(module, pooled: torch.Tensor, tokens: int) -> torch.Tensor:
    """Token-to-image attention, output: ``out_proj`` of the per-head values ``Wv_h p + bv_h`` of the attention
    weighted means ``p`` (B, H * T, C) of the image tokens (the weights sum to 1, so the bias passes through)."""
    batch = pooled.shape[0]
    heads, head_dim = module.num_heads, module.internal_dim // module.num_heads
    values = pooled.view(batch, heads, tokens, -1) @ module.v_proj.weight.view(heads, head_dim, -1).transpose(1, 2)
    values = values + module.v_proj.bias.view(1, heads, 1, head_dim)
    return module.out_proj(values.transpose(1, 2).reshape(batch, tokens, heads * head_dim))


def _keys_folded(module, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Image-to-token attention, tokens' side: (folded keys (B, H * T, C), score bias (B, H * T, 1), mixed values
    (B, H * T, C)) such that for an image token x the scores are ``folded . x + bias`` and the attention output is
    ``sum_t a_t mixed_t`` (``out_proj`` applied per head, its bias spread over the heads' weights, which sum to 1
    per head)."""
    batch, tokens, _ = k.shape
    heads, head_dim = module.num_heads, module.internal_dim // module.num_heads
    kp = module.k_proj(k).view(batch, tokens, heads, head_dim).transpose(1, 2) * head_dim**-0.5
    vp = module.v_proj(v).view(batch, tokens, heads, head_dim).transpose(1, 2)
    folded = (kp @ module.q_proj.weight.view(heads, head_dim, -1)).reshape(batch, heads * tokens, -1)
    bias = (kp * module.q_proj.bias.view(1, heads, 1, head_dim)).sum(-1).reshape(batch, heads * tokens, 1)
    out_weight = module.out_proj.weight.view(-1, heads, head_dim).permute(1, 2, 0)  # (H, d, C)
    mixed = (vp @ out_weight).reshape(batch, heads * tokens, -1) + module.out_proj.bias / heads
    return folded, bias, mixed


class VariantDecoder:
    """Single-mask logits (mask token 0) of B prompt sets on one image embedding and one dense prompt.

    Build it once per model (the weights must not change afterwards). Thread-safe: besides constants it holds
    per-thread scratch buffers only.
    """

    def __init__(self, mask_decoder: MaskDecoder, image_pe: torch.Tensor) -> None:
        self.decoder = mask_decoder
        self.model_dtype = image_pe.dtype
        with torch.inference_mode():
            self._pe = image_pe.flatten(2)[0].T.contiguous()  # (N, C)
        self._constants_by_dtype: dict[torch.dtype, _Constants] = {}
        self._workspace = Workspace()
        self._constants(self.model_dtype)  # checks the upscaling's layers

    def _constants(self, dtype: torch.dtype) -> _Constants:
        constants = self._constants_by_dtype.get(dtype)
        if constants is None:
            with torch.inference_mode():
                constants = _Constants(
                    pe=self._pe.to(dtype),
                    norms=tuple((layer.norm4.weight.to(dtype), layer.norm4.bias.to(dtype), layer.norm4.eps)
                                for layer in self.decoder.transformer.layers),
                    upscaling=Upscaling.of(self.decoder.output_upscaling, dtype),
                )
            self._constants_by_dtype[dtype] = constants  # a race builds the same values twice, harmlessly
        return constants

    def __call__(
        self,
        image_embeddings: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        dtype: torch.dtype | None = None,
        *,
        upscale_dtype: torch.dtype | None = None,
        region: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """The (B, 1, 4h, 4w) low-resolution logits, in the model's dtype, of mask token 0 for the B prompt sets
        ``sparse`` (B, S, C) on ``image_embeddings`` (1, C, h, w) with the dense prompt ``dense`` (1, C, h, w), the
        same for every set.

        ``dtype`` is the work dtype of the image tokens (default: the model's), ``upscale_dtype`` that of the
        output upscaling (default: ``dtype``). ``region`` (rows, columns) of image tokens, from the top left,
        limits the upscaling to them (the logits elsewhere read 0): the tokens that cover the image, when the
        rest of the frame is padding that nobody reads.
        """
        if image_embeddings.shape[0] != 1 or dense.shape[0] != 1:
            raise ValueError("the prompt sets of a VariantDecoder share one image embedding and one dense prompt")
        dtype = dtype or self.model_dtype
        constants = self._constants(dtype)
        decoder, transformer = self.decoder, self.decoder.transformer
        batch = sparse.shape[0]
        _, c, h, w = image_embeddings.shape
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        query_pe = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
        tokens = query_pe.shape[1]
        shared = (image_embeddings[0] + dense[0]).flatten(1).T  # (N, C), a view
        shared_pe = (shared + self._pe).to(dtype)
        shared = shared.to(dtype).contiguous()

        # first layer: the image tokens are the same for every copy
        first, *rest = transformer.layers
        queries = first.norm1(self_attention(first, query_pe, query_pe))
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        folded = _queries_folded(t2i, queries + query_pe).to(dtype)
        # scores transposed, (N, B * H * T): GEMMs with the image tokens as rows run several times faster
        attn = torch.softmax(torch.mm(shared_pe, folded.view(-1, c).T), 0)
        pooled = torch.mm(attn.T, shared).to(queries.dtype)
        queries = first.norm2(queries + _pooled_output(t2i, pooled.view(batch, -1, c), tokens))
        queries = first.norm3(queries + first.mlp(queries))
        folded, bias, mixed = _keys_folded(i2t, queries + query_pe, queries)
        scores = torch.addmm(bias.reshape(-1, 1).to(dtype), folded.view(-1, c).to(dtype), shared_pe.T)
        attn = torch.softmax(scores.view(batch, i2t.num_heads, tokens, -1), 2).view(batch, -1, h * w)
        keys = torch.baddbmm(shared.expand(batch, -1, -1), attn.transpose(1, 2), mixed.to(dtype))  # (B, N, C)
        keys = F.layer_norm(keys, (c,), *constants.norms[0])

        for index, layer in enumerate(rest, start=1):
            queries = layer.norm1(self_attention(layer, queries, query_pe))
            keys_pe = keys + constants.pe
            t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
            folded = _queries_folded(t2i, queries + query_pe).to(dtype)
            attn = torch.softmax(torch.bmm(keys_pe, folded.transpose(1, 2)), 1)  # (B, N, H * T)
            pooled = torch.bmm(attn.transpose(1, 2), keys).to(queries.dtype)
            queries = layer.norm2(queries + _pooled_output(t2i, pooled, tokens))
            queries = layer.norm3(queries + layer.mlp(queries))
            folded, bias, mixed = _keys_folded(i2t, queries + query_pe, queries)
            scores = torch.baddbmm(bias.to(dtype), folded.to(dtype), keys_pe.transpose(1, 2))
            attn = torch.softmax(scores.view(batch, i2t.num_heads, tokens, -1), 2).view(batch, -1, h * w)
            keys = torch.baddbmm(keys, attn.transpose(1, 2), mixed.to(dtype))
            keys = F.layer_norm(keys, (c,), *constants.norms[index])

        # the final attention and its norm act per token: mask token 0 (token 1) alone
        final = transformer.final_attn_token_to_image
        query = queries[:, 1:2]
        folded = _queries_folded(final, query + query_pe[:, 1:2]).to(dtype)
        # (keys + pe) . q as keys . q + pe . q: a small product instead of a pass over the keys
        scores = torch.bmm(keys, folded.transpose(1, 2))  # (B, N, H)
        scores += torch.mm(constants.pe, folded.view(-1, c).T).view(h * w, batch, -1).transpose(0, 1)
        attn = torch.softmax(scores, 1)
        pooled = torch.bmm(attn.transpose(1, 2), keys).to(queries.dtype)
        token = transformer.norm_final_attn(query + _pooled_output(final, pooled, 1))
        hyper_in = decoder.output_hypernetworks_mlps[0](token[:, 0])  # (B, C')
        region = (h, w) if region is None else (min(h, max(1, region[0])), min(w, max(1, region[1])))
        return self._upscaled_logits(keys, hyper_in, (h, w), region, upscale_dtype or dtype)

    def _upscaled_logits(self, keys: torch.Tensor, hyper_in: torch.Tensor, grid: tuple[int, int],
                         region: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """``output_upscaling`` and the dot product with ``hyper_in`` on the (B, N, C) image tokens of the
        ``region`` (rows, columns) at the top left of the (h, w) ``grid``, all copies at once in this thread's
        scratch buffers (few operations: with more threads than free cores each one waits for its slowest
        thread); the logits elsewhere read 0."""
        batch, _, c = keys.shape
        (h, w), (rows, columns) = grid, region
        ws = self._workspace
        tokens = ws.get("tokens", (batch, rows, columns, c), keys, dtype)
        assert tokens is not None  # the workspace is never switched off here
        tokens.copy_(keys.view(batch, h, w, c)[:, :rows, :columns])
        logits = upscaled_logits(self._constants(dtype).upscaling, tokens.view(-1, c), hyper_in.unsqueeze(2),
                                 batch, rows, columns, ws)
        if (rows, columns) == (h, w):
            return logits.to(self.model_dtype)
        out = torch.zeros(batch, 1, 4 * h, 4 * w, dtype=self.model_dtype, device=keys.device)
        out[..., : 4 * rows, : 4 * columns] = logits
        return out
