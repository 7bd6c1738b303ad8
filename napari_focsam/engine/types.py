"""Plain data types shared by the predictors, the sessions, the cache and the callers.

Coordinates are always (row, column) = (y, x) in pixels of the *original* image, as in numpy and napari; a pixel's
centre is at its integer index. The single place where they become the models' (x, y) order is
:mod:`napari_focsam.models.transforms`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from .._cancel import Cancelled, CancelToken, check_cancel  # noqa: F401  (re-exported)
from ..models.geometry import ImageGeometry
from .prompt_shapes import as_mask, as_vertices, fill_polygon


@dataclass(frozen=True, eq=False)
class ImageEmbedding:
    """What a predictor computes once per image (slice) and every click reuses.

    ``features`` is model specific: (1, 256, 64, 64) for SAM and FocSAM, an edge map for the fallback.
    ``extras`` holds a backend's further per-image tensors by name (e.g. HQ-SAM's ``"hq_features"``, PA-SAM's
    ``"pa_guide"``); the cache and the stores keep, move and verify them with ``features`` without knowing what they
    are, and :attr:`nbytes` counts them. Empty for SAM, FocSAM and the fallback.
    ``key`` is the cache key (data signature + model fingerprint + preprocessing); see :mod:`.signature`.
    """

    features: torch.Tensor
    geometry: ImageGeometry
    key: str
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        extras = dict(self.extras or {})
        for name, tensor in extras.items():
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(f"embedding extra {name!r} is a {type(tensor).__name__}, not a tensor")
        object.__setattr__(self, "extras", MappingProxyType(extras))

    @property
    def nbytes(self) -> int:
        tensors = (self.features, *self.extras.values())
        return sum(t.numel() * t.element_size() for t in tensors)

    def to(self, device: torch.device | str) -> ImageEmbedding:
        """This embedding with every tensor on ``device`` (itself when they are all there already)."""
        device = torch.device(device)
        features = self.features.to(device)
        extras = {name: t.to(device) for name, t in self.extras.items()}
        if features is self.features and all(extras[n] is t for n, t in self.extras.items()):
            return self
        return ImageEmbedding(features=features, geometry=self.geometry, key=self.key, extras=extras)


#: what a predictor's ``embed()`` returns: ``(features, geometry)``, or with the backend's per-image extras
EmbedResult = tuple[torch.Tensor, ImageGeometry] | tuple[torch.Tensor, ImageGeometry, dict[str, torch.Tensor]]


def unpack_embedding(result: Any) -> tuple[torch.Tensor, ImageGeometry, dict[str, torch.Tensor]]:
    """A predictor's ``embed()`` result, ``(features, geometry)`` or ``(features, geometry, extras)``, as a triple."""
    if not (isinstance(result, tuple) and len(result) in (2, 3)):
        raise TypeError("embed() must return (features, geometry) or (features, geometry, extras)")
    features, geometry = result[0], result[1]
    extras = dict(result[2]) if len(result) == 3 else {}
    if not isinstance(features, torch.Tensor) or not isinstance(geometry, ImageGeometry):
        raise TypeError(
            f"embed() must return (torch.Tensor, ImageGeometry[, extras]), got "
            f"({type(features).__name__}, {type(geometry).__name__})"
        )
    return features, geometry, extras


@dataclass(frozen=True, eq=False)
class Scribble:
    """A stroke (a polyline of (y, x) points, at least two distinct) that marks object (positive) or background."""

    points: np.ndarray
    positive: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", as_vertices(self.points, "scribble", 2))
        object.__setattr__(self, "positive", bool(self.positive))

    def same(self, other: Scribble) -> bool:
        return self.positive == other.positive and np.array_equal(self.points, other.points)


@dataclass(frozen=True, eq=False)
class Prompts:
    """The prompts of one object: clicks, an optional box, an optional region (mask) and scribbles.

    * ``points`` (y, x) with ``labels`` 1 = positive / 0 = negative, in click order;
    * ``box``: (y0, x0, y1, x1), inclusive pixel coordinates;
    * ``mask``: the object's region prompt, an (H, W) bool array: a user mask, an existing label, or filled polygons
      (several polygons of one object are one region, their union);
    * ``scribbles``: positive or negative strokes, in drawing order.

    Replaying prompts (:meth:`ObjectSession.sync <napari_focsam.engine.session.ObjectSession.sync>`, prompts files)
    applies them in this order, one step each: box, region, scribbles, clicks.

    Immutable: every change returns a new instance, so a session's history can share them safely.
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    box: np.ndarray | None = None  # (y0, x0, y1, x1), inclusive pixel coordinates
    mask: np.ndarray | None = None  # (H, W) bool region prompt
    scribbles: tuple[Scribble, ...] = ()

    def __post_init__(self) -> None:
        points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(points) != len(labels):
            raise ValueError(f"{len(points)} points but {len(labels)} labels")
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise ValueError(f"point labels must be 1 (positive) or 0 (negative), got {np.unique(labels).tolist()}")
        if not np.isfinite(points).all():
            raise ValueError("point coordinates must be finite numbers")
        points.setflags(write=False)
        labels.setflags(write=False)
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "labels", labels)
        if self.box is not None:
            box = np.asarray(self.box, dtype=np.float64).reshape(-1)
            if box.shape != (4,) or not np.isfinite(box).all():
                raise ValueError(f"a box is (y0, x0, y1, x1), got {self.box!r}")
            y0, x0, y1, x1 = box
            box = np.array([min(y0, y1), min(x0, x1), max(y0, y1), max(x0, x1)])
            box.setflags(write=False)
            object.__setattr__(self, "box", box)
        if self.mask is not None and not (isinstance(self.mask, np.ndarray) and self.mask.dtype == bool
                                          and not self.mask.flags.writeable and self.mask.ndim == 2):
            object.__setattr__(self, "mask", as_mask(self.mask))
        scribbles = tuple(s if isinstance(s, Scribble) else Scribble(*s) for s in self.scribbles)
        object.__setattr__(self, "scribbles", scribbles)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def is_empty(self) -> bool:
        return len(self.labels) == 0 and self.box is None and self.mask is None and not self.scribbles

    @property
    def has_object(self) -> bool:
        """Whether anything says where the object is: a positive click or scribble, a box or a region."""
        return (bool((self.labels == 1).any()) or self.box is not None or self.mask is not None
                or any(s.positive for s in self.scribbles))

    def _replace(self, **changes: Any) -> Prompts:
        fields: dict[str, Any] = {"points": self.points, "labels": self.labels, "box": self.box, "mask": self.mask,
                  "scribbles": self.scribbles}
        fields.update(changes)
        return Prompts(**fields)

    def with_point(self, y: float, x: float, positive: bool = True) -> Prompts:
        return self._replace(points=np.vstack([self.points, [[y, x]]]),
                             labels=np.append(self.labels, int(bool(positive))))

    def with_box(self, box: Any) -> Prompts:
        return self._replace(box=box)

    def with_mask(self, mask: Any) -> Prompts:
        """The region prompt replaced by ``mask`` ((H, W), bool or 0/1, not empty)."""
        return self._replace(mask=as_mask(mask, None if self.mask is None else self.mask.shape))

    def with_polygon(self, vertices: Any, shape: tuple[int, int]) -> Prompts:
        """The region grown by a filled polygon (nonzero winding rule, see :mod:`.prompt_shapes`) on an image of
        ``shape`` (H, W)."""
        filled = fill_polygon(vertices, shape)
        if self.mask is not None:
            if self.mask.shape != filled.shape:
                raise ValueError(f"the object's region is {self.mask.shape}, the polygon's image {filled.shape}")
            filled |= self.mask
        return self._replace(mask=as_mask(filled))

    def with_scribble(self, points: Any, positive: bool = True) -> Prompts:
        return self._replace(scribbles=(*self.scribbles, Scribble(points, positive)))


@dataclass(frozen=True, eq=False)
class ObjectState:
    """What one step of an object leaves for the next: immutable, so undo just points at an older one.

    ``logits``: the raw low-resolution logits (1, 1, 256, 256) fed back as SAM's mask input.
    ``features``: FocSAM's refined embedding for this object (``None`` before the refiner ran).
    ``step``: how many steps this object has had (the official pipeline refines at step index 1, the 2nd click).
    ``extra``: anything else a predictor needs (the fallback keeps nothing).
    """

    logits: torch.Tensor | None = None
    features: torch.Tensor | None = None
    step: int = 0
    extra: Any = None


@dataclass(frozen=True, eq=False)
class Prediction:
    """The result of one step: a mask at original resolution plus the state for the next step."""

    mask: np.ndarray  # (H, W) bool
    state: ObjectState
    score: float | None = None  # the model's IoU estimate, when it has one
    timings: dict[str, float] = field(default_factory=dict)  # seconds: decoder, refiner, postprocess, ...
