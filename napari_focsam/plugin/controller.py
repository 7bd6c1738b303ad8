"""The annotation controller: napari layer events → engine calls in worker threads → Labels writes.

Rules it keeps:

* model work (loading, embedding, decoding, refining) runs only in napari thread workers, never on the GUI thread;
* layers are read for the request and written with the result on the main thread only;
* the latest click wins: a newer request cancels the older one (it stops at its next stage boundary) and a stale
  result is dropped;
* a failed job shows a notification and leaves every layer as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Points
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
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.dims.events.current_step.connect(self._on_slice_changed)

    # ------------------------------------------------------------------ set-up
    def set_manager(self, manager: ModelManager) -> None:
        self.cancel_jobs()
        self.manager = manager
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

    def attach(self, image: Image, points: Points | None = None, labels: Labels | None = None) -> None:
        """Work on ``image``, reading clicks from ``points`` and writing into ``labels`` (created if missing)."""
        self.detach()
        self.image = image
        self.points = points if points is not None else L.make_points_layer(self.viewer, image)
        self.labels = labels if labels is not None else L.make_labels_layer(self.viewer, image)
        if L.SIGN_FEATURE not in self.points.features:
            self.points.features = {L.SIGN_FEATURE: np.ones(len(self.points.data), dtype=bool)}
        L.style_points(self.points)
        self.points.events.data.connect(self._on_points_data)
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
        self.image = self.points = self.labels = None
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
        prompts, _ = L.prompts_for_slice(self.points, self.image, index)
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
        base = self._bases.setdefault((index, self.object_id), L.slice_copy(self.labels, index))
        L.write_object(self.labels, index, mask, self.object_id, base, overwrite=self.overwrite)
        self.changed.emit()

    def commit(self) -> None:
        """Keep the current object as it is in the Labels layer and start the next one (id = max + 1)."""
        if self.labels is None:
            return
        self.cancel_jobs()
        with self._mute():
            self.points.data = np.zeros((0, self.points.ndim))
            self.points.features = {L.SIGN_FEATURE: np.zeros(0, dtype=bool)}
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
        with self._mute():
            self.points.data = np.zeros((0, self.points.ndim))
            self.points.features = {L.SIGN_FEATURE: np.zeros(0, dtype=bool)}
        self.changed.emit()

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
        if event.value in (self.image, self.points, self.labels):
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
