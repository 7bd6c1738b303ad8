"""Propagation of one object through z: from its mask on annotated slices to the neighbouring slices.

On each next slice the previous slice's mask becomes the prompt (see :data:`STRATEGIES`): its deepest interior point
as a positive click (``point``), plus negative clicks just outside it (``points``), its bounding box (``box``, SAM
only), its raw low-resolution logits as SAM's mask input (``mask``, SAM family only), or a combination such as
``box+point``. A chain stops when the object disappears: the new mask is empty, or its IoU with the previous slice's
mask is below ``iou_threshold``, or its contrast with its surroundings falls below ``min_contrast`` times its contrast
on the annotated slice (a prompt made from the previous mask tends to find *something* of that shape even past the
object's end: this catches it); it also stops at a slice where the object is marked absent (negative clicks only)
and at the stack's end. Between two annotated slices each is propagated towards the other and they meet half-way.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..engine.manager import ModelManager
from ..engine.types import CancelToken, ObjectState, Prompts, check_cancel
from .common import ModelLike, local_manager, normalise_limits, prepare
from .reader import StackReader, open_stack
from .worker import thread_count_invariant

__all__ = [
    "AUTO_STRATEGY",
    "STRATEGIES",
    "Crop",
    "PropagationResult",
    "contrast",
    "prompts_from_mask",
    "propagate_object",
]

#: the prompt parts a strategy may combine with "+"
STRATEGIES = ("point", "points", "box", "mask")
#: what "auto" means. The fallback: the best measured on the stardist 3D fixture (benchmarks/bench_stack.py
#: --strategies; mean 3D IoU over its 51 nuclei from their middle slice: box+points 0.69, points 0.47, box+point 0.44,
#: point 0.41, the middle slice alone 0.20). SAM: its usual box plus centre click; click-only models (FocSAM): one
#: centre click. SAM and FocSAM could not be measured here (no real weights): check them with --strategies.
AUTO_STRATEGY = {"fallback": "box+points", "boxes": "box+point", "clicks": "point"}
DEFAULT_IOU_THRESHOLD = 0.3
#: measured on the stardist 3D fixture with the fallback: 0 -> 5.5 slices too many per nucleus on average, 0.5 -> 0.2
DEFAULT_MIN_CONTRAST = 0.5


@dataclass(frozen=True)
class Crop:
    """A mask kept as its bounding-box crop (objects are small; a 1,000-slice stack of full masks would not be)."""

    y0: int
    x0: int
    data: np.ndarray  # bool

    @classmethod
    def of(cls, mask: np.ndarray) -> Crop:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if not len(rows):
            return cls(0, 0, np.zeros((0, 0), bool))
        return cls(int(rows[0]), int(cols[0]), mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].copy())

    def full(self, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, bool)
        h, w = self.data.shape
        out[self.y0:self.y0 + h, self.x0:self.x0 + w] = self.data
        return out

    @property
    def area(self) -> int:
        return int(self.data.sum())


@dataclass
class PropagationResult:
    """The object's masks by z (annotated slices included), IoU with the previous slice, and why chains stopped."""

    image_shape: tuple[int, int]
    masks: dict[int, Crop] = field(default_factory=dict)
    iou_with_previous: dict[int, float] = field(default_factory=dict)
    stops: list[str] = field(default_factory=list)

    @property
    def slices(self) -> list[int]:
        return sorted(self.masks)

    def mask(self, z: int) -> np.ndarray:
        """The (H, W) mask on slice z (all False where the object was not found)."""
        crop = self.masks.get(int(z))
        return np.zeros(self.image_shape, bool) if crop is None else crop.full(self.image_shape)

    def volume(self, n_z: int) -> np.ndarray:
        """All masks as one (Z, H, W) bool array (for small stacks and tests)."""
        out = np.zeros((n_z, *self.image_shape), bool)
        for z, crop in self.masks.items():
            out[z] = crop.full(self.image_shape)
        return out


def resolve_strategy(strategy: str, manager: ModelManager) -> frozenset[str]:
    """The parts of ``strategy`` ("auto" or e.g. "box+point"), checked against what the model accepts."""
    predictor = manager.predictor
    if strategy == "auto":
        kind = "fallback" if predictor.is_fallback else "boxes" if predictor.supports_boxes else "clicks"
        strategy = AUTO_STRATEGY[kind]
    parts = frozenset(p.strip() for p in strategy.split("+") if p.strip())
    unknown = parts - set(STRATEGIES)
    if not parts or unknown:
        raise ValueError(f"unknown propagation strategy {strategy!r}: combine {', '.join(STRATEGIES)} with '+'")
    if "box" in parts and not predictor.supports_boxes:
        raise ValueError(f"strategy {strategy!r}: {predictor.display_name} takes clicks only, not boxes")
    if "mask" in parts and predictor.is_fallback:
        raise ValueError(f"strategy {strategy!r}: {predictor.display_name} takes no mask input")
    if parts == {"mask"}:
        raise ValueError("strategy 'mask' needs a point or a box with it (e.g. 'box+mask')")
    return parts


def deepest_point(mask: np.ndarray) -> tuple[float, float]:
    """The interior point farthest from the mask's border; among ties, the one nearest to the ties' centre."""
    distance = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(distance >= distance.max())
    i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return float(ys[i]), float(xs[i])


def _negatives_around(mask: np.ndarray, centre: tuple[float, float], gap: int,
                      rays: int = 8) -> list[tuple[float, float]]:
    """Points just outside ``mask`` grown by ``gap`` pixels: the first such pixel on each of ``rays`` rays from
    ``centre``."""
    h, w = mask.shape
    grown = ndi.binary_dilation(mask, iterations=gap)
    out = []
    for angle in np.linspace(0.0, 2 * np.pi, rays, endpoint=False):
        dy, dx = np.sin(angle), np.cos(angle)
        for t in np.arange(0.0, float(h + w), 0.5):
            y, x = int(round(centre[0] + t * dy)), int(round(centre[1] + t * dx))
            if not (0 <= y < h and 0 <= x < w):
                break
            if not grown[y, x]:
                out.append((float(y), float(x)))
                break
    return out


def prompts_from_mask(mask: np.ndarray, parts: frozenset[str]) -> Prompts:
    """The prompts a strategy derives from the previous slice's (non-empty) mask.

    ``point``: a positive click at the mask's deepest interior point. ``points``: that click plus negative clicks
    on 8 rays from it, just outside the mask grown by max(1, 10 % of its size) pixels (the object may grow that much
    from one slice to the next). ``box``: the mask's bounding box grown by max(2, 20 % of its size) pixels. The
    margins were chosen by measuring on the stardist 3D fixture (``benchmarks/bench_stack.py --strategies``).
    """
    h, w = mask.shape
    points: list[tuple[float, float]] = []
    labels: list[int] = []
    box: np.ndarray | None = None
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
    size = max(y1 - y0 + 1, x1 - x0 + 1)
    if parts & {"point", "points"}:
        points.append(deepest_point(mask))
        labels.append(1)
    if "points" in parts:
        negatives = _negatives_around(mask, points[0], max(1, int(round(0.1 * size))))
        points += negatives
        labels += [0] * len(negatives)
    if "box" in parts:
        pad = max(2, int(round(0.2 * size)))
        box = np.array([max(0, y0 - pad), max(0, x0 - pad), min(h - 1, y1 + pad), min(w - 1, x1 + pad)])
    return Prompts(np.asarray(points, float).reshape(-1, 2), np.asarray(labels, np.int64), box)


def contrast(image: np.ndarray, mask: np.ndarray, ring: int = 3) -> float:
    """Distance between the mean colour inside ``mask`` and in a ``ring``-pixel band around it (0 if one is empty)."""
    band = ndi.binary_dilation(mask, iterations=ring) & ~mask
    if not band.any() or not mask.any():
        return 0.0
    pixels = image.reshape(*mask.shape, -1).astype(np.float64)
    return float(np.linalg.norm(pixels[mask].mean(0) - pixels[band].mean(0)))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


class _Context:
    def __init__(self, reader: StackReader, manager: ModelManager, prefix: tuple[int, ...],
                 limits: tuple[float, float] | None, parts: frozenset[str], threshold: float, min_contrast: float,
                 cancel: CancelToken | None, tick: Callable[[], None]) -> None:
        self.reader, self.manager, self.prefix, self.limits = reader, manager, prefix, limits
        self.parts, self.threshold, self.min_contrast = parts, threshold, min_contrast
        self.cancel, self.tick = cancel, tick
        self.n_z = reader.leading_shape[-1]

    def image(self, z: int) -> np.ndarray:
        return prepare(self.reader, self.reader.flat((*self.prefix, z)), self.limits)

    def predict(self, image: np.ndarray, prompts: Prompts, state: ObjectState | None) -> tuple[np.ndarray, ObjectState]:
        embedding = self.manager.embed(image, cancel=self.cancel)
        prediction = self.manager.predictor.predict(embedding, prompts, state, cancel=self.cancel)
        return prediction.mask, prediction.state


def _chain(ctx: _Context, z0: int, mask0: np.ndarray, step: int, stop: int, absent: set[int],
           result: PropagationResult) -> None:
    """Propagate from slice z0 (mask0) in direction ``step`` up to, not including, ``stop``."""
    previous, state = mask0, None
    z = z0 + step
    if z == stop:
        return
    reference = contrast(ctx.image(z0), mask0) if ctx.min_contrast > 0 else 0.0
    while z != stop:
        check_cancel(ctx.cancel)
        if z in absent:
            result.stops.append(f"z={z}: the object is marked absent (negative clicks only)")
            return
        prompts = prompts_from_mask(previous, ctx.parts)
        mask_state = ObjectState(logits=state.logits) if "mask" in ctx.parts and state is not None else None
        image = ctx.image(z)
        mask, state = ctx.predict(image, prompts, mask_state)
        ctx.tick()
        if not mask.any():
            result.stops.append(f"z={z}: the object disappeared (empty mask)")
            return
        overlap = iou(mask, previous)
        if overlap < ctx.threshold:
            result.stops.append(f"z={z}: IoU {overlap:.2f} with z={z - step} is below {ctx.threshold:g}")
            return
        if ctx.min_contrast > 0 and contrast(image, mask) < ctx.min_contrast * reference:
            result.stops.append(f"z={z}: contrast {contrast(image, mask):.1f} is below {ctx.min_contrast:g} x "
                                f"{reference:.1f} (z={z0})")
            return
        result.masks[z] = Crop.of(mask)
        result.iou_with_previous[z] = overlap
        previous = mask
        z += step
    where = "the stack's end" if stop in (-1, ctx.n_z) else "its limit (half-way or max_distance)"
    result.stops.append(f"z={stop - step}: reached {where}")


@thread_count_invariant()
def propagate_object(
    stack: Any,
    keyframes: Mapping[int, np.ndarray],
    model: ModelLike = "fallback",
    *,
    absent: Iterable[int] = (),
    prefix: Sequence[int] = (),
    strategy: str = "auto",
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    min_contrast: float = DEFAULT_MIN_CONTRAST,
    max_distance: int | None = None,
    extend: bool = True,
    rgb: bool | None = None,
    contrast_limits: Sequence[float] | None = None,
    key: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: CancelToken | None = None,
) -> PropagationResult:
    """Propagate one object through z from its masks on annotated slices (``keyframes``: z → (H, W) bool mask).

    ``absent``: slices where the object is marked absent (negative clicks only); propagation never crosses them.
    ``prefix``: the leading index before z for stacks with more leading axes, e.g. ``(t,)`` for (T, Z, Y, X).
    ``iou_threshold``, ``min_contrast`` (0 disables it): the stop rules of the module docstring.
    ``max_distance``: at most this many slices away from an annotated slice. ``extend=False`` only fills the slices
    between annotated slices (nothing before the first or after the last). ``model``: a name, ModelConfig or a
    loaded ModelManager (with a precomputed store attached, its embeddings are read lazily from the store).
    ``progress(done, total)`` counts predicted slices against the most that could be; ``cancel`` is checked
    before every slice.
    """
    reader = open_stack(stack, rgb=rgb, key=key)
    try:
        prefix = tuple(int(i) for i in prefix)
        if len(prefix) != len(reader.leading_shape) - 1:
            raise ValueError(f"the stack's leading axes are {reader.leading_shape}: give a prefix of "
                             f"{len(reader.leading_shape) - 1} indices before z (got {prefix})")
        n_z = reader.leading_shape[-1]
        manager = local_manager(model)
        absent_set = {int(z) for z in absent}
        frames = {int(z): np.asarray(m, bool) for z, m in keyframes.items() if np.asarray(m).any()}
        for z, mask in frames.items():
            if not 0 <= z < n_z or mask.shape != reader.image_shape:
                raise ValueError(f"keyframe z={z}: need 0 <= z < {n_z} and a {reader.image_shape} mask")
            if z in absent_set:
                raise ValueError(f"slice z={z} is both annotated and marked absent")
        result = PropagationResult(reader.image_shape)
        result.masks.update({z: Crop.of(m) for z, m in frames.items()})
        if not frames:
            result.stops.append("no annotated slice with a non-empty mask")
            return result
        counter = {"done": 0}
        total = n_z - len(frames)

        def tick() -> None:
            counter["done"] += 1
            if progress is not None:
                progress(counter["done"], total)

        ctx = _Context(reader, manager, prefix, normalise_limits(contrast_limits),
                       resolve_strategy(strategy, manager), float(iou_threshold), float(min_contrast), cancel, tick)
        zs = sorted(frames)
        reach = n_z if max_distance is None else int(max_distance)
        if extend:
            _chain(ctx, zs[0], frames[zs[0]], -1, max(-1, zs[0] - reach - 1), absent_set, result)
        for a, b in itertools.pairwise(zs):
            middle = (a + b) // 2
            _chain(ctx, a, frames[a], +1, min(middle + 1, a + reach + 1), absent_set, result)
            _chain(ctx, b, frames[b], -1, max(middle, b - reach - 1), absent_set, result)
        if extend:
            _chain(ctx, zs[-1], frames[zs[-1]], +1, min(n_z, zs[-1] + reach + 1), absent_set, result)
        return result
    finally:
        if reader is not stack:
            reader.close()
