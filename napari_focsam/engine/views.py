"""Views: a rectangle of a large image, embedded on its own at the model's input resolution.

A :class:`View` is a half-open rectangle ``region = (y0, x0, y1, x1)`` of a full image of ``image_shape`` (H, W).
Only that rectangle is read (:meth:`View.read`: a slice of a numpy, zarr or dask array, so a lazy image is never read
whole) and embedded as an image of its own (:func:`embed_view`), so a 1024² view of a 20,000² image reaches SAM at
full resolution instead of being shrunk 20 times. The coordinate transforms are a shift by the view's offset:

* :meth:`View.prompts_to_view`: prompts in full-image pixels (clicks, box, scribbles, a region mask of the full
  image) → the same prompts in the view's pixels; anything outside the view is refused with a message;
* :meth:`View.paste`: a mask of the view → a :class:`ViewMask`, the mask plus the region of the full image it
  covers, which writes itself into a full-size array (numpy, zarr) in that region only (:meth:`ViewMask.write`).

A view's embedding is cached like any embedding: its key is the hash of the pixels the model sees plus the model's
fingerprint plus the view's rectangle and the full image's shape (:func:`view_key`), so two views never share a key
and a view of a changed image is recomputed. ``core`` optionally marks the part of the view that a tiling assigns
to it (the tile without its halo, see :mod:`.tiles`); for a free view it is the whole region.

:class:`ViewObject` runs one object on one view: an :class:`~napari_focsam.engine.session.ObjectSession` on the
view's embedding that takes and returns full-image coordinates. Tiles (:mod:`.tiles`) and zoom-in refinement are
built on these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .image import to_model_rgb
from .types import CancelToken, ImageEmbedding, Prompts, Scribble

if TYPE_CHECKING:
    from .manager import ModelManager
    from .predictor import Predictor
    from .session import ObjectSession

Region = tuple[int, int, int, int]  #: (y0, x0, y1, x1), half-open, in full-image pixels


def input_side(predictor: Predictor) -> int:
    """The side of the square a predictor works at: SAM's and FocSAM's input size (1024), SegNext's, or the
    fallback's working resolution (``max_side``); 1024 when the predictor says nothing."""
    model = getattr(predictor, "model", None)
    size = getattr(model, "input_size", None)
    if size is None:
        size = getattr(getattr(predictor, "cfg", None), "img_size", None)
    if size is None:
        size = getattr(predictor, "max_side", None)
    return int(size) if size else 1024


def _region(value: Sequence[int], name: str) -> Region:
    values = tuple(int(v) for v in value)
    if len(values) != 4 or any(v != w for v, w in zip(values, value)):
        raise ValueError(f"a view's {name} is four integers (y0, x0, y1, x1), got {tuple(value)!r}")
    return values


@dataclass(frozen=True)
class View:
    """A rectangle ``region`` (y0, x0, y1, x1; half-open) of an image of ``image_shape`` (H, W); see the module."""

    image_shape: tuple[int, int]
    region: Region
    core: Region | None = None

    def __post_init__(self) -> None:
        h, w = (int(v) for v in self.image_shape)
        object.__setattr__(self, "image_shape", (h, w))
        if h < 1 or w < 1:
            raise ValueError(f"the image of a view must have pixels, got shape {self.image_shape}")
        y0, x0, y1, x1 = region = _region(self.region, "region")
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise ValueError(f"the view {region} is not a non-empty rectangle inside the {h} x {w} image")
        object.__setattr__(self, "region", region)
        core = region if self.core is None else _region(self.core, "core")
        if not (y0 <= core[0] < core[2] <= y1 and x0 <= core[1] < core[3] <= x1):
            raise ValueError(f"the view's core {core} is not a non-empty rectangle inside its region {region}")
        object.__setattr__(self, "core", core)

    # ------------------------------------------------------------------ geometry
    @property
    def offset(self) -> tuple[int, int]:
        """(y0, x0): full-image pixel = view pixel + offset."""
        return self.region[0], self.region[1]

    @property
    def shape(self) -> tuple[int, int]:
        y0, x0, y1, x1 = self.region
        return y1 - y0, x1 - x0

    @property
    def slices(self) -> tuple[slice, slice]:
        y0, x0, y1, x1 = self.region
        return slice(y0, y1), slice(x0, x1)

    @property
    def tag(self) -> str:
        """The view's part of an embedding key: its rectangle and the full image's shape."""
        return "view={},{},{},{}/{}x{}".format(*self.region, *self.image_shape)

    def contains(self, y: float, x: float, *, core: bool = False) -> bool:
        """Whether the point (y, x) (full-image pixels, centres at integers) lies in the region (or the core)."""
        y0, x0, y1, x1 = self.core if core and self.core is not None else self.region
        return y0 - 0.5 <= y < y1 - 0.5 and x0 - 0.5 <= x < x1 - 0.5

    # ------------------------------------------------------------------ reading
    def read(self, image: Any, *, rgb: bool = False, channel_axis: int | None = None) -> np.ndarray:
        """The view's pixels of ``image`` (numpy, zarr, dask, anything sliced like numpy) as a numpy array; only
        the region is read. The image's spatial axes are its last two (``rgb``: the two before the colour axis;
        ``channel_axis``: the two that are not the channel axis of a 3-axis image)."""
        shape = tuple(int(n) for n in image.shape)
        if channel_axis is not None:
            if len(shape) != 3:
                raise ValueError(f"an image with a channel axis has 3 axes, got shape {shape}")
            axis = channel_axis % 3
            spatial = tuple(a for a in range(3) if a != axis)
        else:
            n = 3 if rgb else 2
            if len(shape) != n:
                raise ValueError(f"a view reads a 2D {'RGB ' if rgb else ''}image, got shape {shape}; take one "
                                 "slice of a stack first")
            spatial = (0, 1)
        if tuple(shape[a] for a in spatial) != self.image_shape:
            raise ValueError(f"the view belongs to a {self.image_shape} image, this one is "
                             f"{tuple(shape[a] for a in spatial)}")
        index: list[slice] = [slice(None)] * len(shape)
        index[spatial[0]], index[spatial[1]] = self.slices
        crop = image[tuple(index)]
        return np.asarray(crop.compute() if hasattr(crop, "compute") else crop)

    # ------------------------------------------------------------------ prompts in, masks out
    def points_to_view(self, points: Any, what: str = "click") -> np.ndarray:
        """(N, 2) full-image (y, x) → view (y, x); a point outside the view is refused."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        for y, x in points:
            if not self.contains(y, x):
                raise ValueError(f"the {what} at ({y:g}, {x:g}) is outside the view {self.region} of the image")
        return points - np.asarray(self.offset, np.float64)

    def prompts_to_view(self, prompts: Prompts) -> Prompts:
        """``prompts`` in full-image pixels → the same prompts in the view's pixels (see the module).

        A region mask is either the full image's (H, W) mask, cropped here (none of it may lie outside the view),
        or already the view's own shape when the full image is larger."""
        box = None
        if prompts.box is not None:
            corners = self.points_to_view(np.asarray(prompts.box).reshape(2, 2), "box corner")
            box = corners.reshape(4)
        mask = prompts.mask
        if mask is not None:
            mask = self.mask_to_view(mask)
        scribbles = tuple(Scribble(self.points_to_view(s.points, "scribble point"), s.positive)
                          for s in prompts.scribbles)
        return Prompts(self.points_to_view(prompts.points), prompts.labels, box, mask, scribbles)

    def mask_to_view(self, mask: np.ndarray) -> np.ndarray:
        """A full-image region mask cropped to the view (refused when some of it lies outside)."""
        mask = np.asarray(mask)
        if mask.shape == self.shape and self.shape != self.image_shape:
            return mask.astype(bool, copy=False)
        if mask.shape != self.image_shape:
            raise ValueError(f"the mask prompt is {mask.shape}, the image {self.image_shape}")
        inside = mask[self.slices].astype(bool)
        if int(np.count_nonzero(mask)) != int(np.count_nonzero(inside)):
            raise ValueError(f"the region prompt reaches outside the view {self.region}")
        return inside

    def paste(self, mask: np.ndarray) -> ViewMask:
        """A (h, w) mask of this view as a :class:`ViewMask` of the full image."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.shape:
            raise ValueError(f"a mask of this view is {self.shape}, got {mask.shape}")
        return ViewMask(self.image_shape, self.region, mask)


@dataclass(frozen=True, eq=False)
class ViewMask:
    """A mask that covers ``region`` (y0, x0, y1, x1) of an image of ``image_shape``; False everywhere else."""

    image_shape: tuple[int, int]
    region: Region
    mask: np.ndarray

    @property
    def slices(self) -> tuple[slice, slice]:
        y0, x0, y1, x1 = self.region
        return slice(y0, y1), slice(x0, x1)

    def full(self) -> np.ndarray:
        """The (H, W) bool mask of the full image (allocates H x W bytes: for small images and tests)."""
        out = np.zeros(self.image_shape, bool)
        out[self.slices] = self.mask
        return out

    def write(self, target: Any, value: int, *, clear: bool = True) -> None:
        """Write the mask into ``target`` (a full-size label array: numpy, zarr) with ``value``, inside
        :attr:`region` only: its pixels become ``value`` and, with ``clear``, its other pixels that held ``value``
        become 0 (the object shrank). Nothing outside the region is read or written."""
        if tuple(target.shape[-2:]) != self.image_shape:
            raise ValueError(f"the labels are {tuple(target.shape)}, the mask's image {self.image_shape}")
        block = np.array(target[self.slices])
        if clear:
            block[(block == value) & ~self.mask] = 0
        block[self.mask] = value
        target[self.slices] = block


def view_around(box: Sequence[float] | np.ndarray, image_shape: tuple[int, int], size: int, *,
                margin: float = 0.0) -> View:
    """A square view of side ``size`` (clipped to the image) centred on ``box`` (y0, x0, y1, x1; inclusive pixels)
    and shifted to lie inside the image; when the box plus ``margin`` pixels on each side is larger than ``size``,
    the view covers it instead (and is then shrunk to the model's input: no longer at full resolution)."""
    h, w = (int(v) for v in image_shape)
    y0, x0, y1, x1 = (float(v) for v in box)
    if size < 1:
        raise ValueError(f"a view's size must be at least 1 pixel, got {size}")

    def span(lo: float, hi: float, n: int) -> tuple[int, int]:
        lo, hi = max(0.0, min(lo, hi) - margin), min(n - 1.0, max(lo, hi) + margin)
        side = min(n, max(int(size), int(np.ceil(hi - lo)) + 1))
        start = int(np.floor((lo + hi) / 2 - (side - 1) / 2 + 0.5))
        start = min(max(0, start), n - side)
        return start, start + side

    (top, bottom), (left, right) = span(y0, y1, h), span(x0, x1, w)
    return View((h, w), (top, left, bottom, right))


def view_key(manager: ModelManager, prepared: np.ndarray, view: View, *, extra: str = "") -> str:
    """The cache key of a view's prepared (h, w, 3) uint8 pixels with the manager's model; ``extra`` names what
    else made those pixels (a channel mix), so that it is part of the key too."""
    from .signature import data_signature, embedding_key

    tag = f"{manager.predictor.fingerprint}|{view.tag}" + (f"|{extra}" if extra else "")
    return embedding_key(data_signature(prepared), tag)


def prepare_view(image: Any, view: View, *, rgb: bool | None = None, contrast_limits: Sequence[float] | None = None,
                 channel_axis: int | None = None, mix: Any = None) -> np.ndarray:
    """The (h, w, 3) uint8 image the model sees of the view: the region read, then as :func:`~.image.to_model_rgb`
    (gray or RGB, ``contrast_limits``) or :func:`~.channels.mix_channels` (``channel_axis`` with ``mix``) make it.

    Without contrast limits a non-8-bit view is stretched between its *own* percentiles; pass the full image's
    limits (napari's) so that every view of it looks the same to the model."""
    if channel_axis is not None:
        from .channels import mix_channels

        crop = view.read(image, channel_axis=channel_axis)
        return mix_channels(crop, mix, channel_axis=channel_axis)
    if rgb is None:
        rgb = len(image.shape) == 3 and image.shape[-1] in (3, 4)
    return to_model_rgb(view.read(image, rgb=rgb), rgb=rgb, contrast_limits=contrast_limits)


def embed_view(manager: ModelManager, image: Any, view: View, *, cancel: CancelToken | None = None,
               prepare: Callable[[Any, View], np.ndarray] | None = None, **image_kwargs: Any) -> ImageEmbedding:
    """The embedding of ``view`` of ``image`` with the manager's model, from its cache (memory, store) or computed
    and cached. Only the view's region of ``image`` is read. ``image_kwargs`` go to :func:`prepare_view`
    (``rgb``, ``contrast_limits``, ``channel_axis``, ``mix``); ``prepare(image, view)`` replaces it."""
    prepared = prepare(image, view) if prepare is not None else prepare_view(image, view, **image_kwargs)
    return manager.embed_prepared(prepared, view_key(manager, prepared, view), cancel=cancel)


class ViewObject:
    """One object annotated on one view: full-image prompts in, :class:`ViewMask` out.

    ``session`` is the :class:`~napari_focsam.engine.session.ObjectSession` on the view's embedding (its undo,
    redo and history); every method here translates (y, x) from full-image to view pixels first.
    """

    def __init__(self, view: View, session: ObjectSession) -> None:
        if tuple(session.shape) != view.shape:
            raise ValueError(f"the session's image is {session.shape}, the view {view.shape}")
        self.view = view
        self.session = session

    @classmethod
    def open(cls, manager: ModelManager, image: Any, view: View, *, cancel: CancelToken | None = None,
             object_id: int | None = None, **image_kwargs: Any) -> ViewObject:
        """Embed ``view`` of ``image`` (cached) and open an object session on it with the manager."""
        embedding = embed_view(manager, image, view, cancel=cancel, **image_kwargs)
        return cls(view, manager.new_object(embedding, object_id))

    @property
    def mask(self) -> ViewMask:
        return self.view.paste(self.session.mask)

    @property
    def prompts(self) -> Prompts:
        """The object's prompts in full-image pixels (a region mask stays in the view's pixels)."""
        local = self.session.prompts
        offset = np.asarray(self.view.offset, np.float64)
        box = None if local.box is None else (local.box.reshape(2, 2) + offset).reshape(4)
        scribbles = tuple(Scribble(s.points + offset, s.positive) for s in local.scribbles)
        return Prompts(local.points + offset, local.labels, box, local.mask, scribbles)

    def click(self, y: float, x: float, positive: bool = True, *, cancel: CancelToken | None = None) -> ViewMask:
        (vy, vx), = self.view.points_to_view([[y, x]])
        self.session.click(vy, vx, positive, cancel=cancel)
        return self.mask

    def set_box(self, box: Sequence[float], *, cancel: CancelToken | None = None) -> ViewMask:
        corners = self.view.points_to_view(np.asarray(box, np.float64).reshape(2, 2), "box corner")
        self.session.set_box(tuple(corners.reshape(4)), cancel=cancel)
        return self.mask

    def add_scribble(self, points: Any, positive: bool = True, *, cancel: CancelToken | None = None) -> ViewMask:
        self.session.add_scribble(self.view.points_to_view(points, "scribble point"), positive, cancel=cancel)
        return self.mask

    def add_polygon(self, vertices: Any, *, cancel: CancelToken | None = None) -> ViewMask:
        self.session.add_polygon(self.view.points_to_view(vertices, "polygon vertex"), cancel=cancel)
        return self.mask

    def set_mask(self, mask: Any, *, cancel: CancelToken | None = None) -> ViewMask:
        self.session.set_mask(self.view.mask_to_view(mask), cancel=cancel)
        return self.mask

    def sync(self, prompts: Prompts, *, cancel: CancelToken | None = None) -> ViewMask:
        self.session.sync(self.view.prompts_to_view(prompts), cancel=cancel)
        return self.mask

    def undo(self) -> ViewMask:
        self.session.undo()
        return self.mask

    def redo(self) -> ViewMask:
        self.session.redo()
        return self.mask
