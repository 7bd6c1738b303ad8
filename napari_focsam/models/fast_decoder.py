"""A faster forward pass of SAM's mask decoder: same weights, same function, fewer passes over the image tokens.

:func:`~napari_focsam.models.decoding.decode` runs segment-anything's ``TwoWayTransformer`` as written. Per layer it
adds the positional encoding to the 4096 image tokens twice and projects them in three separate GEMMs. Here, for a
fixed model (:class:`FastDecoder` is built once per model and dtype):

* every projection of ``image tokens + positional encoding`` is split into ``tokens @ W`` plus the constant
  ``pe @ W + b``, computed once; the three projections of the image tokens in a layer (token-to-image keys and values,
  image-to-token queries) are one GEMM with the weights stacked;
* with few prompt tokens (``heads * tokens <= fold_limit``, see below), both cross attentions are folded onto the
  tokens' side instead: the image tokens are never projected, the per-head query/key products are formed on the
  tokens (``(W_k^T q) . x`` instead of ``q . (W_k x)``), and the output projection is applied to the few value
  tokens before the attention weights mix them; that halves the work on the 4096 image tokens. This path keeps the
  image tokens channel-first (C, N), the embedding's own layout (:mod:`.folded_attention`);
* otherwise attention goes through ``scaled_dot_product_attention``;
* after the last layer only the IoU token and mask token 0 are carried through the final attention (the single-mask
  output reads nothing else, and that attention and its norm act per token);
* the 2x2 stride-2 transposed convolutions of the upscaling are GEMMs on token rows, and the output is contracted
  with the hypernetwork vector before anything is rearranged into an image (:mod:`.fast_upscaling`).

The arithmetic is the same up to floating-point reassociation: logits agree with :func:`decode` to about 1e-5
(relative, float32) and 1e-12 (float64); ``tests/test_fast_decoder.py`` checks both.

Two options trade precision for speed on CPUs with native bfloat16, where the products with the 4096 image tokens
(nearly all of the arithmetic) run 2.5x faster: ``upscale_dtype`` for the output upscaling and ``attention_dtype``
for the folded attention's four products per layer (scores and mixing, in both directions). Only the operands and
results of those GEMMs are rounded (their sums are accumulated in float32); the image tokens themselves, their
residual updates and norms, and everything on the prompt tokens' side stay in the model's dtype. Logits stay within
1 % (relative L2) of float32. ``fold_limit`` (default: the measured crossover) is 192, up to 18 clicks, with the
attention in the model's dtype and 512, up to 58 clicks, with it in bfloat16 (the fused path keeps the model's
dtype).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from segment_anything.modeling import MaskDecoder

from .decoder_ops import Workspace, attention, project, self_attention
from .decoding import DecoderOutput
from .fast_encoder import cpu_has_fast_bf16
from .fast_upscaling import Upscaling, upscaled_logits
from .folded_attention import folded_layer, keys_with_pe, token_to_image

__all__ = ["FastDecoder", "TransformerPass", "default_decoder_dtype"]


def default_decoder_dtype(device: torch.device | str, model_dtype: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype of the decoder's products with the image tokens (output upscaling, folded attention) chosen by
    default: bfloat16 for a float32 model on a CPU with native bfloat16 arithmetic (AVX512-BF16/AMX), where together
    they cut a click by about 40 % and keep masks within the stated tolerance (``benchmarks/bench_engine.py``); the
    model's dtype everywhere else (on CUDA the decoder is not bound by arithmetic, and without native instructions
    bfloat16 is slower)."""
    if model_dtype == torch.float32 and torch.device(device).type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return model_dtype


class TransformerPass(NamedTuple):
    """The two-way transformer's results, up to the final attention on the kept tokens and its norm."""

    hs: torch.Tensor  #: (B, len(kept), C) the kept output tokens
    keys: torch.Tensor  #: the image tokens: (B, C, N) when folded, else (B, N, C); possibly a scratch buffer
    keys_low: torch.Tensor | None  #: the image tokens in the attention dtype (folded path only)
    folded: bool  #: whether the cross attentions were folded onto the tokens' side


class FastDecoder:
    """The single-mask decoder pass (mask token 0) of one ``MaskDecoder`` with a fixed dense positional encoding.

    Build it once per model (weights must not change afterwards); call it like :func:`decode`. Thread-safe: besides
    constant tensors it holds only per-thread scratch buffers (:class:`~.decoder_ops.Workspace`).
    """

    def __init__(
        self,
        mask_decoder: MaskDecoder,
        image_pe: torch.Tensor,
        *,
        fold_limit: int | None = None,
        upscale_dtype: torch.dtype | None = None,
        attention_dtype: torch.dtype | None = None,
    ) -> None:
        self.decoder = mask_decoder
        self.fold_limit = fold_limit  #: None: the measured crossover for the call's attention dtype
        self.upscale_dtype = upscale_dtype
        self.attention_dtype = attention_dtype
        self._workspace = Workspace()
        transformer = mask_decoder.transformer
        with torch.inference_mode():
            pe = image_pe.flatten(2).transpose(1, 2)[0]  # (N, C)
            self.pe_channels = image_pe.flatten(2).contiguous()  # (1, C, N)
            self.layers = []
            for layer in transformer.layers:
                t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
                weight = torch.cat((t2i.k_proj.weight, t2i.v_proj.weight, i2t.q_proj.weight))
                constant = torch.cat(
                    (
                        pe @ t2i.k_proj.weight.T + t2i.k_proj.bias,
                        t2i.v_proj.bias.expand(pe.shape[0], -1),
                        pe @ i2t.q_proj.weight.T + i2t.q_proj.bias,
                    ),
                    dim=1,
                )
                self.layers.append((layer, weight.T.contiguous(), constant.contiguous(), t2i.internal_dim))
            final = transformer.final_attn_token_to_image
            self.final_weight = torch.cat((final.k_proj.weight, final.v_proj.weight)).T.contiguous()
            self.final_constant = torch.cat(
                (pe @ final.k_proj.weight.T + final.k_proj.bias, final.v_proj.bias.expand(pe.shape[0], -1)), dim=1
            ).contiguous()
            self.final_dim = final.internal_dim
            self._upscaling = {
                dtype: Upscaling.of(mask_decoder.output_upscaling, dtype)
                for dtype in {image_pe.dtype, upscale_dtype or image_pe.dtype}
            }
            #: the output upscaling's weights in its configured dtype
            self.upscaling = self._upscaling[upscale_dtype or image_pe.dtype]
            self.model_dtype = image_pe.dtype

    def precisions(self, device: torch.device) -> tuple[torch.dtype, torch.dtype]:
        """The (upscaling, attention) dtypes a call on ``device`` uses in the current torch configuration.

        Lower precisions than the model's need oneDNN on the CPU: with ``torch.backends.mkldnn.enabled`` off (the
        stack jobs switch it off while they run, so that their results do not depend on the thread count) torch's
        generic bfloat16 GEMM is 10-500x slower than float32, so the decoder runs in the model's dtype instead.
        """
        if device.type == "cpu" and not torch.backends.mkldnn.enabled:
            return self.model_dtype, self.model_dtype
        return (self.upscale_dtype or self.model_dtype), (self.attention_dtype or self.model_dtype)

    def __call__(
        self,
        image_embeddings: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
    ) -> DecoderOutput:
        decoder = self.decoder
        batch = sparse.shape[0]
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        _, _, h, w = image_embeddings.shape
        # only the IoU token and mask token 0 are read after the final attention (single-mask output), and the
        # final attention and norm act on each token separately: the other tokens are left out from here on
        result = self.run(image_embeddings, sparse, dense, output_tokens, slice(0, 2))
        rows = self.token_rows(result)
        hs = result.hs
        mask_token = hs[:, 1:2, :]

        hyper_in = decoder.output_hypernetworks_mlps[0](mask_token[:, 0, :])  # (B, c')
        logits = upscaled_logits(self.upscaling_now, rows, hyper_in.unsqueeze(2), batch, h, w, self._workspace)
        iou = decoder.iou_prediction_head(hs[:, 0, :])[:, 0:1]
        return DecoderOutput(logits=logits.to(hyper_in.dtype), iou=iou, token=mask_token)

    def transformer(
        self,
        image_embeddings: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        output_tokens: torch.Tensor,
        kept: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two-way transformer alone, for decoders with other output tokens (HQ-SAM's sixth, its HQ token).

        ``output_tokens`` (T, C) precede the prompt tokens; ``kept`` lists the tokens read afterwards (the final
        attention runs on those only). Returns their final embeddings (B, len(kept), C) and the image tokens
        (B, C, h, w) in the model's dtype, a copy the caller owns.
        """
        batch = sparse.shape[0]
        _, c, h, w = image_embeddings.shape
        hs, keys, _, folded = self.run(image_embeddings, sparse, dense, output_tokens, kept)
        if folded:
            keys = keys.reshape(batch, c, h, w).clone()
        else:
            keys = keys.transpose(1, 2).reshape(batch, c, h, w)
        return hs, keys

    def run(
        self,
        image_embeddings: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        output_tokens: torch.Tensor,
        kept: list[int] | slice,
    ) -> TransformerPass:
        """The transformer, up to the final attention on the ``kept`` output tokens and its norm.

        Chooses the call's precisions (:meth:`precisions`, then :attr:`upscaling_now`) for this thread. The image
        tokens returned may live in this thread's scratch buffers: read them (e.g. :meth:`token_rows`) before the
        next call on the same thread.
        """
        transformer = self.decoder.transformer
        batch = sparse.shape[0]
        point_pe = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
        _, c, h, w = image_embeddings.shape
        ws = self._workspace
        ws.active = not torch.is_autocast_enabled(image_embeddings.device.type)
        upscale_dtype, ws.attention_dtype = self.precisions(image_embeddings.device)
        ws.upscaling = self._upscaling[upscale_dtype]
        # the image tokens (B, C, h, w); in the folded path they are updated in place, layer after layer
        shape = (batch, c, h, w)
        src = torch.add(image_embeddings.expand(shape), dense.expand(shape),
                        out=ws.get("keys", shape, image_embeddings))
        queries = point_pe
        final = transformer.final_attn_token_to_image
        folded = final.num_heads * point_pe.shape[1] <= self._fold_limit(image_embeddings.dtype)
        keys_low = None
        if folded:
            keys = src.flatten(2)  # (B, C, N): channel-first, as the embedding already is
            for layer, *_ in self.layers:
                queries, keys = self._layer_folded(layer, queries, keys, point_pe)
            keys_pe = keys_with_pe(ws, keys, self.pe_channels)
            keys_low = ws.converted(keys, keys_pe.dtype, "keys_low")
            attn_out = token_to_image(ws, final, queries[:, kept] + point_pe[:, kept], keys_low, keys_pe)
        else:
            keys = src.flatten(2).transpose(1, 2)  # (B, N, C), a view
            for layer, weight, constant, dim in self.layers:
                queries, keys = self._layer(layer, weight, constant, dim, queries, keys, point_pe)
            projected = project(keys, self.final_weight, self.final_constant)
            attn_out = attention(
                final, final.q_proj(queries[:, kept] + point_pe[:, kept]), projected[..., : self.final_dim],
                projected[..., self.final_dim :],
            )
        hs = transformer.norm_final_attn(queries[:, kept] + attn_out)
        return TransformerPass(hs, keys, keys_low, folded)

    @property
    def upscaling_now(self) -> Upscaling:
        """The output upscaling of this thread's call under way (chosen by :meth:`run`)."""
        return self._workspace.upscaling_now

    def token_rows(self, result: TransformerPass) -> torch.Tensor:
        """The image tokens of ``result`` as (B * h * w, C) rows in the upscaling's dtype (a scratch buffer when
        converted), the input of :func:`~.fast_upscaling.upscaled_logits`."""
        keys, dtype = result.keys, self.upscaling_now.dtype
        if not result.folded:
            return self._workspace.converted(keys, dtype, "tokens_low").flatten(0, 1)
        # converted channel-first (a transposed copy would be slow), or already converted for the attention
        low = result.keys_low
        keys = low if low is not None and low.dtype == dtype else self._workspace.converted(keys, dtype, "tokens_low")
        batch, c, n = keys.shape
        return keys[0].T if batch == 1 else keys.transpose(1, 2).reshape(batch * n, c)

    def _fold_limit(self, dtype: torch.dtype) -> int:
        """``heads * tokens`` up to which the folded path is taken (see the module docstring)."""
        if self.fold_limit is not None:
            return self.fold_limit
        return 512 if self._workspace.attention.itemsize < dtype.itemsize else 192

    def _layer_folded(self, layer, queries, keys, query_pe):
        """``TwoWayAttentionBlock.forward`` with both cross attentions folded
        (:func:`~.folded_attention.folded_layer`), in this thread's workspace."""
        return folded_layer(self._workspace, self.pe_channels, layer, queries, keys, query_pe)

    @staticmethod
    def _layer(layer, weight, constant, dim, queries, keys, query_pe):
        """``TwoWayAttentionBlock.forward`` with the image-side projections fused (see the module docstring)."""
        queries = layer.norm1(self_attention(layer, queries, query_pe))

        projected = project(keys, weight, constant)
        t2i = layer.cross_attn_token_to_image
        queries = queries + attention(
            t2i, t2i.q_proj(queries + query_pe), projected[..., :dim], projected[..., dim : 2 * dim]
        )
        queries = layer.norm2(queries)
        queries = layer.norm3(queries + layer.mlp(queries))

        i2t = layer.cross_attn_image_to_token
        q = queries + query_pe
        attn_out = attention(i2t, projected[..., 2 * dim :], i2t.k_proj(q), i2t.v_proj(queries))
        keys = layer.norm4(keys + attn_out)
        return queries, keys
