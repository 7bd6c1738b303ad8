"""Zoom-in refinement: after the first steps of an object, its expanded bounding box is embedded again at the
model's full input resolution and the later prompts are decoded there (the training-free stand-in for SAM-REF's local
refinement and FocalClick's zoom-in).

A :class:`Zoom` is a rectangle of the image (the object's box plus ``expand`` of its side on every side, at least
``min_side`` px) scaled *up* so that its longest side is the model's input side (1024 px for SAM and FocSAM, 512 px
for the fallback, :func:`~.views.input_side`). :class:`ZoomedObject` opens an object session on that zoomed image: its
first step is the coarse mask (as the region prompt, :attr:`~.types.Prompts.mask`, which SAM-family models feed to
the decoder as the mask input) with every click so far; later clicks are decoded there; the result is scaled back
and pasted inside the zoom's rectangle, the coarse mask kept outside it. The session's history gives undo and redo.

What FocSAM's refiner sees: the zoomed session is a new object on the zoomed embedding, so the refiner runs on the
zoomed image (once, at the session's second prompt step), its focus box taken from the zoomed coarse mask; the
whole-image refined embedding is not reused.

When to zoom (:func:`should_zoom`): when the view the object was segmented in was shrunk to reach the model and the
object's box is small in it (its longest side under ``AUTO_FRACTION`` of the view's); ``benchmarks/bench_zoom.py``
measures both conditions (docs/images.md has the figures).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .image import to_model_rgb
from .manager import ModelManager
from .session import ObjectSession
from .types import CancelToken, Prompts

EXPAND = 0.5  #: context around the object's box, as a fraction of its longest side on every side
MIN_SIDE = 24  #: the smallest zoom rectangle (px)
AUTO_FRACTION = 0.125  #: zoom automatically when the object's box is under this fraction of its view's side


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The (y0, x0, y1, x1) inclusive bounding box of a mask's pixels, or None when it has none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def should_zoom(mask: np.ndarray, view_shape: Sequence[int] | None = None, fraction: float = AUTO_FRACTION, *,
                input_side: int | None = None) -> bool:
    """Whether an object is small enough in its view (``view_shape``, default the mask's) to gain from a zoom: its
    box is under ``fraction`` of the view's longest side and, with ``input_side`` (the model's), the view was
    shrunk to reach the model (a view seen at full resolution gained nothing in the benchmark)."""
    box = mask_box(mask)
    view = max(view_shape if view_shape is not None else mask.shape)
    if box is None or (input_side is not None and view <= input_side):
        return False
    side = max(box[2] - box[0] + 1, box[3] - box[1] + 1)
    return side < fraction * view


@dataclass(frozen=True)
class Zoom:
    """A rectangle ``region`` (y0, x0, y1, x1; half-open) of an image of ``image_shape`` seen at ``side`` px."""

    image_shape: tuple[int, int]
    region: tuple[int, int, int, int]
    side: int

    @classmethod
    def around(cls, box: Sequence[float], image_shape: Sequence[int], side: int, *, expand: float = EXPAND,
               min_side: int = MIN_SIDE) -> Zoom:
        """The zoom on ``box`` (inclusive y0, x0, y1, x1) with ``expand`` of its longest side around it."""
        h, w = (int(v) for v in image_shape[:2])
        y0, x0, y1, x1 = (float(v) for v in box)
        extent = max(y1 - y0 + 1, x1 - x0 + 1, 1.0)
        half = max(extent * (0.5 + expand), min_side / 2)
        cy, cx = (y0 + y1) / 2, (x0 + x1) / 2

        def span(c: float, n: int) -> tuple[int, int]:
            lo, hi = int(np.floor(c - half + 0.5)), int(np.ceil(c + half + 0.5))
            if hi - lo >= n:
                return 0, n
            shift = max(0, -lo) - max(0, hi - n)
            return lo + shift, hi + shift

        (top, bottom), (left, right) = span(cy, h), span(cx, w)
        return cls((h, w), (top, left, bottom, right), int(side))

    @property
    def shape(self) -> tuple[int, int]:
        return self.region[2] - self.region[0], self.region[3] - self.region[1]

    @property
    def factor(self) -> float:
        """How many zoomed pixels one image pixel becomes."""
        return self.side / max(self.shape)

    @property
    def zoomed_shape(self) -> tuple[int, int]:
        return tuple(max(1, int(round(n * self.factor))) for n in self.shape)  # type: ignore[return-value]

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.region[0], self.region[2]), slice(self.region[1], self.region[3])

    def contains(self, points: np.ndarray) -> bool:
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        return bool(np.all((pts[:, 0] >= self.region[0] - 0.5) & (pts[:, 0] <= self.region[2] - 0.5)
                           & (pts[:, 1] >= self.region[1] - 0.5) & (pts[:, 1] <= self.region[3] - 0.5)))

    def to_zoom(self, points: np.ndarray) -> np.ndarray:
        """(y, x) image pixels → zoomed pixels (pixel centres map to pixel centres)."""
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        offset = np.array(self.region[:2], np.float64)
        limit = np.array(self.zoomed_shape, np.float64) - 1
        return np.clip((pts - offset + 0.5) * self.factor - 0.5, 0, limit)

    def from_zoom(self, points: np.ndarray) -> np.ndarray:
        """Zoomed pixels → (y, x) image pixels (the inverse of :meth:`to_zoom`)."""
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        return (pts + 0.5) / self.factor - 0.5 + np.array(self.region[:2], np.float64)

    def prepare(self, image: Any, *, rgb: bool = False, contrast_limits: Sequence[float] | None = None) -> np.ndarray:
        """The zoomed (h, w, 3) uint8 image: the region read, converted as the whole image is, resized bilinearly."""
        crop = np.asarray(image[self.slices])
        prepared = to_model_rgb(crop, rgb=rgb, contrast_limits=contrast_limits)
        return _resize(prepared.astype(np.float32), self.zoomed_shape, "bilinear").round().clip(0, 255).astype(
            np.uint8)

    def mask_to_zoom(self, mask: np.ndarray) -> np.ndarray:
        return _resize(mask[self.slices].astype(np.float32)[..., None], self.zoomed_shape, "bilinear")[..., 0] >= 0.5

    def mask_from_zoom(self, zoomed: np.ndarray) -> np.ndarray:
        return _resize(zoomed.astype(np.float32)[..., None], self.shape, "area")[..., 0] >= 0.5

    def paste(self, zoomed: np.ndarray, coarse: np.ndarray) -> np.ndarray:
        """The full mask: ``coarse`` outside the region, the zoomed result scaled back inside it."""
        out = np.array(coarse, dtype=bool, copy=True)
        out[self.slices] = self.mask_from_zoom(zoomed)
        return out


def _resize(array: np.ndarray, shape: tuple[int, int], mode: str) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    out = F.interpolate(tensor, size=shape, mode=mode, **kwargs)
    return out[0].permute(1, 2, 0).numpy()


class ZoomedObject:
    """An object decoded on a :class:`Zoom` (see the module): full-image prompts in, full-image masks out."""

    def __init__(self, zoom: Zoom, session: ObjectSession, coarse: np.ndarray, mask_input: bool = True) -> None:
        self.zoom, self.session, self.coarse = zoom, session, np.asarray(coarse, bool)
        self.mask_input = mask_input
        self.opened_at = 0  # the session's steps when the zoom was opened: undoing past them leaves the zoom

    @classmethod
    def open(cls, manager: ModelManager, image: Any, coarse: np.ndarray, prompts: Prompts, *, rgb: bool = False,
             contrast_limits: Sequence[float] | None = None, expand: float = EXPAND,
             mask_input: bool = True, cancel: CancelToken | None = None,
             object_id: int | None = None) -> ZoomedObject:
        """Zoom on the coarse mask's box (and the clicks), embed the zoomed image (cached) and decode the coarse mask
        with the clicks there. ``contrast_limits``: the whole image's (so the zoom looks like the rest of it);
        ``mask_input`` False decodes the clicks alone there (the coarse mask then only places the zoom)."""
        from .views import input_side

        box = mask_box(coarse)
        points = np.asarray(prompts.points, np.float64).reshape(-1, 2)
        if box is None and not len(points):
            raise ValueError("nothing to zoom on: the object has no mask and no click")
        corners = points if box is None else np.vstack([points, [box[:2], box[2:]]])
        extent = (*corners.min(axis=0), *corners.max(axis=0))
        zoom = Zoom.around(extent, coarse.shape, input_side(manager.predictor), expand=expand)
        prepared = zoom.prepare(image, rgb=rgb, contrast_limits=contrast_limits)
        key = _zoom_key(manager, prepared, zoom)
        embedding = manager.embed_prepared(prepared, key, cancel=cancel)
        obj = cls(zoom, manager.new_object(embedding, object_id), coarse, mask_input)
        obj.sync(prompts, cancel=cancel)
        obj.opened_at = obj.session.n_steps
        return obj

    def local(self, prompts: Prompts) -> Prompts:
        """``prompts`` (image pixels; clicks only) with the coarse mask as the region, in zoomed pixels."""
        mask = self.zoom.mask_to_zoom(self.coarse) if self.mask_input else None
        return Prompts(self.zoom.to_zoom(prompts.points), np.asarray(prompts.labels), mask=mask)

    def sync(self, prompts: Prompts, *, cancel: CancelToken | None = None) -> np.ndarray:
        """Decode the object for ``prompts`` (clicks) on the zoom; the full mask."""
        self.session.sync(self.local(prompts), cancel=cancel)
        return self.mask

    @property
    def mask(self) -> np.ndarray:
        return self.zoom.paste(self.session.mask, self.coarse)

    @property
    def prompts(self) -> Prompts:
        """The clicks of the current step, in image pixels."""
        local = self.session.prompts
        return Prompts(self.zoom.from_zoom(local.points), np.asarray(local.labels))

    def accepts(self, prompts: Prompts) -> bool:
        """Whether ``prompts`` can be decoded on this zoom: clicks only, all inside its rectangle."""
        return (prompts.box is None and prompts.mask is None and not prompts.scribbles and len(prompts.points) > 0
                and self.zoom.contains(prompts.points))

    @property
    def can_undo(self) -> bool:
        """Whether a step made on the zoom after it was opened can be undone."""
        return self.session.can_undo and self.session.n_steps > self.opened_at

    def undo(self) -> np.ndarray:
        self.session.undo()
        return self.mask

    def redo(self) -> np.ndarray:
        self.session.redo()
        return self.mask


def _zoom_key(manager: ModelManager, prepared: np.ndarray, zoom: Zoom) -> str:
    from .signature import data_signature, embedding_key

    tag = f"zoom:{zoom.region}:{zoom.side}"
    return embedding_key(data_signature(prepared), f"{manager.predictor.fingerprint}|{tag}")
