"""A faster forward pass of SAM's mask decoder: same weights, same function, fewer passes over the image tokens.

:func:`~napari_focsam.models.decoding.decode` runs segment-anything's ``TwoWayTransformer`` as written. Per layer it
adds the positional encoding to the 4096 image tokens twice and projects them in three separate GEMMs. Here, for a
fixed model (:class:`FastDecoder` is built once per model and dtype):

* every projection of ``image tokens + positional encoding`` is split into ``tokens @ W`` plus the constant
  ``pe @ W + b``, computed once; the three projections of the image tokens in a layer (token-to-image keys and values,
  image-to-token queries) are one GEMM with the weights stacked;
* with few prompt tokens (``heads * tokens <= fold_limit``, 128 by measurement: up to about 10 clicks), both
  cross attentions are folded onto the tokens' side instead: the image tokens are never projected, the per-head query/key products are
  formed on the tokens (``(W_k^T q) . x`` instead of ``q . (W_k x)``), and the output projection is applied to the
  few value tokens before the attention weights mix them; that halves the work on the 4096 image tokens;
* otherwise attention goes through ``scaled_dot_product_attention``;
* the 2x2 stride-2 transposed convolutions of the upscaling are GEMMs on channel-last tokens (mkldnn's kernels are
  several times slower on CPU for these shapes), and the second one's output is contracted with the hypernetwork
  vector before it is ever rearranged into an image.

The arithmetic is the same up to floating-point reassociation: logits agree with :func:`decode` to about 1e-5
(relative, float32) and 1e-12 (float64); ``tests/test_fast_decoder.py`` checks both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder

from .decoding import DecoderOutput

__all__ = ["FastDecoder"]


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, length, channels = x.shape
    return x.view(batch, length, num_heads, channels // num_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


def _project(tokens: torch.Tensor, weight: torch.Tensor, constant: torch.Tensor) -> torch.Tensor:
    """``tokens @ weight + constant`` for (B, N, C) tokens and a per-token (N, K) constant, fused when B is 1."""
    batch, length, channels = tokens.shape
    if batch == 1:
        return torch.addmm(constant, tokens.reshape(length, channels), weight).unsqueeze(0)
    return torch.matmul(tokens, weight) + constant


def _transposed_conv_matrix(conv: torch.nn.ConvTranspose2d) -> torch.Tensor:
    """A 2x2, stride-2 transposed convolution's weight ``(C_in, C_out, 2, 2)`` as a ``(C_in, 2 * 2 * C_out)`` GEMM
    matrix whose columns are ordered (kernel row, kernel column, output channel)."""
    if conv.kernel_size != (2, 2) or conv.stride != (2, 2) or conv.padding != (0, 0) or conv.groups != 1:
        raise ValueError(f"expected a 2x2 stride-2 transposed convolution, got {conv}")
    return conv.weight.permute(0, 2, 3, 1).reshape(conv.in_channels, -1).contiguous()


def _attention(module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment-anything's ``Attention.forward`` on already projected q, k, v, through SDPA, then ``out_proj``."""
    heads = module.num_heads
    out = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads))
    return module.out_proj(_merge(out))


class FastDecoder:
    """The single-mask decoder pass (mask token 0) of one ``MaskDecoder`` with a fixed dense positional encoding.

    Build it once per model (weights must not change afterwards); call it like :func:`decode`. Thread-safe: it
    holds only constant tensors.
    """

    def __init__(self, mask_decoder: MaskDecoder, image_pe: torch.Tensor, *, fold_limit: int = 128) -> None:
        self.decoder = mask_decoder
        self.fold_limit = fold_limit
        transformer = mask_decoder.transformer
        with torch.inference_mode():
            pe = image_pe.flatten(2).transpose(1, 2)[0]  # (N, C)
            self.pe = pe.contiguous()
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
            conv1, norm, _, conv2, _ = mask_decoder.output_upscaling
            self.upscale1 = (_transposed_conv_matrix(conv1), conv1.bias.repeat(4).contiguous(), conv1.out_channels)
            self.upscale2 = (_transposed_conv_matrix(conv2), conv2.bias.repeat(4).contiguous(), conv2.out_channels)
            self.upscale_norm = norm

    def __call__(
        self,
        image_embeddings: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
    ) -> DecoderOutput:
        decoder = self.decoder
        transformer = decoder.transformer
        batch = sparse.shape[0]
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        point_pe = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
        src = image_embeddings + dense
        if src.shape[0] != batch:
            src = src.expand(batch, -1, -1, -1)
        b, c, h, w = src.shape
        keys = src.flatten(2).transpose(1, 2)  # (B, N, C), a view
        queries = point_pe
        final = transformer.final_attn_token_to_image
        folded = final.num_heads * point_pe.shape[1] <= self.fold_limit
        if folded:
            keys = keys.contiguous()
            for layer, *_ in self.layers:
                queries, keys = self._layer_folded(layer, queries, keys, point_pe)
            attn_out = self._token_to_image_folded(final, queries + point_pe, keys, keys + self.pe)
        else:
            for layer, weight, constant, dim in self.layers:
                queries, keys = self._layer(layer, weight, constant, dim, queries, keys, point_pe)
            projected = _project(keys, self.final_weight, self.final_constant)
            attn_out = _attention(
                final, final.q_proj(queries + point_pe), projected[..., : self.final_dim],
                projected[..., self.final_dim :],
            )
        hs = transformer.norm_final_attn(queries + attn_out)
        mask_token = hs[:, 1:2, :]

        hyper_in = decoder.output_hypernetworks_mlps[0](mask_token[:, 0, :])  # (B, c')
        logits = self._upscaled_logits(keys, hyper_in, h, w)
        iou = decoder.iou_prediction_head(hs[:, 0, :])[:, 0:1]
        return DecoderOutput(logits=logits, iou=iou, token=mask_token)

    def _upscaled_logits(self, keys: torch.Tensor, hyper_in: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """``output_upscaling`` then the dot product with the hypernetwork output, all channel-last.

        A 2x2 transposed convolution with stride 2 is one GEMM per input pixel (C_in -> 2 * 2 * C_out) followed by
        a rearrangement of the 2x2 outputs into the doubled grid. The second one is never rearranged: GELU and the
        dot product with ``hyper_in`` act per output pixel, so the (h, w, 2, 2) logits are rearranged instead.
        """
        batch, n, channels = keys.shape
        matrix, bias, out = self.upscale1
        x = torch.addmm(bias, keys.reshape(batch * n, channels), matrix)
        x = x.view(batch, h, w, 2, 2, out).permute(0, 1, 3, 2, 4, 5).reshape(batch, 2 * h * 2 * w, out)
        norm = self.upscale_norm
        x = F.gelu(F.layer_norm(x, (out,), norm.weight, norm.bias, norm.eps))
        matrix, bias, out = self.upscale2
        x = F.gelu(torch.addmm(bias, x.view(-1, x.shape[-1]), matrix)).view(batch, 2 * h, 2 * w, 4, out)
        logits = torch.bmm(x.view(batch, -1, out), hyper_in.view(batch, out, 1)).view(batch, 2 * h, 2 * w, 2, 2)
        return logits.permute(0, 1, 3, 2, 4).reshape(batch, 1, 4 * h, 4 * w)

    @staticmethod
    def _token_to_image_folded(module, q: torch.Tensor, keys: torch.Tensor, keys_pe: torch.Tensor) -> torch.Tensor:
        """``module(q, keys + pe, keys)`` (few queries, many keys) without projecting the keys.

        Per head h: ``q_h . (Wk_h k + bk_h) = (Wk_h^T q_h) . k + const`` (the constant cancels in the softmax over
        the keys) and ``sum_n a_n (Wv_h k_n + bv_h) = Wv_h (sum_n a_n k_n) + bv_h``.
        """
        batch, tokens, _ = q.shape
        heads, dim = module.num_heads, module.internal_dim
        head_dim = dim // heads
        qp = module.q_proj(q).view(batch, tokens, heads, head_dim).transpose(1, 2)  # (B, H, T, d)
        folded = (qp * head_dim**-0.5) @ module.k_proj.weight.view(heads, head_dim, -1)  # (B, H, T, C)
        scores = folded.reshape(batch, heads * tokens, -1) @ keys_pe.transpose(1, 2)  # (B, H*T, N)
        pooled = scores.softmax(dim=-1) @ keys  # (B, H*T, C)
        values = pooled.view(batch, heads, tokens, -1) @ module.v_proj.weight.view(heads, head_dim, -1).transpose(1, 2)
        values = values + module.v_proj.bias.view(1, heads, 1, head_dim)
        return module.out_proj(_merge(values))

    @staticmethod
    def _image_to_token_folded(module, keys_pe: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``module(keys + pe, k, v)`` (many queries, few keys) without projecting the queries or the output.

        Per head h: ``(Wq_h x + bq_h) . kp_h = x . (Wq_h^T kp_h) + bq_h . kp_h`` and
        ``Wo_h (sum_t a_t vp_t) = sum_t a_t (Wo_h vp_t)``, with ``kp``, ``vp`` the projected tokens.
        """
        batch, n, _ = keys_pe.shape
        tokens = k.shape[1]
        heads, dim = module.num_heads, module.internal_dim
        head_dim = dim // heads
        scale = head_dim**-0.5
        kp = module.k_proj(k).view(batch, tokens, heads, head_dim).transpose(1, 2) * scale  # (B, H, T, d)
        vp = module.v_proj(v).view(batch, tokens, heads, head_dim).transpose(1, 2)
        folded = kp @ module.q_proj.weight.view(heads, head_dim, -1)  # (B, H, T, C)
        bias = (kp * module.q_proj.bias.view(1, heads, 1, head_dim)).sum(-1)  # (B, H, T)
        scores = torch.baddbmm(bias.view(batch, 1, heads * tokens), keys_pe, folded.view(batch, heads * tokens, -1).transpose(1, 2))
        attn = scores.view(batch, n, heads, tokens).softmax(dim=-1).view(batch, n, heads * tokens)
        out_weight = module.out_proj.weight.view(-1, heads, head_dim).transpose(0, 1)  # (H, C, d)
        mixed = (vp @ out_weight.transpose(1, 2)).reshape(batch, heads * tokens, -1)  # (B, H*T, C)
        return torch.baddbmm(module.out_proj.bias.view(1, 1, -1), attn, mixed)

    def _layer_folded(self, layer, queries, keys, query_pe):
        """``TwoWayAttentionBlock.forward`` with both cross attentions folded onto the few tokens' side."""
        sa = layer.self_attn
        if layer.skip_first_layer_pe:
            queries = _attention(sa, sa.q_proj(queries), sa.k_proj(queries), sa.v_proj(queries))
        else:
            q = queries + query_pe
            queries = queries + _attention(sa, sa.q_proj(q), sa.k_proj(q), sa.v_proj(queries))
        queries = layer.norm1(queries)
        keys_pe = keys + self.pe
        queries = queries + self._token_to_image_folded(
            layer.cross_attn_token_to_image, queries + query_pe, keys, keys_pe
        )
        queries = layer.norm2(queries)
        queries = layer.norm3(queries + layer.mlp(queries))
        attn_out = self._image_to_token_folded(layer.cross_attn_image_to_token, keys_pe, queries + query_pe, queries)
        return queries, layer.norm4(keys + attn_out)

    @staticmethod
    def _layer(layer, weight, constant, dim, queries, keys, query_pe):
        """``TwoWayAttentionBlock.forward`` with the image-side projections fused (see the module docstring)."""
        if layer.skip_first_layer_pe:
            sa = layer.self_attn
            queries = _attention(sa, sa.q_proj(queries), sa.k_proj(queries), sa.v_proj(queries))
        else:
            sa = layer.self_attn
            q = queries + query_pe
            queries = queries + _attention(sa, sa.q_proj(q), sa.k_proj(q), sa.v_proj(queries))
        queries = layer.norm1(queries)

        projected = _project(keys, weight, constant)
        t2i = layer.cross_attn_token_to_image
        queries = queries + _attention(
            t2i, t2i.q_proj(queries + query_pe), projected[..., :dim], projected[..., dim : 2 * dim]
        )
        queries = layer.norm2(queries)
        queries = layer.norm3(queries + layer.mlp(queries))

        i2t = layer.cross_attn_image_to_token
        q = queries + query_pe
        attn_out = _attention(i2t, projected[..., 2 * dim :], i2t.k_proj(q), i2t.v_proj(queries))
        keys = layer.norm4(keys + attn_out)
        return queries, keys
