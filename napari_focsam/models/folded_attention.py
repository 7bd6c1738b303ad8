"""The two-way transformer's cross attentions folded onto the few prompt tokens' side, on channel-first image tokens.

With few prompt tokens, the image tokens need never be projected: the per-head query/key products are formed on
the tokens (``(W_k^T q) . x`` instead of ``q . (W_k x)``), and the output projection is applied to the few value
tokens before the attention weights mix them; that halves the work on the 4096 image tokens. The image tokens stay
channel-first (B, C, N), the embedding's own layout: no transpose, every product with them a plain GEMM, the
image-to-token softmax over each head's tokens taken across rows (on rows of ~11 values it would be slow), the
residual added inside the last GEMM.

The products with the image tokens run in the workspace's attention dtype (``Workspace.attention``); everything on
the prompt tokens' side stays in the model's dtype. Large intermediates go into the thread's scratch buffers
(:class:`~napari_focsam.models.decoder_ops.Workspace`).
"""

from __future__ import annotations

import torch

from .decoder_ops import Workspace, merge_heads, self_attention

__all__ = ["folded_layer", "image_to_token", "keys_with_pe", "layer_norm_channels", "token_to_image"]


def layer_norm_channels(
    x: torch.Tensor, norm: torch.nn.LayerNorm, scratch: torch.Tensor | None, out: torch.Tensor | None
) -> torch.Tensor:
    """``norm`` over the channels of (B, C, N) channel-first tokens (torch's kernel wants the channels last; a
    reduction across rows is cheaper than two transposes). ``scratch`` (a tensor like ``x``) and ``out`` (``x``
    itself allowed) are optional buffers."""
    centred = torch.sub(x, x.mean(dim=1, keepdim=True), out=scratch)
    variance = torch.mul(centred, centred, out=out).mean(dim=1, keepdim=True)
    centred.mul_((variance + norm.eps).rsqrt_())
    return torch.addcmul(norm.bias.view(1, -1, 1), centred, norm.weight.view(1, -1, 1), out=out)


def keys_with_pe(ws: Workspace, keys: torch.Tensor, pe_channels: torch.Tensor) -> torch.Tensor:
    """``keys + pe`` for channel-first keys, in the attention's dtype, in this thread's scratch buffer."""
    out = ws.get("keys_pe", keys.shape, keys, ws.attention)
    return torch.add(keys, pe_channels, out=out)


def token_to_image(
    ws: Workspace, module, q: torch.Tensor, keys: torch.Tensor, keys_pe: torch.Tensor
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
    shape = (batch, heads * tokens, keys.shape[-1])
    scores = torch.bmm(folded.reshape(batch, heads * tokens, -1).to(keys_pe.dtype), keys_pe,
                       out=ws.get("scores", shape, keys_pe))
    attn = torch.softmax(scores, -1) if not ws.active else torch._softmax(
        scores, -1, False, out=ws.get("attn", shape, keys_pe))
    # (B, H*T, C); bmm, not matmul: matmul copies a transposed bfloat16 operand first
    pooled = torch.bmm(attn, keys.transpose(1, 2)).to(q.dtype)
    values = pooled.view(batch, heads, tokens, -1) @ module.v_proj.weight.view(heads, head_dim, -1).transpose(1, 2)
    values = values + module.v_proj.bias.view(1, heads, 1, head_dim)
    return module.out_proj(merge_heads(values))


def image_to_token(
    ws: Workspace, module, keys: torch.Tensor, keys_pe: torch.Tensor, k: torch.Tensor, v: torch.Tensor
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


def folded_layer(
    ws: Workspace, pe_channels: torch.Tensor, layer, queries: torch.Tensor, keys: torch.Tensor,
    query_pe: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayAttentionBlock.forward`` with both cross attentions folded onto the few tokens' side, on
    channel-first (B, C, N) image tokens (updated in place when they are this thread's scratch buffer);
    ``pe_channels`` is the dense positional encoding (1, C, N)."""
    queries = layer.norm1(self_attention(layer, queries, query_pe))
    keys_pe = keys_with_pe(ws, keys, pe_channels)
    queries = queries + token_to_image(
        ws, layer.cross_attn_token_to_image, queries + query_pe, ws.converted(keys, keys_pe.dtype, "keys_low"),
        keys_pe,
    )
    queries = layer.norm2(queries)
    queries = layer.norm3(queries + layer.mlp(queries))
    keys = image_to_token(ws, layer.cross_attn_image_to_token, keys, keys_pe, queries + query_pe, queries)
    if not ws.active:
        return queries, layer_norm_channels(keys, layer.norm4, scratch=None, out=None)
    # keys_pe is done with: its buffer is the norm's scratch when it has the keys' dtype
    scratch = keys_pe if keys_pe.dtype == keys.dtype else ws.get("norm", keys.shape, keys)
    return queries, layer_norm_channels(keys, layer.norm4, scratch=scratch, out=keys)
