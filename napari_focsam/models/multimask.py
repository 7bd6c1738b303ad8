"""SAM's multimask output (mask tokens 1-3 and their IoU estimates) for a batch of prompt sets on one image.

Automatic segmentation decodes every point of a grid with ``multimask_output=True``, as segment-anything's
``SamAutomaticMaskGenerator`` does. Two forward passes compute it:

* :func:`decode_multimask_fast` runs the two-way transformer through a
  :class:`~napari_focsam.models.fast_decoder.FastDecoder` (folded cross attention on the few prompt tokens, only the
  IoU token and the three mask tokens carried through the final attention), then the output upscaling once per
  prompt set as GEMMs on token rows, contracted with the three hypernetwork vectors before anything is rearranged
  into an image. The same function as the reference up to floating-point reassociation (about 1e-5 relative in
  float32), optionally with the products on the image tokens in bfloat16 (the fast decoder's precision options);
* :func:`decode_multimask_reference` is segment-anything's ``MaskDecoder.predict_masks`` itself (the official
  forward, bit for bit), for parity runs.

Both return the low-resolution logits (256 x 256) of the masks a filter on the IoU estimates keeps, all IoU
estimates (B, 3) and the kept masks' indices, in the model's dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from segment_anything.modeling import MaskDecoder

from .fast_decoder import FastDecoder
from .fast_upscaling import upscaled_logits

__all__ = ["decode_multimask_fast", "decode_multimask_reference"]

#: the output tokens read by the multimask output: the IoU token (0) and mask tokens 1-3 (1 + 1 .. 1 + 3)
_KEPT = [0, 2, 3, 4]


def decode_multimask_reference(
    decoder: MaskDecoder, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
    dense: torch.Tensor, keep: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """segment-anything's ``MaskDecoder.forward(..., multimask_output=True)`` on (1, C, h, w) embeddings; returns
    as :func:`decode_multimask_fast` (every mask computed, the kept ones selected afterwards)."""
    masks, iou = decoder.predict_masks(image_embeddings, image_pe, sparse, dense)
    masks, iou = masks[:, 1:], iou[:, 1:]
    wanted = torch.ones_like(iou, dtype=torch.bool) if keep is None else keep(iou)
    flat = torch.nonzero(wanted.flatten())[:, 0]
    return masks.flatten(0, 1)[flat], iou, flat


def decode_multimask_fast(
    fast: FastDecoder, image_embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
    keep: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The multimask output through ``fast`` (see the module docstring).

    ``keep(iou)`` ((B, 3) estimates → (B, 3) bool) selects the masks wanted before any is upscaled: the IoU head
    reads the IoU token only, so the upscaling runs for the prompt sets with a kept mask and is contracted with the
    kept tokens only. Returns the kept logits (K, 256, 256), all IoU estimates (B, 3) and the kept masks' flat
    indices (K,) into (B * 3) (default: every mask).
    """
    decoder = fast.decoder
    batch = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    _, c, h, w = image_embeddings.shape
    result = fast.run(image_embeddings, sparse, dense, output_tokens, _KEPT)
    hs, rows = result.hs, fast.token_rows(result)
    iou = decoder.iou_prediction_head(hs[:, 0, :])[:, 1:4]
    wanted = torch.ones_like(iou, dtype=torch.bool) if keep is None else keep(iou)
    flat = torch.nonzero(wanted.flatten())[:, 0]
    sets = torch.nonzero(wanted.any(1))[:, 0]
    if len(sets) == 0:
        return iou.new_zeros((0, 4 * h, 4 * w)), iou, flat
    hyper = torch.stack(
        [decoder.output_hypernetworks_mlps[i](hs[sets, i, :]) for i in range(1, 4)], dim=2
    )  # (S, c', 3): mask token i's hypernetwork MLP on its final embedding
    if len(sets) < batch:
        rows = rows.reshape(batch, h * w, c)[sets].reshape(-1, c)
    logits = upscaled_logits(fast.upscaling_now, rows, hyper, len(sets), h, w)  # (S, 3, 4h, 4w)
    position = torch.full((batch,), -1, dtype=torch.long, device=iou.device)
    position[sets] = torch.arange(len(sets), device=iou.device)
    selected = logits[position[flat // 3], flat % 3]
    return selected.to(hs.dtype), iou, flat
