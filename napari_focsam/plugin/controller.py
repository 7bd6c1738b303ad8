"""The annotation controller: napari layer events → engine calls in worker threads → Labels writes.

Rules it keeps:

* model work (loading, embedding, decoding, refining) runs only in napari thread workers, never on the GUI thread;
* layers are read for the request and written with the result on the main thread only;
* the latest click wins: a newer request cancels the older one (it stops at its next stage boundary) and a stale
  result is dropped;
* a failed job shows a notification and leaves every layer as it was.

Box prompts come from a Shapes layer: the latest rectangle on a slice is the current object's box there (models that
take boxes only; for the others it is ignored with one message).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from napari.viewer import Viewer
from psygnal import Signal

from ..engine.image import take_slice
from ..engine.manager import ModelManager
from ..engine.session import ObjectSession
from ..engine.types import CancelToken, Cancelled, Prompts
from . import layers as L


@dataclass
class JobResult:
    job: int
    index: tuple[int, ...]
    object_id: int
    mask: np.ndarray
    embedding_key: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    embedded: float | None = None  # seconds spent computing the embedding (None: it came from the cache)


class AnnotationController:
    """Drives one image / clicks / labels triple with a :class:`ModelManager`. Qt-free except for the workers."""

    status = Signal(str)
    changed = Signal()

    def __init__(self, viewer: Viewer) -> None:
        self.viewer = viewer
        self.manager: ModelManager | None = None
        self.image: Image | None = None
        self.points: Points | None = None
        self.labels: Labels | None = None
        self.boxes: Shapes | None = None
        self.object_id = 1
        self.overwrite = False
        self.prefetch = False
        self.next_positive = True
        self.last_click_seconds: float | None = None
        self.last_embed_seconds: float | None = None
        self._bases: dict[tuple[tuple[int, ...], int], np.ndarray] = {}
        self._keys: dict[tuple[int, ...], str] = {}  # slice -> embedding key of the current model
        self._job = 0
        self._token: CancelToken | None = None
        self._workers: set[Any] = set()
        self._muted = False
        self._boxes_warned = False  # "this model takes no boxes" was shown for the current manager
        self._box_ignored = False  # the latest request had a box the model does not take
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.dims.events.current_step.connect(self._on_slice_changed)

    # ------------------------------------------------------------------ set-up
    def set_manager(self, manager: ModelManager) -> None:
        self.cancel_jobs()
        self.manager = manager
        self._boxes_warned = False
        self._keys.clear()
        self.status.emit(f"{manager.display_name} on {manager.device}")
        self.changed.emit()
        self.embed_current()

    def load_model(self, name: str, checkpoint: str | None = None, device: str = "auto", **kwargs: Any) -> Any:
        """Load a model in a worker; the result replaces the current manager. Returns the worker."""
        self.status.emit(f"loading {name} …")

        def done(manager: ModelManager) -> None:
            self.set_manager(manager)

        return self._start(ModelManager.load, (name, checkpoint), {"device": device, **kwargs}, done,
                           progress=f"Loading {name}")

    def attach(self, image: Image, points: Points | None = None, labels: Labels | None = None,
               boxes: Shapes | None = None) -> None:
        """Work on ``image``, reading clicks from ``points``, boxes from ``boxes`` and writing into ``labels``
        (missing layers are created)."""
        self.detach()
        self.image = image
        self.labels = labels if labels is not None else L.make_labels_layer(self.viewer, image)
        self.boxes = boxes if boxes is not None else L.make_shapes_layer(self.viewer, image)
        self.points = points if points is not None else L.make_points_layer(self.viewer, image)
        if L.SIGN_FEATURE not in self.points.features:
            self.points.features = {L.SIGN_FEATURE: np.ones(len(self.points.data), dtype=bool)}
        L.style_points(self.points)
        self.points.events.data.connect(self._on_points_data)
        self.boxes.events.data.connect(self._on_boxes_data)
        self.points.mouse_drag_callbacks.insert(0, self._sign_from_mouse)
        self.points.mode = "add"
        self.viewer.layers.selection.active = self.points  # clicks on the canvas go to the active layer
        self._start_new_object()
        self.changed.emit()
        self.embed_current()

    def detach(self) -> None:
        self.cancel_jobs()
        if self.points is not None:
            self.points.events.data.disconnect(self._on_points_data)
            if self._sign_from_mouse in self.points.mouse_drag_callbacks:
                self.points.mouse_drag_callbacks.remove(self._sign_from_mouse)
        if self.boxes is not None:
            self.boxes.events.data.disconnect(self._on_boxes_data)
        self.image = self.points = self.labels = self.boxes = None
        self._bases.clear()
        self._keys.clear()

    @property
    def ready(self) -> bool:
        return self.manager is not None and self.image is not None

    @property
    def index(self) -> tuple[int, ...]:
        return L.current_index(self.viewer, self.image) if self.image is not None else ()

    # ------------------------------------------------------------------ clicks
    def click(self, y: float, x: float, positive: bool = True, index: tuple[int, ...] | None = None) -> None:
        """Add a click (image pixel coordinates) exactly as a mouse click would: via the Points layer."""
        if self.image is None or self.points is None:
            raise RuntimeError("attach an image first")
        index = self.index if index is None else tuple(index)
        world = self.image.data_to_world(np.asarray((*index, y, x), dtype=float))
        self.points.feature_defaults = {L.SIGN_FEATURE: bool(positive)}
        self.points.add(self.points.world_to_data(world))
        self.points.feature_defaults = {L.SIGN_FEATURE: self.next_positive}

    def box(self, y0: float, x0: float, y1: float, x1: float, index: tuple[int, ...] | None = None) -> None:
        """Draw a box (image pixel coordinates, corners inclusive) exactly as the rectangle tool would: via the
        boxes layer. It becomes the current object's box on that slice (the latest rectangle there wins)."""
        if self.image is None or self.boxes is None:
            raise RuntimeError("attach an image first")
        index = self.index if index is None else tuple(index)
        corners = [(*index, y, x) for y, x in ((y0, x0), (y0, x1), (y1, x1), (y1, x0))]
        self.boxes.add(L.image_to_layer(self.boxes, self.image, np.asarray(corners, dtype=float)),
                       shape_type="rectangle")

    def _sign_from_mouse(self, layer: Points, event: Any) -> None:
        if layer.mode == "add":
            negative = "Shift" in event.modifiers or event.button == 2
            layer.feature_defaults = {L.SIGN_FEATURE: self.next_positive and not negative}

    def _on_points_data(self, event: Any) -> None:
        action = str(getattr(event, "action", "changed"))
        if self._muted or action.endswith(("adding", "removing", "changing")):
            return
        with self._mute():
            L.style_points(self.points)
        self.update()

    def _on_boxes_data(self, event: Any) -> None:
        action = str(getattr(event, "action", "changed"))
        if self._muted or action.endswith(("adding", "removing", "changing")):
            return
        self.update()

    @property
    def takes_boxes(self) -> bool:
        return self.manager is not None and bool(self.manager.predictor.supports_boxes)

    def _prompts(self, index: tuple[int, ...]) -> Prompts:
        """The current object's prompts on slice ``index``: its clicks there, and its box there if the model takes
        boxes (otherwise the box is ignored, with one message per model)."""
        prompts, _ = L.prompts_for_slice(self.points, self.image, index)
        box = L.box_for_slice(self.boxes, self.image, index) if self.boxes is not None else None
        self._box_ignored = box is not None and not self.takes_boxes
        if box is None:
            return prompts
        if self.takes_boxes:
            return prompts.with_box(box)
        if not self._boxes_warned:
            self._boxes_warned = True
            message = (f"{self.manager.display_name} takes clicks only: the box is ignored "
                       "(load a SAM model to use boxes)")
            show_warning(f"FocSAM: {message}")
            self.status.emit(message)
        return prompts

    def toggle_sign(self) -> None:
        """Flip the sign of the selected clicks, or, with none selected, of the next click."""
        if self.points is None:
            return
        selected = sorted(self.points.selected_data)
        if not selected:
            self.next_positive = not self.next_positive
            self.points.feature_defaults = {L.SIGN_FEATURE: self.next_positive}
            self.status.emit(f"next click: {'positive' if self.next_positive else 'negative'}")
            return
        with self._mute():
            L.set_signs(self.points, selected, ~L.signs(self.points)[selected])
        self.update()

    def update(self) -> None:
        """Recompute the current object on the current slice from the clicks there (latest request wins)."""
        if not self.ready:
            if self.manager is None:
                show_info("FocSAM: load a model first (or choose the fallback)")
            return
        index, object_id = self.index, self.object_id
        prompts = self._prompts(index)
        key = (index, object_id)
        if key not in self._bases:
            self._bases[key] = L.slice_copy(self.labels, index)
        token = self._new_token()
        self._job += 1
        args = (self._job, self.manager, self.image.data, index, self.image.rgb,
                tuple(self.image.contrast_limits), object_id, prompts, token)
        self._start(_compute_object, args, {}, self._on_result, token=token)

    def _on_result(self, result: JobResult) -> None:
        if result.job != self._job or self.labels is None:
            return  # superseded, or detached meanwhile
        if self.labels not in self.viewer.layers:
            show_warning("FocSAM: the Labels layer was removed while the mask was computed; nothing was written")
            return
        base = self._bases.get((result.index, result.object_id))
        if base is None:
            base = L.slice_copy(self.labels, result.index)
        L.write_object(self.labels, result.index, result.mask, result.object_id, base, overwrite=self.overwrite)
        self._keys[result.index] = result.embedding_key
        self.last_click_seconds = result.seconds
        if result.embedded is not None:
            self.last_embed_seconds = result.embedded
        parts = [f"click {1000 * result.seconds:.0f} ms"]
        parts += [f"{k} {1000 * v:.0f} ms" for k, v in result.timings.items()]
        if self._box_ignored:
            parts.append(f"box ignored: {self.manager.display_name} takes clicks only")
        self.status.emit(", ".join(parts))
        self.changed.emit()

    # ------------------------------------------------------------------ objects
    def session(self) -> ObjectSession | None:
        key = self._keys.get(self.index)
        if self.manager is None or key is None:
            return None
        return self.manager.get_object(key, self.object_id)

    def undo(self) -> None:
        self._step("undo")

    def redo(self) -> None:
        self._step("redo")

    def _step(self, which: str) -> None:
        session = self.session()
        if session is None:
            return
        self.cancel_jobs()
        mask = session.undo() if which == "undo" else session.redo()
        index = self.index
        with self._mute():
            L.replace_slice_points(self.points, self.image, index, session.prompts)
            if self.boxes is not None and self.takes_boxes:
                L.replace_slice_box(self.boxes, self.image, index, session.prompts.box)
        base = self._bases.setdefault((index, self.object_id), L.slice_copy(self.labels, index))
        L.write_object(self.labels, index, mask, self.object_id, base, overwrite=self.overwrite)
        self.changed.emit()

    def commit(self) -> None:
        """Keep the current object as it is in the Labels layer and start the next one (id = max + 1)."""
        if self.labels is None:
            return
        self.cancel_jobs()
        self._clear_prompts()
        self._bases = {k: v for k, v in self._bases.items() if k[1] != self.object_id}
        self._start_new_object()
        self.status.emit(f"committed; now object {self.object_id}")
        self.changed.emit()

    def _start_new_object(self) -> None:
        """The next object gets id max + 1 and starts from nothing (no stale session of an earlier object)."""
        self.object_id = int(np.max(self.labels.data)) + 1 if self.labels.data.size else 1
        self.labels.selected_label = self.object_id
        self._close_sessions(self.object_id)

    def cancel(self) -> None:
        """Drop the current object: its pixels go back to what they were, its clicks are removed."""
        if self.labels is None:
            return
        self.cancel_jobs()
        for (index, object_id), base in list(self._bases.items()):
            if object_id == self.object_id:
                L.write_object(self.labels, index, np.zeros(base.shape, bool), object_id, base, overwrite=True)
                del self._bases[(index, object_id)]
        self._close_sessions(self.object_id)
        self._clear_prompts()
        self.changed.emit()

    def _clear_prompts(self) -> None:
        """Remove every click and box (a new object starts from none)."""
        with self._mute():
            self.points.data = np.zeros((0, self.points.ndim))
            self.points.features = {L.SIGN_FEATURE: np.zeros(0, dtype=bool)}
            if self.boxes is not None and len(self.boxes.data):
                self.boxes.data = []

    def reopen(self, label: int | None = None) -> None:
        """Continue refining a committed object (the selected label by default), its refined embedding kept."""
        if self.labels is None:
            return
        label = int(self.labels.selected_label if label is None else label)
        if label <= 0 or not (self.labels.data == label).any():
            show_info(f"FocSAM: label {label} is not in the Labels layer; pick one with the colour picker")
            return
        self.commit()
        self.object_id = label
        self.labels.selected_label = label
        session = self.session()
        prompts = session.prompts if session is not None else Prompts()
        with self._mute():
            L.replace_slice_points(self.points, self.image, self.index, prompts)
            if self.boxes is not None and self.takes_boxes:
                L.replace_slice_box(self.boxes, self.image, self.index, prompts.box)
        self.status.emit(f"re-opened object {label}" + ("" if session else " (no clicks recorded: new clicks replace it)"))
        self.changed.emit()

    def delete_object(self, label: int | None = None) -> None:
        """Remove an object (the selected label by default) from every slice."""
        if self.labels is None:
            return
        label = int(self.labels.selected_label if label is None else label)
        where = np.nonzero(self.labels.data == label)
        if where[0].size:
            self.labels.data_setitem(where, 0)
        self._close_sessions(label)
        if label == self.object_id:
            self.cancel()
        self.changed.emit()

    def write_masks(self, label: int, masks: Mapping[tuple[int, ...], np.ndarray]) -> int:
        """Write ``label``'s mask on several slices (e.g. a propagation through z) as one undoable step of the
        Labels layer. On each slice the label's pixels become the mask; other objects keep theirs unless
        ``overwrite``. For the current object, :meth:`cancel` still restores every slice. Returns pixels changed."""
        if self.labels is None:
            return 0
        changed = 0
        with _history_step(self.labels):
            for index, mask in masks.items():
                index = tuple(int(i) for i in index)
                base = L.slice_copy(self.labels, index)
                if label == self.object_id:
                    base = self._bases.setdefault((index, label), base)
                changed += L.write_object(self.labels, index, np.asarray(mask, bool), label, base,
                                          overwrite=self.overwrite)
        self.changed.emit()
        return changed

    def merge_labels(self, stack: np.ndarray) -> int:
        """Add a label stack (e.g. a batch result; its ids as they are) to the Labels layer as one undoable step.

        The current object is committed first. Only background pixels are filled, unless ``overwrite``: committed
        objects are never changed otherwise. The next object gets an id above every id now present. Returns the
        number of pixels changed."""
        if self.labels is None:
            return 0
        stack = np.asarray(stack)
        if stack.shape != self.labels.data.shape:
            raise ValueError(f"labels of shape {stack.shape} do not fit the Labels layer {self.labels.data.shape}")
        self.commit()
        changed = 0
        with _history_step(self.labels):
            for index in np.ndindex(*stack.shape[:-2]):
                new = stack[index]
                view = np.asarray(self.labels.data[index] if index else self.labels.data)
                take = (new != 0) & (new != view) & (self.overwrite | (view == 0))
                if take.any():
                    ys, xs = np.nonzero(take)
                    where = tuple(np.full(len(ys), i) for i in index) + (ys, xs)
                    self.labels.data_setitem(where, new[ys, xs].astype(self.labels.data.dtype))
                    changed += len(ys)
        self._start_new_object()
        self.changed.emit()
        return changed

    def _close_sessions(self, label: int) -> None:
        if self.manager is not None:
            for session in self.manager.objects():
                if session.object_id == label:
                    self.manager.close_object(session)

    # ------------------------------------------------------------------ embeddings
    def embed_current(self) -> None:
        """Embed the shown slice in the background (with a progress bar) so the first click is fast."""
        if self.ready:
            self._embed(self.index, progress=True)

    def _on_slice_changed(self, event: Any = None) -> None:
        if not self.ready:
            return
        self.embed_current()
        if self.prefetch:
            index = self.index
            for step in (-1, 1):
                if index:
                    neighbour = (*index[:-1], index[-1] + step)
                    if 0 <= neighbour[-1] < self.image.data.shape[len(index) - 1]:
                        self._embed(neighbour, progress=False)

    def _embed(self, index: tuple[int, ...], progress: bool) -> None:
        args = (self.manager, self.image.data, index, self.image.rgb, tuple(self.image.contrast_limits))
        label = f"Embedding slice {index}" if index else "Embedding image"
        self._start(_embed_slice, args, {}, self._on_embedded, progress=label if progress else None)

    def _on_embedded(self, result: tuple[tuple[int, ...], str, float | None]) -> None:
        index, key, seconds = result
        self._keys[index] = key
        if seconds is not None:
            self.last_embed_seconds = seconds
            self.status.emit(f"embedded slice {index} in {seconds:.1f} s" if index else f"embedded in {seconds:.1f} s")
        self.changed.emit()

    # ------------------------------------------------------------------ plumbing
    def _new_token(self) -> CancelToken:
        if self._token is not None:
            self._token.cancel()
        self._token = CancelToken()
        return self._token

    def cancel_jobs(self) -> None:
        """Abandon the running click job (its result will be dropped)."""
        if self._token is not None:
            self._token.cancel()
        self._job += 1

    @property
    def busy(self) -> bool:
        return bool(self._workers)

    def _start(self, func: Any, args: tuple, kwargs: dict, on_done: Any, *, token: CancelToken | None = None,
               progress: str | None = None) -> Any:
        extra = {"_progress": {"total": 0, "desc": progress}} if progress else {}
        worker = create_worker(_guarded, func, *args, **kwargs, **extra)

        def returned(result: Any) -> None:
            if isinstance(result, _Failure):
                self._on_error(result.error)
            else:
                on_done(result)

        worker.returned.connect(returned)
        worker.finished.connect(lambda: self._workers.discard(worker))
        self._workers.add(worker)
        worker.start()
        return worker

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            return
        show_error(f"FocSAM: {exc}")
        self.status.emit(f"error: {exc}")

    def _on_layer_removed(self, event: Any) -> None:
        if event.value in (self.image, self.points, self.labels, self.boxes):
            name = event.value.name
            self.detach()
            show_warning(f"FocSAM: layer '{name}' was removed; choose the layers again to continue")
            self.changed.emit()

    def _mute(self) -> _Muted:
        return _Muted(self)

    def wait(self, timeout: float = 60.0) -> None:
        """Block (processing Qt events) until no job is running: for notebooks and tests."""
        from qtpy.QtWidgets import QApplication

        deadline = time.monotonic() + timeout
        while self._workers:
            if time.monotonic() > deadline:
                raise TimeoutError("FocSAM jobs still running")
            QApplication.processEvents()
            time.sleep(0.005)
        QApplication.processEvents()


def _history_step(labels: Labels) -> Any:
    """Group several writes into one undo step of the Labels layer where napari supports it."""
    block = getattr(labels, "block_history", None)
    return block() if callable(block) else contextlib.nullcontext()


@dataclass
class _Failure:
    error: BaseException


def _guarded(func: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``func`` in the worker; a failure comes back as a value so it is reported once, on the main thread."""
    try:
        return func(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure must reach the user as a message, never crash napari
        return _Failure(exc)


class _Muted:
    def __init__(self, controller: AnnotationController) -> None:
        self.controller = controller

    def __enter__(self) -> None:
        self.controller._muted = True

    def __exit__(self, *exc: object) -> None:
        self.controller._muted = False


def _read_slice(data: Any, index: tuple[int, ...], rgb: bool) -> np.ndarray:
    return take_slice(data, index, rgb=rgb)


def _embed_slice(manager: ModelManager, data: Any, index: tuple[int, ...], rgb: bool,
                 contrast: tuple[float, float]) -> tuple[tuple[int, ...], str, float | None]:
    image = _read_slice(data, index, rgb)
    embedding = manager.embed(image, rgb=rgb, contrast_limits=None if rgb else contrast)
    info = manager.last_embed
    seconds = info.seconds if info is not None and info.key == embedding.key and not info.from_cache else None
    return index, embedding.key, seconds


def _compute_object(job: int, manager: ModelManager, data: Any, index: tuple[int, ...], rgb: bool,
                    contrast: tuple[float, float], object_id: int, prompts: Prompts,
                    token: CancelToken) -> JobResult:
    """Worker side of one click: embedding (cached), the object's session, replay to the current clicks."""
    start = time.perf_counter()
    image = _read_slice(data, index, rgb)
    embedding = manager.embed(image, rgb=rgb, contrast_limits=None if rgb else contrast, cancel=token)
    info = manager.last_embed
    embedded = info.seconds if info is not None and info.key == embedding.key and not info.from_cache else None
    session = manager.get_object(embedding, object_id) or manager.new_object(embedding, object_id)
    mask = session.sync(prompts, cancel=token)
    step = session.current
    timings = dict(step.prediction.timings) if step is not None else {}
    seconds = time.perf_counter() - start - (embedded or 0.0)
    return JobResult(job, index, object_id, mask, embedding.key, seconds, timings, embedded)
