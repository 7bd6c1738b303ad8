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
  image tokens channel-first (C, N), the embedding's own layout: no transpose, every product with them a plain
  GEMM, the image-to-token softmax over each head's tokens taken across rows (on rows of ~11 values it would be
  slow), the residual added inside the last GEMM;
* otherwise attention goes through ``scaled_dot_product_attention``;
* after the last layer only the IoU token and mask token 0 are carried through the final attention (the single-mask
  output reads nothing else, and that attention and its norm act per token);
* the 2x2 stride-2 transposed convolutions of the upscaling are GEMMs on token rows (mkldnn's kernels are several
  times slower on CPU for these shapes), and the output is contracted with the hypernetwork vector before anything
  is rearranged into an image.

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

import math
import threading
from typing import NamedTuple

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder

from .decoding import DecoderOutput
from .fast_encoder import cpu_has_fast_bf16

__all__ = ["FastDecoder", "default_decoder_dtype"]


def default_decoder_dtype(device: torch.device | str, model_dtype: torch.dtype = torch.float32) -> torch.dtype:
    """The dtype of the decoder's products with the image tokens (output upscaling, folded attention) chosen by
    default: bfloat16 for a float32 model on a CPU with native bfloat16 arithmetic (AVX512-BF16/AMX), where together
    they cut a click by about 40 % and keep masks within the stated tolerance (``benchmarks/bench_engine.py``); the
    model's dtype everywhere else (on CUDA the decoder is not bound by arithmetic, and without native instructions
    bfloat16 is slower)."""
    if model_dtype == torch.float32 and torch.device(device).type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return model_dtype


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


class _Upscaling(NamedTuple):
    """The output upscaling's parameters in one dtype: (GEMM matrix, bias, output channels) of each transposed
    convolution and (weight, bias, eps) of the norm between them."""

    first: tuple[torch.Tensor, torch.Tensor, int]
    norm: tuple[torch.Tensor, torch.Tensor, float]
    second: tuple[torch.Tensor, torch.Tensor, int]

    @property
    def dtype(self) -> torch.dtype:
        return self.first[0].dtype


class _Workspace(threading.local):
    """Scratch tensors of one thread, reused from call to call.

    A click allocates tens of megabytes of image-sized temporaries; glibc hands such blocks back to the OS and
    every call faults their pages in again, which on the development VM cost about a third of the decoder's time.
    The large intermediates are written into these buffers instead (``out=`` and in-place operations); nothing
    returned to the caller lives in them.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}
        self.active = True  #: off under autocast, whose results' dtypes the buffers cannot know in advance
        # the precisions of the call under way (see FastDecoder.precisions)
        self.attention_dtype: torch.dtype | None = None
        self.upscaling: _Upscaling | None = None

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor,
            dtype: torch.dtype | None = None) -> torch.Tensor | None:
        """A ``shape`` tensor on ``like``'s device, of ``dtype`` (default: ``like``'s), its contents undefined; or
        None when inactive (every ``out=`` then allocates as usual)."""
        if not self.active:
            return None
        size = math.prod(shape)
        dtype = dtype or like.dtype
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.dtype != dtype or buffer.device != like.device:
            buffer = torch.empty(size, dtype=dtype, device=like.device)
            self.buffers[name] = buffer
        return buffer[:size].view(shape)


def _layer_norm_channels(
    x: torch.Tensor, norm: torch.nn.LayerNorm, scratch: torch.Tensor | None, out: torch.Tensor | None
) -> torch.Tensor:
    """``norm`` over the channels of (B, C, N) channel-first tokens (torch's kernel wants the channels last; a
    reduction across rows is cheaper than two transposes). ``scratch`` (a tensor like ``x``) and ``out`` (``x``
    itself allowed) are optional buffers."""
    centred = torch.sub(x, x.mean(dim=1, keepdim=True), out=scratch)
    variance = torch.mul(centred, centred, out=out).mean(dim=1, keepdim=True)
    centred.mul_((variance + norm.eps).rsqrt_())
    return torch.addcmul(norm.bias.view(1, -1, 1), centred, norm.weight.view(1, -1, 1), out=out)


def _attention(module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment-anything's ``Attention.forward`` on already projected q, k, v, through SDPA, then ``out_proj``."""
    heads = module.num_heads
    out = F.scaled_dot_product_attention(_heads(q, heads), _heads(k, heads), _heads(v, heads))
    return module.out_proj(_merge(out))


class FastDecoder:
    """The single-mask decoder pass (mask token 0) of one ``MaskDecoder`` with a fixed dense positional encoding.

    Build it once per model (weights must not change afterwards); call it like :func:`decode`. Thread-safe: besides
    constant tensors it holds only per-thread scratch buffers (:class:`_Workspace`).
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
        self._workspace = _Workspace()
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
            conv1, norm, _, conv2, _ = mask_decoder.output_upscaling
            self._upscaling = {
                dtype: _Upscaling(
                    (_transposed_conv_matrix(conv1).to(dtype), conv1.bias.repeat(4).to(dtype).contiguous(),
                     conv1.out_channels),
                    (norm.weight.to(dtype), norm.bias.to(dtype), norm.eps),
                    (_transposed_conv_matrix(conv2).to(dtype), conv2.bias.repeat(4).to(dtype).contiguous(),
                     conv2.out_channels),
                )
                for dtype in {image_pe.dtype, upscale_dtype or image_pe.dtype}
            }
            #: the output upscaling's weights in its configured dtype
            self.upscaling = self._upscaling[upscale_dtype or image_pe.dtype]
            self.model_dtype = image_pe.dtype

    def precisions(self, device: torch.device) -> tuple[torch.dtype, torch.dtype]:
        """The (upscaling, attention) dtypes a call on ``device`` uses now.

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
        _, c, h, w = image_embeddings.shape
        # only the IoU token and mask token 0 are read after the final attention (single-mask output), and the
        # final attention and norm act on each token separately: the other tokens are left out from here on
        hs, keys, keys_low, folded = self._run(image_embeddings, sparse, dense, output_tokens, slice(0, 2))
        if folded:
            # converted channel-first (a transposed copy would be slow), or already converted for the attention
            keys = keys_low if keys_low.dtype == self._upscale_dtype else self._in_upscale_dtype(keys)
            rows = keys[0].T if batch == 1 else keys.transpose(1, 2).reshape(batch * h * w, c)
        else:
            rows = self._in_upscale_dtype(keys).reshape(batch * h * w, c)
        mask_token = hs[:, 1:2, :]

        hyper_in = decoder.output_hypernetworks_mlps[0](mask_token[:, 0, :])  # (B, c')
        logits = self._upscaled_logits(rows, hyper_in, batch, h, w)
        iou = decoder.iou_prediction_head(hs[:, 0, :])[:, 0:1]
        return DecoderOutput(logits=logits, iou=iou, token=mask_token)

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
        hs, keys, _, folded = self._run(image_embeddings, sparse, dense, output_tokens, kept)
        if folded:
            keys = keys.reshape(batch, c, h, w).clone()
        else:
            keys = keys.transpose(1, 2).reshape(batch, c, h, w)
        return hs, keys

    def _run(self, image_embeddings, sparse, dense, output_tokens, kept):
        """The transformer, up to the final attention on the ``kept`` tokens and its norm: (hs, keys, keys in the
        attention dtype or None, folded) with keys (B, C, N) when folded, else (B, N, C)."""
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
            keys_pe = self._keys_pe(keys)
            keys_low = self._converted(keys, keys_pe.dtype, "keys_low")
            attn_out = self._token_to_image_folded(final, queries[:, kept] + point_pe[:, kept], keys_low, keys_pe)
        else:
            keys = src.flatten(2).transpose(1, 2)  # (B, N, C), a view
            for layer, weight, constant, dim in self.layers:
                queries, keys = self._layer(layer, weight, constant, dim, queries, keys, point_pe)
            projected = _project(keys, self.final_weight, self.final_constant)
            attn_out = _attention(
                final, final.q_proj(queries[:, kept] + point_pe[:, kept]), projected[..., : self.final_dim],
                projected[..., self.final_dim :],
            )
        hs = transformer.norm_final_attn(queries[:, kept] + attn_out)
        return hs, keys, keys_low, folded

    def _fold_limit(self, dtype: torch.dtype) -> int:
        """``heads * tokens`` up to which the folded path is taken (see the module docstring)."""
        if self.fold_limit is not None:
            return self.fold_limit
        return 512 if self._attention_dtype.itemsize < dtype.itemsize else 192

    @property
    def _upscaling_now(self) -> _Upscaling:
        """The output upscaling of the call under way (chosen by :meth:`_run`)."""
        upscaling = self._workspace.upscaling
        assert upscaling is not None
        return upscaling

    @property
    def _upscale_dtype(self) -> torch.dtype:
        return self._upscaling_now.dtype

    @property
    def _attention_dtype(self) -> torch.dtype:
        dtype = self._workspace.attention_dtype
        assert dtype is not None  # chosen by _run
        return dtype

    def _converted(self, tokens: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
        """``tokens`` in ``dtype``, in the same layout: a scratch buffer when converted, ``tokens`` itself when
        already in ``dtype`` or under autocast (whose GEMMs cast their inputs themselves)."""
        ws = self._workspace
        buffer = None if tokens.dtype == dtype else ws.get(name, tokens.shape, tokens, dtype)
        return tokens if buffer is None else buffer.copy_(tokens)

    def _in_upscale_dtype(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` in the upscaling's dtype, in the same layout (a scratch buffer when converted)."""
        return self._converted(tokens, self._upscale_dtype, "tokens_low")

    def _upscaled_logits(self, rows: torch.Tensor, hyper_in: torch.Tensor, batch: int, h: int, w: int) -> torch.Tensor:
        """``output_upscaling`` then the dot product with the hypernetwork output, on (B * h * w, C) token rows.

        A 2x2 transposed convolution with stride 2 is one GEMM per input pixel (C_in -> 2 * 2 * C_out) followed by
        a rearrangement of the 2x2 outputs into the doubled grid. Layer norm, GELU, the second convolution and the
        dot product with ``hyper_in`` all act per output pixel, so nothing is rearranged until the (h, w, 2, 2, 2, 2)
        logits, whose pixel (i, j, a1, b1, a2, b2) lands at row ``4i + 2a1 + a2`` and column ``4j + 2b1 + b2``.
        """
        dtype, ws, upscaling = hyper_in.dtype, self._workspace, self._upscaling_now
        matrix, bias, out = upscaling.first
        x = torch.addmm(bias, rows, matrix, out=ws.get("up1", (rows.shape[0], 4 * out), matrix))
        x = x.view(-1, out)  # rows (b, i, j, a1, b1)
        if ws.active and x.device.type == "cpu":  # (CUDA keeps float32 statistics for bfloat16)
            weight, norm_bias, eps = upscaling.norm
            normed = ws.get("up1_norm", x.shape, x)
            stats = ws.get("up1_stats", (2, x.shape[0], 1), x)  # mean and 1/std, in x's dtype on the CPU
            assert normed is not None and stats is not None  # the workspace is active
            torch.ops.aten.native_layer_norm.out(x, [out], weight, norm_bias, eps, out0=normed, out1=stats[0],
                                                 out2=stats[1])
        else:
            normed = F.layer_norm(x, (out,), *upscaling.norm)
        x = torch.ops.aten.gelu_(normed)
        matrix, bias, out = upscaling.second
        x = torch.addmm(bias, x, matrix, out=ws.get("up2", (x.shape[0], matrix.shape[1]), x))
        x = torch.ops.aten.gelu_(x)  # rows (b, i, j, a1, b1), columns (a2, b2, channel)
        logits = torch.bmm(x.view(batch, -1, out), hyper_in.to(x.dtype).view(batch, out, 1)).to(dtype)
        logits = logits.view(batch, h, w, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
        return logits.reshape(batch, 1, 4 * h, 4 * w)

    def _keys_pe(self, keys: torch.Tensor) -> torch.Tensor:
        """``keys + pe`` for channel-first keys, in the attention's dtype, in this thread's scratch buffer."""
        out = self._workspace.get("keys_pe", keys.shape, keys, self._attention_dtype)
        return torch.add(keys, self.pe_channels, out=out)

    def _token_to_image_folded(
        self, module, q: torch.Tensor, keys: torch.Tensor, keys_pe: torch.Tensor
    ) -> torch.Tensor:
        """``module(q, keys + pe, keys)`` (few queries, many keys) without projecting the keys; the keys are
        channel-first (B, C, N), ``keys`` and ``keys_pe`` in the attention's dtype (the two products with them run
        in it; everything on the queries' side stays in ``q``'s dtype).

        Per head h: ``q_h . (Wk_h k + bk_h) = (Wk_h^T q_h) . k + const`` (the constant cancels in the softmax over
        the keys) and ``sum_n a_n (Wv_h k_n + bv_h) = Wv_h (sum_n a_n k_n) + bv_h``.
        """
        batch, tokens, _ = q.shape
        heads, dim = module.num_heads, module.internal_dim
        head_dim = dim // heads
        qp = module.q_proj(q).view(batch, tokens, heads, head_dim).transpose(1, 2)  # (B, H, T, d)
        folded = (qp * head_dim**-0.5) @ module.k_proj.weight.view(heads, head_dim, -1)  # (B, H, T, C)
        ws = self._workspace
        shape = (batch, heads * tokens, keys.shape[-1])
        scores = torch.bmm(folded.reshape(batch, heads * tokens, -1).to(keys_pe.dtype), keys_pe,
                           out=ws.get("scores", shape, keys_pe))
        attn = torch.softmax(scores, -1) if not ws.active else torch._softmax(
            scores, -1, False, out=ws.get("attn", shape, keys_pe))
        # (B, H*T, C); bmm, not matmul: matmul copies a transposed bfloat16 operand first
        pooled = torch.bmm(attn, keys.transpose(1, 2)).to(q.dtype)
        values = pooled.view(batch, heads, tokens, -1) @ module.v_proj.weight.view(heads, head_dim, -1).transpose(1, 2)
        values = values + module.v_proj.bias.view(1, heads, 1, head_dim)
        return module.out_proj(_merge(values))

    def _image_to_token_folded(
        self, module, keys: torch.Tensor, keys_pe: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """``keys + module(keys + pe, k, v)`` (many queries, few keys) for (B, C, N) channel-first keys, without
        projecting the queries or the output.

        Per head h: ``(Wq_h x + bq_h) . kp_h = x . (Wq_h^T kp_h) + bq_h . kp_h`` and
        ``Wo_h (sum_t a_t vp_t) = sum_t a_t (Wo_h vp_t)``, with ``kp``, ``vp`` the projected tokens. The attention
        weights of each head sum to 1 over the tokens, so the output bias is added to every mixed value scaled by
        ``1 / heads``, and the residual ``keys`` enters the same GEMM. The two products with the image tokens run in
        ``keys_pe``'s dtype (the attention's); in a lower one than ``keys``' the update is added to them afterwards.
        """
        batch, _, n = keys_pe.shape
        tokens = k.shape[1]
        heads, dim = module.num_heads, module.internal_dim
        head_dim = dim // heads
        scale = head_dim**-0.5
        kp = module.k_proj(k).view(batch, tokens, heads, head_dim).transpose(1, 2) * scale  # (B, H, T, d)
        vp = module.v_proj(v).view(batch, tokens, heads, head_dim).transpose(1, 2)
        folded = kp @ module.q_proj.weight.view(heads, head_dim, -1)  # (B, H, T, C)
        bias = (kp * module.q_proj.bias.view(1, heads, 1, head_dim)).sum(-1)  # (B, H, T)
        ws = self._workspace
        shape = (batch, heads * tokens, n)
        low = keys_pe.dtype
        scores = torch.baddbmm(bias.view(batch, heads * tokens, 1).to(low),
                               folded.view(batch, heads * tokens, -1).to(low), keys_pe,
                               out=ws.get("scores", shape, keys_pe))
        # softmax over each head's tokens: dim 2 of (B, H, T, N), a reduction across rows (short rows of T would
        # be slow on the last dimension)
        scores = scores.view(batch, heads, tokens, n)
        attn = torch.softmax(scores, 2) if not ws.active else torch._softmax(
            scores, 2, False, out=ws.get("attn", scores.shape, keys_pe))
        attn = attn.view(shape)
        out_weight = module.out_proj.weight.view(-1, heads, head_dim).transpose(0, 1)  # (H, C, d)
        mixed = (vp @ out_weight.transpose(1, 2)).reshape(batch, heads * tokens, -1)  # (B, H*T, C)
        mixed = (mixed + module.out_proj.bias / heads).transpose(1, 2)
        if not ws.active:
            return torch.baddbmm(keys, mixed, attn)  # (B, C, N)
        # the tokens are this thread's scratch buffer: updated in place
        if low == keys.dtype:
            return keys.baddbmm_(mixed.to(low), attn)
        return keys.add_(torch.bmm(mixed.to(low), attn, out=ws.get("update", keys.shape, keys_pe)))

    def _layer_folded(self, layer, queries, keys, query_pe):
        """``TwoWayAttentionBlock.forward`` with both cross attentions folded onto the few tokens' side, on
        channel-first (B, C, N) image tokens (updated in place when they are this thread's scratch buffer)."""
        sa = layer.self_attn
        if layer.skip_first_layer_pe:
            queries = _attention(sa, sa.q_proj(queries), sa.k_proj(queries), sa.v_proj(queries))
        else:
            q = queries + query_pe
            queries = queries + _attention(sa, sa.q_proj(q), sa.k_proj(q), sa.v_proj(queries))
        queries = layer.norm1(queries)
        keys_pe = self._keys_pe(keys)
        queries = queries + self._token_to_image_folded(
            layer.cross_attn_token_to_image, queries + query_pe, self._converted(keys, keys_pe.dtype, "keys_low"),
            keys_pe,
        )
        queries = layer.norm2(queries)
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = self._image_to_token_folded(layer.cross_attn_image_to_token, keys, keys_pe, queries + query_pe, queries)
        ws = self._workspace
        if not ws.active:
            return queries, _layer_norm_channels(keys, layer.norm4, scratch=None, out=None)
        # keys_pe is done with: its buffer is the norm's scratch when it has the keys' dtype
        scratch = keys_pe if keys_pe.dtype == keys.dtype else ws.get("norm", keys.shape, keys)
        return queries, _layer_norm_channels(keys, layer.norm4, scratch=scratch, out=keys)

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
