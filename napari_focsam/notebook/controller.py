"""The notebook annotator's logic, free of Jupyter: actions in, engine jobs out, label patches and state back.

The same engine paths as the napari controller (:class:`~napari_focsam.plugin.controller.AnnotationController`):
a :class:`~napari_focsam.engine.manager.ModelManager` with its embedding cache and per-object sessions, click jobs
computed by :func:`~napari_focsam.engine.work.compute_object` in the threads of a
:class:`~napari_focsam.engine.jobs.JobRunner` keyed by (slice, object) — latest click wins per key, requests
coalesce — and each slice with its own objects. The differences are where the results go: into a numpy label array,
and to the browser as messages through ``emit(message, buffers)`` (see :mod:`.overlay` for what a patch holds).

Threads: actions run on the caller's thread (the kernel's comm handler, or a notebook cell) and never compute a
model; results are delivered on the job threads. Both hold one lock while they touch the state, so a result and an
action never interleave, and messages leave in the order the state changed.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from ..engine.jobs import JobRunner
from ..engine.manager import ModelManager
from ..engine.object_commits import ObjectCommits
from ..engine.session import ObjectSession
from ..engine.types import Prompts
from ..engine.work import ClickResult, TileSettings, compute_object
from .geometry import Geometry
from .messages import NotebookMessages
from .overlay import changed_box, merge_object, rle_encode
from .slice_model import CLICK, SliceAndModel
from .source import ImageSource
from .stability import NotebookStability
from .tiled_writes import NotebookTiles
from .window import NotebookWindow
from .zoom import NotebookZoom

Emit = Callable[[dict, list], None]


class NotebookController(NotebookMessages, NotebookWindow, NotebookTiles, SliceAndModel, ObjectCommits,
                         NotebookStability, NotebookZoom):
    """One image, its labels and a model; every public method is one user action (see :class:`Annotator`).

    ``geometry``: where the pixels are in the world (the widget's aspect and readout; actions take pixels);
    ``tiles``: when a large slice is annotated in tiles (:class:`~napari_focsam.engine.work.TileSettings`);
    ``window_side``: the side of the window a slice larger than the widget shows whole is seen through."""

    def __init__(self, source: ImageSource, emit: Emit, labels: np.ndarray,
                 contrast: tuple[float, float] | None = None, geometry: Geometry | None = None,
                 tiles: TileSettings | None = None, window_side: int | None = None) -> None:
        self.source = source
        self.geometry = geometry or Geometry.of(3 if source.depth else 2)
        self.tiles = tiles or TileSettings()
        self._emit = emit
        self._lock = threading.RLock()
        self.jobs = JobRunner(dispatch=self._deliver)
        self.manager: ModelManager | None = None
        self.model_name: str | None = None
        self.labels = labels
        self.z = 0
        low, high = (float(v) for v in (contrast or source.default_contrast()))
        self.contrast = (low, high)
        self.overwrite = False
        self.selected = 0
        self.last_click_ms: float | None = None
        self.object_id = 1
        self._prompts: dict[tuple[tuple[int, ...], int], Prompts] = {}
        self._bases: dict[tuple[tuple[int, ...], int], np.ndarray] = {}
        self._keys: dict[tuple[int, ...], str] = {}  # slice -> embedding key with the current model
        self._known: dict[tuple, str] = {}  # (manager, slice, contrast) -> embedding key of an earlier click job
        self._committing: set[int] = set()
        self._running: Counter[int] = Counter()  # object id -> click jobs whose on_finished has not run yet
        self._busy: dict[str, str] = {}  # job kind -> what the progress line says
        self.on_committed: Callable[[int], None] | None = None  # called when a committed object is final
        self.status: tuple[str, str] = ("", "info")
        self._init_stability()
        self._init_zoom()
        self._init_window(window_side)
        self._start_new_object()

    # ------------------------------------------------------------------ state
    @property
    def index(self) -> tuple[int, ...]:
        return self.source.index(self.z)

    @property
    def takes_boxes(self) -> bool:
        return self.manager is not None and bool(self.manager.predictor.supports_boxes)

    def session(self) -> ObjectSession | None:
        key = self._keys.get(self.index)
        return None if self.manager is None or key is None else self.manager.get_object(key, self.object_id)

    def prompts(self) -> Prompts:
        return self._prompts.get((self.index, self.object_id), Prompts())

    def _view(self, index: tuple[int, ...]) -> np.ndarray:
        return self.labels[index] if index else self.labels

    @property
    def signature(self) -> tuple:
        """Everything but the pixels that decides what the model sees: the contrast and the channel mix."""
        return self.contrast, self.source.mix

    def tiled(self, index: tuple[int, ...] | None = None) -> bool:
        """Whether a slice (default: the shown one) is annotated in tiles with the current model."""
        return self.manager is not None and self._tiled(self.manager, self.index if index is None else index)

    # ------------------------------------------------------------------ prompts
    def click(self, y: float, x: float, positive: bool = True, seq: int | None = None) -> None:
        """Add a click at pixel (y, x) of the shown slice to the current object."""
        with self._lock:
            self._need_model()
            height, width = self.source.height, self.source.width
            if not (-0.5 <= y < height - 0.5 and -0.5 <= x < width - 0.5):
                raise ValueError(f"the click at (y={y:.0f}, x={x:.0f}) is outside the image of {height}×{width} "
                                 "pixels: nothing was added")
            key = (self.index, self.object_id)
            self._prompts[key] = self.prompts().with_point(float(y), float(x), bool(positive))
            self._submit(seq)

    def box(self, y0: float, x0: float, y1: float, x1: float, seq: int | None = None) -> None:
        """Make (y0, x0)-(y1, x1) the current object's box on the shown slice (models that take boxes)."""
        with self._lock:
            manager = self._need_model()
            if not self.takes_boxes:
                raise ValueError(f"{manager.display_name} takes clicks only: the box is ignored "
                                 "(load a SAM model to use boxes)")
            top, bottom = sorted((float(y0), float(y1)))
            left, right = sorted((float(x0), float(x1)))
            top, left = max(top, 0.0), max(left, 0.0)
            bottom, right = min(bottom, self.source.height - 1.0), min(right, self.source.width - 1.0)
            if top > bottom or left > right:
                raise ValueError("the box lies outside the image: nothing was added")
            key = (self.index, self.object_id)
            self._prompts[key] = self.prompts().with_box(np.array([top, left, bottom, right]))
            self._submit(seq)

    def _need_model(self) -> ModelManager:
        if self.manager is None:
            raise ValueError("no model loaded yet: wait until it is loaded (see the progress line) or load one")
        return self.manager

    def _submit(self, seq: int | None) -> None:
        index, object_id = self.index, self.object_id
        key = (index, object_id)
        self._base(index, object_id)
        manager = self._need_model()
        ticket = self._stability_ticket()  # the stability under way is out of date
        zoom_work = self._zoom_work(index, object_id, self._prompts[key])
        if zoom_work is not None:
            self._submit_zoom(index, object_id, zoom_work, seq)
            self._update(prompts=True)
            return
        args = (manager, self.source.model_data, index, self.source.model_rgb, self.contrast, object_id,
                self._prompts[key])
        signature, tiles = self.signature, self.tiles
        known = self._known.get((self.manager, index, signature))  # the slice is not converted and hashed again
        self._submit_work(index, object_id,
                          lambda token: compute_object(*args, token, known_key=known, tiles=tiles, region_only=True),
                          lambda result: self._on_result(result, seq, signature, ticket))
        self._update(prompts=True)

    def _submit_work(self, index: tuple[int, ...], object_id: int, work: Callable[[Any], Any],
                     done: Callable[[Any], None]) -> None:
        """A click job of the object on a slice (one per key: the latest wins, requests coalesce)."""
        self._running[object_id] += 1
        self.jobs.submit((CLICK, index, object_id), work, done, self._on_click_error,
                         on_finished=lambda: self._job_finished(object_id), threads="interactive")

    def _on_result(self, result: ClickResult, seq: int | None, signature: tuple,
                   ticket: int | None = None) -> None:
        key = (result.index, result.object_id)
        if result.embedding_key:  # "" for a tiled slice: no whole-slice embedding
            self._known[(result.manager, result.index, signature)] = result.embedding_key
        if result.tiled is not None:  # the mask of the object's view: written in its region
            self._write_tiled(result.index, result.object_id, result.tiled, seq=seq, model_ms=1000 * result.seconds)
            if result.manager is self.manager:
                self._prefetch_around(result.index, result.tiled)
        else:
            self._write(result.index, result.mask, result.object_id, self._bases.get(key), seq=seq,
                        model_ms=1000 * result.seconds)
        if result.manager is self.manager and result.embedding_key:
            self._keys[result.index] = result.embedding_key
        self.last_click_ms = 1000 * result.seconds
        self._set_status(f"click {self.last_click_ms:.0f} ms", "info", send=False)
        self._update(prompts=result.index == self.index)
        if result.manager is self.manager:
            self.request_stability(result.index, result.object_id, ticket)  # after the mask is sent

    def _write(self, index: tuple[int, ...], mask: np.ndarray, object_id: int, base: Any, *,
               seq: int | None = None, model_ms: float | None = None, overwrite: bool | None = None,
               region: tuple[int, int, int, int] | None = None) -> None:
        """Show ``mask`` as ``object_id`` on a slice (``mask`` covers ``region``, default the whole slice; ``base``
        is the slice before the object, an array or a block base) and send the changed box if the slice is shown."""
        y0, x0, y1, x1 = region or (0, 0, self.source.height, self.source.width)
        view = self._view(index)[y0:y1, x0:x1]
        before = view.copy() if base is None else base[y0:y1, x0:x1]
        target = merge_object(view, mask, object_id, before,
                              overwrite=self.overwrite if overwrite is None else overwrite)
        box = changed_box(view, target)
        if box is not None:
            by0, bx0, by1, bx1 = box
            view[by0:by1, bx0:bx1] = target[by0:by1, bx0:bx1]
            box = (by0 + y0, bx0 + x0, by1 + y0, bx1 + x0)
        if index == self.index:
            self._send_patch(box, seq=seq, model_ms=model_ms)

    def _send_patch(self, box: tuple[int, int, int, int] | None, **extra: Any) -> None:
        """Send the labels of ``box`` (slice pixels) cut to the shown window, in window pixels."""
        view = self._view(self.index)
        buffers: list[bytes] = [b"", b""]
        shown = None if box is None else self.clip_to_window(box)
        if shown is not None:
            y0, x0, y1, x1 = shown
            wy, wx = self.window[:2]
            buffers = list(rle_encode(view[wy + y0:wy + y1, wx + x0:wx + x1]))
        self._emit({"type": "labels", "z": self.z, "box": list(shown) if shown else None, **extra}, buffers)

    def _on_click_error(self, exc: BaseException) -> None:
        self._set_status(f"the mask could not be computed (the labels are unchanged): {exc}", "error")

    def _job_finished(self, object_id: int) -> None:
        self._running[object_id] -= 1
        if self._running[object_id] <= 0:
            del self._running[object_id]
        super()._job_finished(object_id)

    def _jobs_of(self, object_id: int) -> bool:
        """Whether click jobs of the object are still to finish (the runner's own count includes the job whose
        ``on_finished`` is running, so the annotator counts its own)."""
        return self._running[object_id] > 0

    # ------------------------------------------------------------------ objects
    def undo(self) -> None:
        self._step("undo")

    def redo(self) -> None:
        self._step("redo")

    def _step(self, which: str) -> None:
        with self._lock:
            index = self.index
            if (index, self.object_id) in self.zooms:
                self.cancel_stability()
                self.jobs.cancel((CLICK, index, self.object_id))
                self._step_zoom(which)
                return
            if self.tiled():
                self._step_tiled(which)
                return
            session = self.session()
            if session is None or not (session.can_undo if which == "undo" else session.can_redo):
                raise ValueError(f"nothing to {which} for object {self.object_id} on this slice")
            self.cancel_stability()
            self.jobs.cancel((CLICK, index, self.object_id))  # undo/redo act on the recorded steps
            mask = session.undo() if which == "undo" else session.redo()
            self._prompts[(index, self.object_id)] = session.prompts
            self._write(index, mask, self.object_id, self._base(index, self.object_id))
            self._update(prompts=True)
            self.request_stability(index, self.object_id)

    def commit(self) -> int:
        """Keep the current object and start the next one (id = max + 1). Returns the committed id."""
        with self._lock:
            self._forget_zooms(self.object_id)
            self._prompts = {k: v for k, v in self._prompts.items() if k[1] != self.object_id}
            committed = self._commit_current()
            self._set_status(f"committed object {committed}; now object {self.object_id}", "info", send=False)
            self._update(prompts=True)
            return committed

    def _finish_commit(self, object_id: int) -> None:
        super()._finish_commit(object_id)
        if self.on_committed is not None:
            try:
                self.on_committed(object_id)
            except Exception as exc:  # noqa: BLE001 - a user's callback must not break the annotator
                self._set_status(f"object {object_id} committed, but a callback failed: {exc!r}", "warning")

    def _start_new_object(self) -> None:
        busy = [oid for oid, n in self._running.items() if n > 0]
        self._begin_object(int(self.labels.max()) if self.labels.size else 0, busy)

    def cancel(self) -> None:
        """Drop the current object: its jobs are discarded, its pixels go back to what they were."""
        with self._lock:
            object_id = self.object_id
            self.cancel_stability()
            self.stabilities.pop(object_id, None)
            self.jobs.cancel(lambda key: key[0] == CLICK and key[2] == object_id)
            self.cancel_prefetch()
            for (index, oid), base in list(self._bases.items()):
                if oid == object_id:
                    self._restore(index, object_id, base)
                    del self._bases[(index, oid)]
            self._close_sessions(object_id)
            self._forget_zooms(object_id)
            self._prompts = {k: v for k, v in self._prompts.items() if k[1] != object_id}
            self._set_status(f"object {object_id} cancelled", "info", send=False)
            self._update(prompts=True)

    def reopen(self, label: int | None = None) -> None:
        """Continue refining a committed object (the selected label by default)."""
        label = int(self.selected if label is None else label)
        if label <= 0 or not (self.labels == label).any():
            raise ValueError(f"label {label} is not in the labels: pick one with Ctrl+click (or Alt+click)")
        self.wait(match=lambda key: key[0] == CLICK and key[2] == label)  # outside the lock: its masks land first
        with self._lock:
            if label != self.object_id:
                self.commit()
            self._committing.discard(label)
            self.object_id = label
            session = self.session()
            if session is not None and self.manager is not None:
                self.manager.reopen_object(session)
            self._prompts[(self.index, label)] = session.prompts if session is not None else Prompts()
            note = "" if session is not None else " (no clicks recorded: new clicks replace it on this slice)"
            self._set_status(f"re-opened object {label}{note}", "info", send=False)
            self._update(prompts=True)

    def delete(self, label: int | None = None) -> None:
        """Remove an object (the selected label by default) from every slice."""
        with self._lock:
            label = int(self.selected if label is None else label)
            if label <= 0:
                raise ValueError("pick the label to delete with Ctrl+click (or Alt+click) first")
            self.jobs.cancel(lambda key: key[0] == CLICK and key[2] == label)
            self._committing.discard(label)
            if label == self.object_id:
                self.cancel()
            self._bases = {k: v for k, v in self._bases.items() if k[1] != label}
            self.labels[self.labels == label] = 0
            self._close_sessions(label)
            self._forget_zooms(label)
            self._set_status(f"object {label} deleted", "info", send=False)
            self._send_patch((0, 0, self.source.height, self.source.width))
            self._update()

    def close(self) -> None:
        self.jobs.shutdown()


__all__ = ["NotebookController"]
