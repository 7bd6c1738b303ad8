"""Prompt stability (Stable-SAM's ST) and robust prompts, for every backend.

Stable-SAM (Fan et al., Eq. 1) measures how much a mask depends on the exact prompt, without ground truth: over
``B`` perturbed copies of the prompts with masks ``M_i``, ``ST = (1/B) Σ_i IoU(M_i, ∪_j M_j)``. ST is 1.0 when every
copy gives the same mask and falls towards 0 as the copies disagree.

**Noise model** (:func:`jitter_prompts`), with ``noise`` the relative level ``s`` in (0, 1]:

* a box keeps its centre within ``s`` of its height / width and its height and width within a factor ``1 ± s``
  (independent uniform draws; Stable-SAM's noisy boxes use the same form with ``s = 0.4``), clipped to the image
  and at least one pixel wide;
* a click moves by a vector drawn uniformly from a disk of radius ``s * sqrt(area)`` pixels (at least one pixel),
  ``area`` being the object's current mask area (the image's when the mask is empty), clipped to the image; its
  sign is kept.

The copies are drawn from a generator seeded by ``seed`` and the prompts themselves, so the same prompts always
get the same copies: a replayed object (``ObjectSession.sync``) and a repeated stability call give identical
results.

**What the copies see.** They are decoded on the embedding the object uses now (FocSAM's refined embedding once it
exists; the refiner never runs for a copy) with the mask input of the object's current step (the previous step's
logits), in one batched decoder call for SAM-family models (SAM's own decoder as
:class:`~napari_focsam.models.variant_decoder.VariantDecoder`, which shares the image-side work of the copies and
upscales only the image's part of the frame). ST is computed from the copies' masks in the model's low-resolution
frame (256² for SAM, inside the image's region), which is what the decoder produces; the fallback, which has no
such frame, works at the original resolution.

**Robust prompts.** A robust step decodes the prompts as usual (the refiner runs when it is due) and the ``B``
copies, and keeps the consensus: the mean of the ``B + 1`` logit maps, thresholded at 0 after the model's usual
post-processing. For the fallback, whose "logits" are ±1, that mean is the majority vote. The mean logits are the
step's mask input for the next step, so later clicks refine the consensus.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..models.geometry import as_size
from .predictor import Predictor
from .types import CancelToken, ImageEmbedding, ObjectState, Prediction, Prompts, check_cancel

#: Stable-SAM evaluates ST over B = 20 prompts; 8 keeps the per-click cost near one decoder call's
DEFAULT_COPIES = 8
#: relative noise level of :func:`jitter_prompts`
DEFAULT_NOISE = 0.1


@dataclass(frozen=True)
class Jitter:
    """How prompts are perturbed: ``copies`` (B ≥ 2) copies at relative noise level ``noise`` in (0, 1]."""

    copies: int = DEFAULT_COPIES
    noise: float = DEFAULT_NOISE
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.copies, bool) or int(self.copies) != self.copies or self.copies < 2:
            raise ValueError(f"stability needs at least 2 jittered copies (B >= 2), got {self.copies!r}")
        if not (np.isfinite(self.noise) and 0.0 < self.noise <= 1.0):
            raise ValueError(f"the noise level must be in (0, 1] (a fraction of the object's size), got {self.noise!r}")
        object.__setattr__(self, "copies", int(self.copies))
        object.__setattr__(self, "noise", float(self.noise))


def as_jitter(robust: Jitter | bool | None) -> Jitter | None:
    """``True`` → the default :class:`Jitter`, ``False``/``None`` → None, a :class:`Jitter` as it is."""
    if robust is None or robust is False:
        return None
    if robust is True:
        return Jitter()
    if not isinstance(robust, Jitter):
        raise TypeError(f"robust must be True, False, None or a Jitter, got {robust!r}")
    return robust


@dataclass(frozen=True)
class Stability:
    """The stability of an object's current mask.

    ``score`` is ST in [0, 1]; ``unstable`` is an (H, W) bool map of the pixels where the copies disagree (some
    copies include them, others do not).
    """

    score: float
    unstable: np.ndarray
    jitter: Jitter


@dataclass(frozen=True)
class Variants:
    """The logits of several prompt sets decoded together.

    ``logits`` is (B, 1, h, w) in the backend's mask frame, ``valid`` the (rows, columns) of that frame that cover
    the image, and ``to_original`` maps (N, 1, h, w) maps of that frame to (N, 1, H, W) at the original size.
    """

    logits: torch.Tensor
    valid: tuple[int, int]
    to_original: Callable[[torch.Tensor], torch.Tensor]


def _generator(prompts: Prompts, seed: int) -> np.random.Generator:
    digest = hashlib.sha256()
    digest.update(np.int64(seed).tobytes())
    digest.update(np.ascontiguousarray(prompts.points).tobytes())
    digest.update(np.ascontiguousarray(prompts.labels).tobytes())
    if prompts.box is not None:
        digest.update(np.ascontiguousarray(prompts.box).tobytes())
    return np.random.default_rng(int.from_bytes(digest.digest()[:8], "little"))


def jitter_prompts(prompts: Prompts, shape: tuple[int, int], area: float, jitter: Jitter) -> list[Prompts]:
    """``jitter.copies`` perturbed copies of ``prompts`` inside an image of ``shape`` (see the module docstring).

    ``area`` is the object's size in pixels (its mask area), which scales the click noise.
    """
    if prompts.is_empty:
        raise ValueError("the object has no prompts to jitter")
    h, w = int(shape[0]), int(shape[1])
    if prompts.box is not None:
        y0, x0, y1, x1 = prompts.box
        if y1 <= y0 or x1 <= x0:
            raise ValueError(f"a box of zero area ({y0:g}, {x0:g}, {y1:g}, {x1:g}) cannot be jittered; draw a box "
                             "that spans at least one pixel in both directions")
    rng = _generator(prompts, jitter.seed)
    s = jitter.noise
    radius = max(1.0, s * float(np.sqrt(area if area > 0 else h * w)))
    copies = []
    for _ in range(jitter.copies):
        points = prompts.points
        if len(points):
            angle = rng.uniform(0.0, 2 * np.pi, len(points))
            length = radius * np.sqrt(rng.uniform(0.0, 1.0, len(points)))
            points = points + np.stack([length * np.sin(angle), length * np.cos(angle)], axis=1)
            points = np.clip(points, 0.0, [h - 1, w - 1])
        box = prompts.box
        if box is not None:
            y0, x0, y1, x1 = box
            bh, bw = y1 - y0, x1 - x0
            u = rng.uniform(-1.0, 1.0, 4)
            cy, cx = (y0 + y1) / 2 + u[0] * s * bh, (x0 + x1) / 2 + u[1] * s * bw
            nh, nw = bh * (1 + u[2] * s), bw * (1 + u[3] * s)
            y0, y1 = np.clip([cy - nh / 2, cy + nh / 2], 0.0, h - 1)
            x0, x1 = np.clip([cx - nw / 2, cx + nw / 2], 0.0, w - 1)
            if y1 - y0 < 1:
                y0, y1 = (y0, min(y0 + 1, h - 1)) if y0 + 1 <= h - 1 else (max(y1 - 1, 0.0), y1)
            if x1 - x0 < 1:
                x0, x1 = (x0, min(x0 + 1, w - 1)) if x0 + 1 <= w - 1 else (max(x1 - 1, 0.0), x1)
            box = np.array([y0, x0, y1, x1])
        copies.append(replace(prompts, points=points, box=box))  # regions and scribbles are kept as they are
    return copies


def predict_variants(
    predictor: Predictor,
    embedding: ImageEmbedding,
    variants: Sequence[Prompts],
    state: ObjectState | None,
    *,
    cancel: CancelToken | None = None,
    image_only: bool = False,
) -> Variants:
    """Decode several prompt sets with one object state (never running FocSAM's refiner).

    Backends with a batched path provide ``predict_variants`` themselves; otherwise each set is predicted in turn
    and its mask becomes ±1 logits at the original resolution. ``image_only``: only the logits inside ``valid``
    (and the margin that :attr:`Variants.to_original` reads) are wanted; a backend may leave the rest at 0.
    """
    own = getattr(predictor, "predict_variants", None)
    if own is not None:
        return own(embedding, variants, state, cancel=cancel, image_only=image_only)
    masks = []
    for prompts in variants:
        check_cancel(cancel)
        masks.append(predictor.predict(embedding, prompts, state, cancel=cancel).mask)
    logits = torch.from_numpy(np.stack(masks).astype(np.float32) * 2 - 1)[:, None]
    return Variants(logits, as_size(embedding.geometry.original_size), lambda x: x)


def st_score(masks: np.ndarray | torch.Tensor) -> float:
    """Stable-SAM's ST (Eq. 1) of B masks (B, ...): the mean IoU of each mask with their union (1.0 when every mask
    is empty)."""
    masks = torch.as_tensor(np.asarray(masks) if not isinstance(masks, torch.Tensor) else masks).bool()
    masks = masks.reshape(masks.shape[0], -1)
    n_union = int(masks.any(dim=0).sum())
    return 1.0 if n_union == 0 else float((masks.sum(dim=1).double() / n_union).mean())


def _copy_state(state: ObjectState | None, current: ObjectState | None) -> ObjectState:
    """What the copies decode with: the mask input the current step had, on the embedding the object uses now."""
    features = current.features if current is not None else None
    step = current.step if current is not None else 0
    return ObjectState(logits=None if state is None else state.logits, features=features, step=max(step, 1),
                       extra=None if state is None else state.extra)


def stability(
    predictor: Predictor,
    embedding: ImageEmbedding,
    prompts: Prompts,
    previous: ObjectState | None,
    current: ObjectState | None,
    mask: np.ndarray,
    jitter: Jitter | None = None,
    *,
    cancel: CancelToken | None = None,
) -> Stability:
    """ST of the mask that ``prompts`` gave from ``previous`` (the state before the step) to ``current``."""
    jitter = jitter or Jitter()
    shape = as_size(embedding.geometry.original_size)
    copies = jitter_prompts(prompts, shape, float(np.count_nonzero(mask)), jitter)
    out = predict_variants(predictor, embedding, copies, _copy_state(previous, current), cancel=cancel,
                           image_only=True)
    h, w = out.valid
    score = st_score(out.logits[:, 0, :h, :w] > 0)
    extremes = torch.stack([out.logits.amin(dim=0), out.logits.amax(dim=0)]).float()
    low, high = out.to_original(extremes)[:, 0]
    unstable = ((high > 0) & (low <= 0)).cpu().numpy()
    return Stability(score=score, unstable=unstable, jitter=jitter)


def robust_predict(
    predictor: Predictor,
    embedding: ImageEmbedding,
    prompts: Prompts,
    state: ObjectState | None,
    jitter: Jitter,
    *,
    cancel: CancelToken | None = None,
) -> Prediction:
    """One robust step: the consensus of ``prompts`` and ``jitter.copies`` jittered copies (module docstring)."""
    base = predictor.predict(embedding, prompts, state, cancel=cancel)
    if prompts.is_empty:
        return base
    copies = jitter_prompts(prompts, as_size(embedding.geometry.original_size),
                            float(np.count_nonzero(base.mask)), jitter)
    out = predict_variants(predictor, embedding, copies, _copy_state(state, base.state), cancel=cancel)
    own = base.state.logits
    if own is not None and tuple(own.shape[-2:]) == tuple(out.logits.shape[-2:]):
        mean = (out.logits.sum(dim=0, keepdim=True) + own.to(out.logits.dtype)) / (len(copies) + 1)
        next_state = replace(base.state, logits=mean.to(own.dtype))
    else:
        own_logits = torch.from_numpy(base.mask.astype(np.float32) * 2 - 1)[None, None]
        mean = (out.logits.sum(dim=0, keepdim=True) + own_logits) / (len(copies) + 1)
        next_state = base.state
    check_cancel(cancel)
    mask = (out.to_original(mean.float())[0, 0] > 0).cpu().numpy()
    timings = dict(base.timings)
    return Prediction(mask=np.ascontiguousarray(mask), state=next_state, score=base.score, timings=timings)
