"""Automatic instance segmentation ("segment everything") with a SAM-family model.

The algorithm is segment-anything's ``SamAutomaticMaskGenerator`` (single crop layer), with the same grid,
thresholds and suppression, computed in fewer passes:

1. a regular grid of ``points_per_side``² points (cell centres of the image, in original pixels), each a positive
   click on its own;
2. the points decoded ``points_per_batch`` at a time with the multimask output (three masks and three IoU
   estimates per point; HQ-SAM: its one selected mask per point) on the image's cached embedding, through the fast
   decoder (:mod:`napari_focsam.models.multimask`);
3. masks whose predicted IoU is not above ``pred_iou_thresh`` are dropped **before** anything is upsampled (the
   official generator upsamples all of them first; the estimate does not depend on it, so the set is the same);
4. the others are upsampled to the original size exactly as the predictor does, their stability score (the IoU of
   the masks thresholded at ``+offset`` and ``-offset``) computed, those below ``stability_score_thresh`` dropped;
5. greedy non-maximum suppression on the masks' boxes (IoU above ``box_nms_thresh``), highest predicted IoU first.

:meth:`AutomaticMasks.labels` paints the kept masks into one instance image (largest first, so a smaller mask
lying on a larger one stays visible). The weight-free fallback has its own automatic mode
(:mod:`.fallback_automatic`); :func:`segment_everything` chooses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import DTypeLike
from torchvision.ops import nms

from .._cancel import CancelToken, check_cancel
from ..models.decoding import encode_prompts
from ..models.multimask import decode_multimask_fast, decode_multimask_reference
from ..models.transforms import SamTransform
from .types import ImageEmbedding

__all__ = ["AutomaticMasks", "AutomaticOptions", "generate_masks", "masks_to_labels", "point_grid"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class AutomaticOptions:
    """The generator's settings; the defaults are ``SamAutomaticMaskGenerator``'s.

    ``min_area`` (pixels, ours; 0 keeps every mask as the official generator does) drops smaller masks after
    suppression. ``decoder``: ``"fast"`` (default) or ``"reference"`` (segment-anything's decoder forward, for
    bit-exact parity runs).
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_area: int = 0
    decoder: str = "fast"

    def __post_init__(self) -> None:
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise ValueError("points_per_side and points_per_batch must be at least 1")
        if not 0.0 <= self.box_nms_thresh <= 1.0:
            raise ValueError(f"box_nms_thresh must be in [0, 1], got {self.box_nms_thresh}")
        if self.decoder not in ("fast", "reference"):
            raise ValueError(f"decoder must be 'fast' or 'reference', got {self.decoder!r}")


@dataclass
class AutomaticMasks:
    """The kept masks, in suppression order (highest predicted IoU first).

    ``masks`` (N, H, W) bool; ``scores`` the predicted IoU; ``stability`` the stability scores; ``boxes``
    (y0, x0, y1, x1) inclusive pixel bounds; ``points`` the (y, x) grid point each mask came from.
    """

    masks: np.ndarray
    scores: np.ndarray
    stability: np.ndarray
    boxes: np.ndarray
    points: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.masks)

    def labels(self, dtype: DTypeLike = np.uint32) -> np.ndarray:
        """The masks painted into one instance image (see :func:`masks_to_labels`)."""
        return masks_to_labels(self.masks, self.masks.shape[1:] if len(self.masks) else None, dtype=dtype)


def masks_to_labels(masks: np.ndarray, shape: tuple[int, int] | None = None, *, dtype: DTypeLike = np.uint32,
                    start: int = 1) -> np.ndarray:
    """Paint (N, H, W) masks into an (H, W) instance image: the largest first, so that a smaller mask on a larger
    one stays visible; ids ``start``, ``start + 1``, ... in that painting order; an id whose pixels are all covered
    by later masks is not reused (the ids present are therefore not always consecutive)."""
    if shape is None:
        shape = masks.shape[1:]
    labels = np.zeros(tuple(shape), dtype=dtype)
    if len(masks) == 0:
        return labels
    areas = masks.reshape(len(masks), -1).sum(1)
    for offset, i in enumerate(np.argsort(-areas, kind="stable")):
        labels[masks[i]] = start + offset
    return labels


def point_grid(points_per_side: int) -> np.ndarray:
    """The (n², 2) grid of cell centres in [0, 1], (x, y) order, x fastest (``build_point_grid``'s layout)."""
    offset = 1 / (2 * points_per_side)
    side = np.linspace(offset, 1 - offset, points_per_side)
    xs = np.tile(side[None, :], (points_per_side, 1))
    ys = np.tile(side[:, None], (1, points_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def stability_score(logits: torch.Tensor, offset: float, threshold: float = 0.0) -> torch.Tensor:
    """IoU of the masks thresholded at ``threshold + offset`` and ``threshold - offset`` (per mask, float32),
    counted in the same integer types as segment-anything."""
    inner = (logits > (threshold + offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    outer = (logits > (threshold - offset)).sum(-1, dtype=torch.int16).sum(-1, dtype=torch.int32)
    return inner / outer


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, 4) (x0, y0, x1, y1) inclusive bounds of (N, H, W) bool masks; an empty mask gives zeros."""
    if len(masks) == 0:
        return torch.zeros((0, 4), dtype=torch.int64)
    h, w = masks.shape[-2:]
    rows, cols = masks.any(2), masks.any(1)
    ys = torch.arange(h, device=masks.device)[None]
    xs = torch.arange(w, device=masks.device)[None]
    bottom = (rows * ys).amax(1)
    top = torch.where(rows, ys, h).amin(1)
    right = (cols * xs).amax(1)
    left = torch.where(cols, xs, w).amin(1)
    boxes = torch.stack([left, top, right, bottom], 1)
    empty = (right < left) | (bottom < top)
    return boxes * (~empty)[:, None]


def _input_points(transform, points_xy: np.ndarray, geometry) -> torch.Tensor:
    """Grid points (x, y, original pixels) in the model's input frame: float64 for SAM's frame, as ``SamPredictor``
    computes them (``ResizeLongestSide.apply_coords`` in numpy), so that the encodings are the official ones."""
    if isinstance(transform, SamTransform):
        (h, w), (new_h, new_w) = geometry.original_size, geometry.resized_size
        xy = points_xy.astype(np.float64).copy()
        xy[:, 0] *= new_w / w
        xy[:, 1] *= new_h / h
        return torch.as_tensor(xy)
    return torch.as_tensor(transform.points_to_input(points_xy[:, ::-1], geometry), dtype=torch.float64)


def _decode(predictor, embedding: ImageEmbedding, sparse: torch.Tensor, dense: torch.Tensor, decoder: str,
            keep) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(kept low-res logits (K, 256, 256), IoU estimates (B, M), kept flat indices (K,), masks per point M)."""
    model = predictor.model
    if predictor.head == "hq":
        from ..models.hq_decoder import decode_hq

        fast = predictor._fast_decoder if decoder == "fast" else None
        out = decode_hq(model.mask_decoder, embedding.features, embedding.extras["hq_features"], predictor._image_pe,
                        sparse, dense, multimask_output=True, hq_token_only=predictor.hq_token_only, fast=fast)
        iou = out.iou.reshape(len(out.logits), -1)
        flat = torch.nonzero(keep(iou).flatten())[:, 0]
        return out.logits[flat, 0], iou, flat, 1
    if decoder == "fast" and predictor._fast_decoder is not None:
        return (*decode_multimask_fast(predictor._fast_decoder, embedding.features, sparse, dense, keep), 3)
    return (*decode_multimask_reference(model.mask_decoder, embedding.features, predictor._image_pe, sparse, dense,
                                        keep), 3)


def check_supported(predictor) -> None:
    """Raise a ValueError naming the reason when ``predictor`` has no point-grid automatic mode."""
    if getattr(predictor, "is_fallback", False):
        raise ValueError("the fallback has its own automatic mode: use segment_everything()")
    if getattr(predictor, "head", "sam") == "pa":
        raise ValueError(f"{predictor.display_name} decodes one prompt set at a time; its automatic mode is not "
                         "supported (use SAM ViT-L, the same encoder, or HQ-SAM)")
    from .sam_predictor import SamFamilyPredictor

    if not isinstance(predictor, SamFamilyPredictor):
        raise ValueError(f"{getattr(predictor, 'display_name', predictor)} has no point-grid automatic mode (SAM, "
                         "FocSAM, HQ-SAM and the fallback have one)")


def generate_masks(
    predictor,
    embedding: ImageEmbedding,
    options: AutomaticOptions = AutomaticOptions(),
    *,
    cancel: CancelToken | None = None,
    progress: Progress | None = None,
) -> AutomaticMasks:
    """Every mask of one embedded image (see the module docstring); ``progress(done, total)`` after each batch."""
    check_supported(predictor)
    geometry = embedding.geometry
    h, w = geometry.original_size
    points_xy = point_grid(options.points_per_side) * np.array([w, h])
    total = len(points_xy)
    kept_logits, kept_scores, kept_points = [], [], []
    stats = {"points": total, "decoded": 0, "iou_kept": 0, "stable_kept": 0}
    threshold = options.pred_iou_thresh

    def wanted(iou: torch.Tensor) -> torch.Tensor:
        return iou > threshold if threshold > 0 else torch.ones_like(iou, dtype=torch.bool)

    with torch.inference_mode():
        for start in range(0, total, options.points_per_batch):
            check_cancel(cancel)
            batch_xy = points_xy[start:start + options.points_per_batch]
            coords = _input_points(predictor.transform, batch_xy, geometry).to(predictor.device)[:, None, :]
            labels = torch.ones((len(batch_xy), 1), dtype=torch.int, device=predictor.device)
            sparse, dense = encode_prompts(predictor.model.prompt_encoder, coords, labels)
            logits, iou, keep, per_point = _decode(predictor, embedding, sparse, dense, options.decoder, wanted)
            stats["decoded"] += iou.numel()
            stats["iou_kept"] += len(keep)
            if len(keep):
                full = predictor.transform.logits_to_original(logits[:, None], geometry)[:, 0]
                stable = stability_score(full, options.stability_score_offset)
                good = (stable >= options.stability_score_thresh if options.stability_score_thresh > 0
                        else torch.ones_like(stable, dtype=torch.bool))
                good_idx = torch.nonzero(good)[:, 0]
                stats["stable_kept"] += len(good_idx)
                if len(good_idx):
                    kept_logits.append(((full[good_idx] > 0).cpu(), stable[good_idx].cpu()))
                    kept_scores.append(iou.flatten()[keep[good_idx]].float().cpu())
                    point_rows = (start + keep[good_idx].cpu() // per_point).numpy()
                    kept_points.append(points_xy[point_rows][:, ::-1])
            if progress is not None:
                progress(min(start + options.points_per_batch, total), total)
    check_cancel(cancel)
    if not kept_logits:
        empty = np.zeros((0, h, w), bool)
        return AutomaticMasks(empty, np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, 4), np.int64),
                              np.zeros((0, 2)), stats)
    masks = torch.cat([m for m, _ in kept_logits])
    stability = torch.cat([s for _, s in kept_logits])
    scores = torch.cat(kept_scores)
    points = np.concatenate(kept_points)
    boxes = mask_boxes(masks)
    order = nms(boxes.float(), scores, options.box_nms_thresh)
    if options.min_area > 0:
        areas = masks[order].flatten(1).sum(1)
        order = order[areas >= options.min_area]
    stats["kept"] = len(order)
    xyxy = boxes[order].numpy()
    return AutomaticMasks(
        masks=masks[order].numpy(), scores=scores[order].numpy(), stability=stability[order].numpy(),
        boxes=xyxy[:, [1, 0, 3, 2]], points=points[order.numpy()], stats=stats,
    )
