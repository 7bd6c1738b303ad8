"""One object being annotated: its prompts, its step-by-step history, undo and redo.

Every step stores the prompts it saw and the immutable :class:`Prediction` it produced (mask, raw logits, FocSAM's
refined embedding or none, step count). Undo and redo only move a cursor over that history, so they restore the
exact earlier state — the very tensors — without recomputing anything. A new step after an undo drops the redo
branch. Every prompt kind is one step: a click, a box, a polygon (added to the object's region), a scribble, a mask
(replacing the region); a refused prompt (ValueError) changes nothing.

Bounded memory: a session keeps at most ``max_history`` steps (:data:`DEFAULT_MAX_HISTORY`); older ones are dropped
and undo stops at the oldest kept step. Every step carries the whole state the next one needs, so dropping older
steps never changes a later result. :meth:`ObjectSession.compact` (for a committed object) keeps only the current
step — its prompts, its low-resolution logits and FocSAM's refined embedding, its mask packed to bits — so a
re-opened object continues exactly where it was, and undo stops there.

Replaying (:meth:`ObjectSession.sync`): SAM and FocSAM feed each step's logits into the next (and FocSAM refines its
embedding at the 2nd click), so the mask of N clicks is the N-th of N steps; ``sync`` replays only the clicks after
the longest recorded prefix. A stateless predictor (``stateless = True``, the fallback) computes the latest prompts
in one step.

Thread safety: all methods of one session are serialised by its lock (a click waits for a running click on the
same object); different sessions run concurrently. Reading the state (``current``, ``mask``, ``prompts``,
``can_undo``...) never waits: it sees the last completed step, so a GUI never blocks behind a replay. A call
given a :class:`CancelToken` that gets cancelled raises :class:`Cancelled` and leaves the session at the last
completed step.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .predictor import Predictor
from .prompt_shapes import as_mask, check_extent
from .stability import Jitter, Stability, as_jitter, robust_predict, stability
from .types import CancelToken, ImageEmbedding, ObjectState, Prediction, Prompts, Scribble, check_cancel

#: undo steps kept per object (older steps are dropped; the current state stays exact)
DEFAULT_MAX_HISTORY = 50


@dataclass(frozen=True)
class Step:
    prompts: Prompts
    prediction: Prediction
    packed: np.ndarray | None = None  # compacted: the mask as bits (``prediction.mask`` is then empty)
    robust: Jitter | None = None  #: the robust-prompt setting the step was computed with (None: plain)

    @property
    def mask(self) -> np.ndarray:
        return self.prediction.mask

    def compacted(self) -> Step:
        """This step with its mask packed to bits (8x smaller); the state (logits, refined embedding) stays."""
        if self.packed is not None:
            return self
        mask = self.prediction.mask
        return _CompactStep(self.prompts, replace(self.prediction, mask=np.zeros((0, 0), bool)),
                            packed=np.packbits(mask, axis=None), robust=self.robust, shape=mask.shape)


@dataclass(frozen=True)
class _CompactStep(Step):
    shape: tuple[int, int] = (0, 0)

    @property
    def mask(self) -> np.ndarray:
        h, w = self.shape
        assert self.packed is not None  # a compacted step
        return np.unpackbits(self.packed, count=h * w).reshape(h, w).astype(bool)


class ObjectSession:
    """The interactive state of one object on one image (slice)."""

    def __init__(self, predictor: Predictor, embedding: ImageEmbedding, object_id: int | None = None, *,
                 max_history: int = DEFAULT_MAX_HISTORY, robust: Jitter | bool | None = None) -> None:
        if max_history < 1:
            raise ValueError(f"max_history must be at least 1, got {max_history}")
        self.predictor = predictor
        self.embedding = embedding
        self.object_id = object_id
        self.max_history = int(max_history)
        self._robust = as_jitter(robust)
        self._history: list[Step] = []
        self._cursor = 0  # steps history[:cursor] are in effect; history[cursor:] can be redone
        self._dropped = 0  # steps dropped before history[0] (history limit, compaction)
        self._floor = 0  # undo stops here: 1 once older steps were released, else 0 (the empty object)
        self._current: Step | None = None  # history[cursor - 1], published after every change
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ state
    @property
    def shape(self) -> tuple[int, int]:
        return self.embedding.geometry.original_size

    @property
    def current(self) -> Step | None:
        return self._current

    @property
    def stateless(self) -> bool:
        """Whether the predictor's mask depends on the prompts alone (then replays compute the latest only)."""
        return bool(getattr(self.predictor, "stateless", False))

    @property
    def prompts(self) -> Prompts:
        step = self.current
        return step.prompts if step else Prompts()

    @property
    def mask(self) -> np.ndarray:
        """The current mask (H, W) bool; all False before the first step."""
        step = self.current
        return step.mask if step else np.zeros(self.shape, dtype=bool)

    @property
    def state(self) -> ObjectState | None:
        step = self.current
        return step.prediction.state if step else None

    @property
    def is_refined(self) -> bool:
        """Whether this object carries its own (FocSAM) refined embedding."""
        state = self.state
        return state is not None and state.features is not None

    @property
    def robust(self) -> Jitter | None:
        """The robust-prompt setting of new steps (None: plain); undo and redo restore the step's own setting."""
        return self._robust

    @property
    def can_undo(self) -> bool:
        return self._cursor > self._floor

    @property
    def can_redo(self) -> bool:
        return self._cursor < len(self._history)

    @property
    def n_steps(self) -> int:
        """How many steps led to the current state (dropped ones included)."""
        return self._dropped + self._cursor if self._cursor else 0

    @property
    def n_kept(self) -> int:
        """How many steps are held in memory (undo and redo)."""
        return len(self._history)

    # ------------------------------------------------------------------ actions
    def click(self, y: float, x: float, positive: bool = True, *, cancel: CancelToken | None = None) -> np.ndarray:
        """Add one click at (y, x) (original pixels) and return the new mask."""
        self._check_inside(y, x)
        with self._lock:
            return self._apply(self.prompts.with_point(y, x, positive), cancel)

    def set_box(self, box: tuple[float, float, float, float], *, cancel: CancelToken | None = None) -> np.ndarray:
        """Set the object's box (y0, x0, y1, x1) as one step; only for models that take boxes (SAM)."""
        if not self.predictor.supports_boxes:
            raise ValueError(f"{self.predictor.display_name} takes clicks only, not boxes")
        corners = np.asarray(box, dtype=np.float64)
        self._check_inside(corners[0], corners[1])
        self._check_inside(corners[2], corners[3])
        with self._lock:
            return self._apply(self.prompts.with_box(corners), cancel)

    def add_polygon(self, vertices: Any, *, cancel: CancelToken | None = None) -> np.ndarray:
        """Add a filled polygon (lasso) of (y, x) vertices to the object's region, as one step.

        Filled by the nonzero winding rule (a self-intersecting lasso is filled where it loops); see
        :mod:`.prompt_shapes`. Vertices outside the image, zero area or no pixel covered: ValueError.
        """
        with self._lock:
            return self._apply(self.prompts.with_polygon(vertices, self.shape), cancel)

    def add_scribble(self, points: Any, positive: bool = True, *, cancel: CancelToken | None = None) -> np.ndarray:
        """Add a stroke (polyline of (y, x) points) marking object (``positive``) or background, as one step."""
        scribble = Scribble(points, positive)
        check_extent(scribble.points, self.shape, "scribble")
        with self._lock:
            return self._apply(self.prompts.with_scribble(scribble.points, scribble.positive), cancel)

    def set_mask(self, mask: Any, *, cancel: CancelToken | None = None) -> np.ndarray:
        """Make ``mask`` ((H, W), bool or 0/1: a user mask, ``labels == label_id``) the object's region, as one
        step; it replaces an earlier region prompt (polygons included)."""
        region = as_mask(mask, self.shape)
        with self._lock:
            return self._apply(self.prompts.with_mask(region), cancel)

    def sync(self, target: Prompts, *, cancel: CancelToken | None = None) -> np.ndarray:
        """Make the session's prompts equal ``target``; the result is exactly what giving ``target`` one step at a
        time gives, in the order box, region, scribbles, clicks.

        It goes back to the longest recorded step whose prompts are a prefix of ``target`` (a recorded region counts
        as a prefix of a region that contains it: a polygon drawn later grows the region by one step) and adds the
        rest: for a stateful model (SAM, FocSAM) one prompt at a time, as a user would have (each step's logits
        feed the next); for a stateless one in a single step. ``cancel`` is checked between steps only, never inside
        one: a superseded replay keeps every step it completed (the step under way included), so the next call
        continues from there instead of starting over.
        """
        for y, x in target.points:
            self._check_inside(y, x)
        for scribble in target.scribbles:
            check_extent(scribble.points, self.shape, "scribble")
        if target.mask is not None and target.mask.shape != self.shape:
            as_mask(target.mask, self.shape)  # raises the shape message
        if target.box is not None and not self.predictor.supports_boxes:
            raise ValueError(f"{self.predictor.display_name} takes clicks only, not boxes")
        with self._lock:
            self._cursor = self._longest_prefix(target)
            if self._cursor == 0:
                self._dropped = self._floor = 0
            self._publish()
            done = self.prompts
            if target.box is not None and done.box is None and not self.predictor.supports_boxes:
                raise ValueError(f"{self.predictor.display_name} takes clicks only, not boxes")
            if self.stateless:
                if (len(done) < len(target) or (target.box is not None and done.box is None)
                        or _region_changed(done, target)
                        or len(done.scribbles) < len(target.scribbles)):
                    self._apply(target, cancel)
                return self.mask
            steps = []
            if target.box is not None and done.box is None:
                done = done.with_box(target.box)
                steps.append(done)
            if _region_changed(done, target):
                done = done.with_mask(target.mask)
                steps.append(done)
            for scribble in target.scribbles[len(done.scribbles):]:
                done = done.with_scribble(scribble.points, scribble.positive)
                steps.append(done)
            for i in range(len(done), len(target)):
                y, x = target.points[i]
                done = done.with_point(y, x, bool(target.labels[i]))
                steps.append(done)
            for n, prompts in enumerate(steps):
                if n:
                    check_cancel(cancel)
                self._apply(prompts, None)
            return self.mask

    def set_robust(self, robust: Jitter | bool | None, *, cancel: CancelToken | None = None) -> np.ndarray:
        """Turn robust prompts on (``True`` or a :class:`~napari_focsam.engine.stability.Jitter`) or off.

        With prompts already there, the current prompts are computed again in the new mode as one more step, so
        undo gives back the earlier mask, state and mode exactly (when the step before the current one was released
        by the history limit, the mode applies from the next prompt on). Returns the mask.
        """
        jitter = as_jitter(robust)
        with self._lock:
            step, before = self.current, self._robust
            self._robust = jitter
            if step is None or step.robust == jitter or (self._cursor < 2 and self._dropped):
                return self.mask
            previous = self._history[self._cursor - 2].prediction.state if self._cursor >= 2 else None
            try:
                return self._apply(step.prompts, cancel, state=previous)
            except BaseException:
                self._robust = before  # a failed or cancelled switch changes nothing
                raise

    def stability(self, jitter: Jitter | None = None, *, cancel: CancelToken | None = None) -> Stability:
        """Stable-SAM's ST of the current mask over jittered copies of the current prompts (see
        :mod:`.stability`); the session does not change."""
        with self._lock:
            step = self.current
            if step is None or step.prompts.is_empty:
                raise ValueError("the object has no prompts yet: click first")
            previous = self._history[self._cursor - 2].prediction.state if self._cursor >= 2 else None
            embedding = self.embedding
        return stability(self.predictor, embedding, step.prompts, previous, step.prediction.state, step.mask,
                         jitter or step.robust or Jitter(), cancel=cancel)

    def undo(self) -> np.ndarray:
        with self._lock:
            if self._cursor > self._floor:
                self._cursor -= 1
                self._publish()
                self._follow_step()
            return self.mask

    def redo(self) -> np.ndarray:
        with self._lock:
            if self._cursor < len(self._history):
                self._cursor += 1
                self._publish()
                self._follow_step()
            return self.mask

    def forget_redo(self) -> None:
        """Drop the steps that redo would bring back (a step the user never made, taken back)."""
        with self._lock:
            del self._history[self._cursor:]

    def _follow_step(self) -> None:
        """After moving the cursor, new steps continue in the mode of the step now in effect."""
        if self._cursor:
            self._robust = self._history[self._cursor - 1].robust

    def reset(self) -> None:
        """Forget every step (the object becomes empty); cannot be undone."""
        with self._lock:
            self._history.clear()
            self._cursor = 0
            self._dropped = self._floor = 0
            self._publish()

    def compact(self) -> None:
        """Release what only undo and redo need (a committed object): keep the current step alone, its state
        (logits, refined embedding) as it is and its mask packed to bits. The next step is exactly what it would
        have been; undo stops at this step."""
        with self._lock:
            if not self._cursor:
                self.reset()
                return
            self._dropped += self._cursor - 1
            self._history = [self._history[self._cursor - 1].compacted()]
            self._cursor = self._floor = 1
            self._publish()

    # ------------------------------------------------------------------ internals
    def _apply(self, prompts: Prompts, cancel: CancelToken | None, *,
               state: ObjectState | str | None = "current") -> np.ndarray:
        """Compute ``prompts`` from ``state`` (default: the current step's) as the next step, in the session's mode."""
        state = self.state if isinstance(state, str) else state
        if self._robust is None:
            prediction = self.predictor.predict(self.embedding, prompts, state, cancel=cancel)
        else:
            prediction = robust_predict(self.predictor, self.embedding, prompts, state, self._robust, cancel=cancel)
        del self._history[self._cursor:]
        self._history.append(Step(prompts, prediction, robust=self._robust))
        self._cursor += 1
        excess = len(self._history) - self.max_history
        if excess > 0:
            del self._history[:excess]
            self._cursor -= excess
            self._dropped += excess
            self._floor = 1
        self._publish()
        return prediction.mask

    def _publish(self) -> None:
        self._current = self._history[self._cursor - 1] if self._cursor else None

    def _longest_prefix(self, target: Prompts) -> int:
        """The number of steps in effect whose last prompts are a prefix of ``target`` (0: none, start over)."""
        for k in range(self._cursor, 0, -1):
            prompts = self._history[k - 1].prompts
            n = len(prompts)
            same_box = (prompts.box is None) or (
                target.box is not None and np.array_equal(prompts.box, target.box)
            )
            same_region = prompts.mask is None or (target.mask is not None and _within(prompts.mask, target.mask))
            n_scribbles = len(prompts.scribbles)
            same_scribbles = n_scribbles <= len(target.scribbles) and all(
                a.same(b) for a, b in zip(prompts.scribbles, target.scribbles)
            )
            if (
                same_box
                and same_region
                and same_scribbles
                and n <= len(target)
                and np.array_equal(prompts.points, target.points[:n])
                and np.array_equal(prompts.labels, target.labels[:n])
            ):
                return k
        return 0

    def _check_inside(self, y: float, x: float) -> None:
        h, w = self.shape
        if not (-0.5 <= y < h - 0.5 and -0.5 <= x < w - 0.5):
            raise ValueError(f"the click at (y={y:.1f}, x={x:.1f}) is outside the image of {h}×{w} pixels")


def _within(region: np.ndarray, target: np.ndarray) -> bool:
    """Whether the recorded ``region`` is ``target`` or lies inside it (the region grew by later polygons)."""
    return region is target or (region.shape == target.shape and not (region & ~target).any())


def _region_changed(done: Prompts, target: Prompts) -> bool:
    """Whether ``target``'s region still has to be applied on top of ``done``."""
    if target.mask is None:
        return False
    return done.mask is None or not (done.mask is target.mask or np.array_equal(done.mask, target.mask))
