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

from .._cancel import CancelToken, Cancelled, check_cancel  # noqa: F401  (re-exported)
from ..models.geometry import ImageGeometry  # noqa: F401  (re-exported)


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
class Prompts:
    """The prompts of one object: clicks (y, x) with labels 1 = positive / 0 = negative, and an optional box.

    Immutable: every change returns a new instance, so a session's history can share them safely.
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    box: np.ndarray | None = None  # (y0, x0, y1, x1), inclusive pixel coordinates

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

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def is_empty(self) -> bool:
        return len(self.labels) == 0 and self.box is None

    def with_point(self, y: float, x: float, positive: bool = True) -> Prompts:
        return Prompts(
            np.vstack([self.points, [[y, x]]]), np.append(self.labels, int(bool(positive))), self.box
        )

    def with_box(self, box: Any) -> Prompts:
        return Prompts(self.points, self.labels, box)


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
