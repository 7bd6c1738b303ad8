"""One object being annotated: its prompts, its step-by-step history, undo and redo.

Every step stores the prompts it saw and the immutable :class:`Prediction` it produced (mask, raw logits, FocSAM's
refined embedding or none, step count). Undo and redo only move a cursor over that history, so they restore the
exact earlier state — the very tensors — without recomputing anything. A new click after an undo drops the redo
branch.

Thread safety: all methods of one session are serialised by its lock (a click waits for a running click on the
same object); different sessions run concurrently. A call given a :class:`CancelToken` that gets cancelled raises
:class:`Cancelled` and leaves the session at the last completed step.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .predictor import Predictor
from .stability import Jitter, Stability, as_jitter, robust_predict, stability
from .types import CancelToken, ImageEmbedding, ObjectState, Prediction, Prompts


@dataclass(frozen=True)
class Step:
    prompts: Prompts
    prediction: Prediction
    robust: Jitter | None = None  #: the robust-prompt setting the step was computed with (None: plain)


class ObjectSession:
    """The interactive state of one object on one image (slice)."""

    def __init__(self, predictor: Predictor, embedding: ImageEmbedding, object_id: int | None = None, *,
                 robust: Jitter | bool | None = None) -> None:
        self.predictor = predictor
        self.embedding = embedding
        self.object_id = object_id
        self._robust = as_jitter(robust)
        self._history: list[Step] = []
        self._cursor = 0  # steps history[:cursor] are in effect; history[cursor:] can be redone
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ state
    @property
    def shape(self) -> tuple[int, int]:
        return self.embedding.geometry.original_size

    @property
    def current(self) -> Step | None:
        with self._lock:
            return self._history[self._cursor - 1] if self._cursor else None

    @property
    def prompts(self) -> Prompts:
        step = self.current
        return step.prompts if step else Prompts()

    @property
    def mask(self) -> np.ndarray:
        """The current mask (H, W) bool; all False before the first step."""
        step = self.current
        return step.prediction.mask if step else np.zeros(self.shape, dtype=bool)

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
        return self._cursor > 0

    @property
    def can_redo(self) -> bool:
        return self._cursor < len(self._history)

    @property
    def n_steps(self) -> int:
        return self._cursor

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
        box = np.asarray(box, dtype=np.float64)
        self._check_inside(box[0], box[1])
        self._check_inside(box[2], box[3])
        with self._lock:
            return self._apply(self.prompts.with_box(box), cancel)

    def sync(self, target: Prompts, *, cancel: CancelToken | None = None) -> np.ndarray:
        """Make the session's prompts equal ``target`` with the fewest steps: go back to the longest step whose
        prompts are a prefix of ``target``, then add the remaining clicks one at a time (as a user would have),
        so the result is exactly what clicking ``target`` in order gives."""
        for y, x in target.points:
            self._check_inside(y, x)
        with self._lock:
            self._cursor = self._longest_prefix(target)
            done = self.prompts
            if target.box is not None and done.box is None:
                if not self.predictor.supports_boxes:
                    raise ValueError(f"{self.predictor.display_name} takes clicks only, not boxes")
                done = done.with_box(target.box)
                self._apply(done, cancel)
            for i in range(len(done), len(target)):
                done = done.with_point(*target.points[i], bool(target.labels[i]))
                self._apply(done, cancel)
            return self.mask

    def set_robust(self, robust: Jitter | bool | None, *, cancel: CancelToken | None = None) -> np.ndarray:
        """Turn robust prompts on (``True`` or a :class:`Jitter`) or off for this object.

        With prompts already there, the current prompts are computed again in the new mode as one more step, so
        undo gives back the earlier mask, state and mode exactly. Returns the mask.
        """
        jitter = as_jitter(robust)
        with self._lock:
            step, before = self.current, self._robust
            self._robust = jitter
            if step is None or step.robust == jitter:
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
        return stability(self.predictor, embedding, step.prompts, previous, step.prediction.state,
                         step.prediction.mask, jitter or step.robust or Jitter(), cancel=cancel)

    def undo(self) -> np.ndarray:
        with self._lock:
            if self._cursor:
                self._cursor -= 1
            self._follow_step()
            return self.mask

    def redo(self) -> np.ndarray:
        with self._lock:
            if self._cursor < len(self._history):
                self._cursor += 1
            self._follow_step()
            return self.mask

    def _follow_step(self) -> None:
        """After moving the cursor, new steps continue in the mode of the step now in effect."""
        if self._cursor:
            self._robust = self._history[self._cursor - 1].robust

    def reset(self) -> None:
        """Forget every step (the object becomes empty); cannot be undone."""
        with self._lock:
            self._history.clear()
            self._cursor = 0

    # ------------------------------------------------------------------ internals
    def _apply(self, prompts: Prompts, cancel: CancelToken | None, *, state: ObjectState | None | str = "current",
               ) -> np.ndarray:
        """Compute ``prompts`` from ``state`` (default: the current step's) as the next step, in the session's mode."""
        robust = self._robust
        state = self.state if state == "current" else state
        if robust is None:
            prediction = self.predictor.predict(self.embedding, prompts, state, cancel=cancel)
        else:
            prediction = robust_predict(self.predictor, self.embedding, prompts, state, robust, cancel=cancel)
        del self._history[self._cursor:]
        self._history.append(Step(prompts, prediction, robust))
        self._cursor += 1
        return prediction.mask

    def _longest_prefix(self, target: Prompts) -> int:
        for k in range(self._cursor, 0, -1):
            prompts = self._history[k - 1].prompts
            n = len(prompts)
            same_box = (prompts.box is None) or (
                target.box is not None and np.array_equal(prompts.box, target.box)
            )
            if (
                same_box
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
