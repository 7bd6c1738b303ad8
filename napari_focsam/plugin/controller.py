"""The annotation controller: napari layer events → engine calls in worker threads → Labels writes.

Rules it keeps (details in ``docs/napari.md``, "How clicks become masks"):

* model work (loading, embedding, decoding, refining) runs only in the :class:`~napari_focsam.engine.jobs.JobRunner`'s
  threads, never on the GUI thread; layers are read for the request and written with the result on the GUI thread;
* a click's job starts at the mouse press, before napari adds the point at the release (:mod:`.click_requests`);
* click jobs are keyed by (slice, object): latest wins *per key* — a job on one slice never drops another slice's
  result — and requests coalesce (one running job per key, one pending request with the latest prompts);
* committing an object lets its jobs finish and write their masks; only :meth:`AnnotationController.cancel` (and
  undo/redo on that slice, deleting the object, choosing other layers) discards them;
* prefetch embeddings (slices, tiles) run on the runner's low-priority background thread: no click waits for them;
* a failed job shows a notification and leaves every layer as it was.

Box prompts come from a Shapes layer: the latest rectangle on a slice is the current object's box there (models that
take boxes only; for the others it is ignored with one message). Its other shapes are the object's region
(polygons, lassos) and scribbles (paths), see :mod:`.shape_input`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_info, show_warning
from napari.viewer import Viewer
from psygnal import Signal

from ..engine.jobs import Job
from ..engine.manager import ModelManager
from ..engine.object_commits import ObjectCommits
from ..engine.session import ObjectSession
from ..engine.types import CancelToken, Prompts
from . import layers as L
from . import shape_layers as S
from .click_requests import CLICK, ClickRequests
from .gui_jobs import GuiJobs
from .image_source import ImageSource, check_geometry
from .label_base import restore
from .label_edits import LabelEdits
from .prompt_input import PromptInput
from .shape_input import ShapeInput
from .stability_view import StabilityView
from .tiles_view import TilesView
from .work import ClickResult, TileSettings
from .zoom_view import ZoomView


class AnnotationController(ImageSource, ClickRequests, ZoomView, TilesView, PromptInput, ShapeInput, StabilityView,
                           LabelEdits, GuiJobs, ObjectCommits):
    """Drives one image / clicks / labels triple with a :class:`ModelManager` (layers read and written on the GUI
    thread, model work in the job runner's threads)."""

    status = Signal(str)
    changed = Signal()
    progress = Signal(str, int, int)  # (what, done, total) of the running load/embedding; ("", 0, 0) when it ends

    def __init__(self, viewer: Viewer) -> None:
        self.viewer = viewer
        self.manager: ModelManager | None = None
        self.image: Image | None = None
        self.points: Points | None = None
        self.labels: Labels | None = None
        self.boxes: Shapes | None = None
        self.channel_layers: list[Image] = []  # the channels the model sees (none: the image alone)
        self.object_id = 1
        self.overwrite = False
        self.prefetch = False
        self.zooms = {}  # (slice, object) -> ZoomedObject: the object decoded on its zoom (plugin/zoom_view.py)
        self.auto_zoom = True  # zoom in on small objects after their first click
        self.tiles = TileSettings()  #: large slices in tiles (engine/tiles.py): when, tile size, halo
        self.next_positive = True
        self.last_click_seconds: float | None = None
        self.last_embed_seconds: float | None = None
        self._bases: dict[tuple[tuple[int, ...], int], np.ndarray] = {}
        self._keys: dict[tuple[int, ...], str] = {}  # slice -> embedding key of the current model
        # (manager, slice, input signature) -> embedding key, while the image data is unchanged: clicks skip
        # converting and hashing the slice again (cleared when the image layer's data is replaced)
        self._known: dict[tuple[Any, ...], str] = {}
        self._committing: set[int] = set()  # committed objects whose jobs still run
        self._init_jobs()
        self._init_shapes()
        self._init_stability()
        self._init_requests()
        self._muted = False
        self._boxes_warned = False  # "this model takes no boxes" was shown for the current manager
        self._box_ignored = False  # the latest request had a box the model does not take
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.dims.events.current_step.connect(self._on_slice_changed)

    # ------------------------------------------------------------------ set-up
    def set_manager(self, manager: ModelManager) -> None:
        """Use ``manager`` from now on. Click jobs already running finish with the model they started with (their
        masks belong to the clicks shown); the next click on a slice recomputes it with the new model."""
        self.jobs.cancel(lambda key: key[0] != CLICK)  # embeddings for the old model: no longer wanted
        self.jobs.cancel_background()
        self.manager = manager
        self._boxes_warned = False
        self._keys.clear()
        self._known.clear()
        self.zooms.clear()
        self.status.emit(f"{manager.display_name} on {manager.device}")
        self.changed.emit()
        self.embed_current()

    def load_model(self, name: str, checkpoint: str | None = None, device: str = "auto", *,
                   on_finished: Callable[[], None] | None = None, **kwargs: Any) -> Job:
        """Load a model in a worker; the result replaces the current manager. Returns the job."""
        self.status.emit(f"loading {name} …")
        return self.run_job(lambda token: ModelManager.load(name, checkpoint, device=device, **kwargs),
                            self.set_manager, key=("load",), progress=f"Loading {name}", on_finished=on_finished)

    def attach(self, image: Image, points: Points | None = None, labels: Labels | None = None,
               boxes: Shapes | None = None, channels: list[Image] | None = None) -> None:
        """Work on ``image``, reading clicks from ``points``, boxes from ``boxes`` and writing into ``labels``
        (missing layers are created); the model sees ``channels`` mixed (image layers of its grid, see
        :meth:`set_channels`) or the image alone. An image with a non-positive scale, or labels on another grid, is
        refused with a message (nothing is attached)."""
        check_geometry(image, labels)
        self.detach()
        self.image = image
        try:
            self.set_channels(channels)  # embeds the shown slice while the layers below are made and drawn
        except Exception:
            self.image = None  # bad channels: nothing is attached
            raise
        self.labels = labels if labels is not None else L.make_labels_layer(self.viewer, image)
        self.boxes = boxes if boxes is not None else L.make_shapes_layer(self.viewer, image)
        self.points = points if points is not None else L.make_points_layer(self.viewer, image)
        if L.SIGN_FEATURE not in self.points.features:
            self.points.features = {L.SIGN_FEATURE: np.ones(len(self.points.data), dtype=bool)}
        L.style_points(self.points)
        S.ensure_sign_feature(self.boxes, self.next_positive)
        self.boxes.mouse_drag_callbacks.insert(0, self._shape_sign_from_mouse)
        self.points.events.data.connect(self._on_points_data)
        self.boxes.events.data.connect(self._on_boxes_data)
        self.image.events.data.connect(self._on_image_data)
        self.points.mouse_drag_callbacks.insert(0, self._mouse_press)
        self.points.mode = "add"
        self.viewer.layers.selection.active = self.points  # clicks on the canvas go to the active layer
        self._start_new_object()
        self.changed.emit()

    def detach(self) -> None:
        """Stop working on the layers: every click job is discarded (nothing more is written into them)."""
        self.cancel_jobs()
        self.cancel_stability()
        self.jobs.cancel_background()
        if self.points is not None:
            self.points.events.data.disconnect(self._on_points_data)
            if self._mouse_press in self.points.mouse_drag_callbacks:
                self.points.mouse_drag_callbacks.remove(self._mouse_press)
        if self.boxes is not None:
            self.boxes.events.data.disconnect(self._on_boxes_data)
            if self._shape_sign_from_mouse in self.boxes.mouse_drag_callbacks:
                self.boxes.mouse_drag_callbacks.remove(self._shape_sign_from_mouse)
        if self.image is not None:
            self.image.events.data.disconnect(self._on_image_data)
        for layer in self.channel_layers:
            if layer is not self.image:
                layer.events.data.disconnect(self._on_image_data)
        self.channel_layers = []
        self.image = self.points = self.labels = self.boxes = None
        self._bases.clear()
        self._keys.clear()
        self._known.clear()
        self.zooms.clear()
        self._committing.clear()
        self._init_shapes()

    @property
    def ready(self) -> bool:
        return self.manager is not None and self.image is not None

    @property
    def index(self) -> tuple[int, ...]:
        return L.current_index(self.viewer, self.image) if self.image is not None else ()

    # ------------------------------------------------------------------ requests
    def _submit_click(self, index: tuple[int, ...], object_id: int, work: Callable[[CancelToken], Any]) -> None:
        """A click job decoded on the object's zoom (its stability is not computed)."""
        self.jobs.submit((CLICK, index, object_id), work, lambda result: self._on_result(self._zoom_done(result)),
                         self._on_error, on_finished=lambda: self._job_finished(object_id), threads="interactive")

    def _on_result(self, result: ClickResult) -> None:
        if self.labels is None:
            return  # detached meanwhile
        if self.labels not in self.viewer.layers:
            show_warning("FocSAM: the Labels layer was removed while the mask was computed; nothing was written")
            return
        self._write_click(result)
        if result.manager is self.manager:
            self._keys[result.index] = result.embedding_key
        self.last_click_seconds = result.seconds
        if result.embedded is not None:
            self.last_embed_seconds = result.embedded
        parts = [f"click {1000 * result.seconds:.0f} ms"]
        parts += [f"{k} {1000 * v:.0f} ms" for k, v in result.timings.items()]
        if self._box_ignored and self.manager is not None:
            parts.append(f"box ignored: {self.manager.display_name} takes clicks only")
        self.status.emit(", ".join(parts))
        self.changed.emit()

    def _jobs_of(self, object_id: int) -> list[Hashable]:
        return self.jobs.active(lambda key: key[0] == CLICK and key[2] == object_id)

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
        if self._forget_press():
            self.status.emit(f"{which} ignored: a click was under way (the mouse button held)")
            return
        if (self.index, self.object_id) in self.zooms:
            self.cancel_stability()
            self.jobs.cancel((CLICK, self.index, self.object_id))
            self._step_zoom(which)
            return
        session = self.session()
        if session is None:
            self._step_tiled(which)
            return
        index = self.index
        self.cancel_stability()
        self.jobs.cancel((CLICK, index, self.object_id))  # undo/redo act on the recorded steps
        mask = session.undo() if which == "undo" else session.redo()
        with self._mute():
            L.replace_slice_points(self.points, self.image, index, session.prompts)
            if self.boxes is not None and self.takes_boxes:
                L.replace_slice_box(self.boxes, self.image, index, session.prompts.box)
        self._restore_shapes(index, session.prompts)
        base = self._bases.setdefault((index, self.object_id), L.slice_copy(self.labels, index))
        L.write_object(self.labels, index, mask, self.object_id, base, overwrite=self.overwrite)
        self.changed.emit()
        self.request_stability(index, self.object_id)

    def commit(self) -> None:
        """Keep the current object as it is in the Labels layer and start the next one (id = max + 1). Its jobs
        still running finish and write their masks; then its sessions keep only what re-opening needs."""
        if self.labels is None:
            return
        self._forget_press()
        self._clear_prompts()
        self._forget_zooms(self.object_id)
        self._commit_current()
        self.status.emit(f"committed; now object {self.object_id}")
        self.changed.emit()

    def _start_new_object(self) -> None:
        """The next object gets an id above every id in the Labels layer and every id still computing, and starts
        from nothing (no stale session of an earlier object)."""
        assert self.labels is not None  # attached
        busy = [key[2] for key in self.jobs.active(lambda key: key[0] == CLICK)]
        self._begin_object(int(np.max(self.labels.data)) if self.labels.data.size else 0, busy)
        self.labels.selected_label = self.object_id

    def cancel(self) -> None:
        """Drop the current object: its jobs are discarded, its pixels go back to what they were, its clicks are
        removed."""
        if self.labels is None:
            return
        self._forget_press()
        self.cancel_stability()
        self.cancel_tile_prefetch()
        self.stabilities.pop(self.object_id, None)
        self.jobs.cancel(lambda key: key[0] == CLICK and key[2] == self.object_id)
        for (index, object_id), base in list(self._bases.items()):
            if object_id == self.object_id:
                # the slice as it was (a label being refined keeps its pixels there)
                restore(self.labels, index, base, object_id)
                del self._bases[(index, object_id)]
        self._close_sessions(self.object_id)
        self._forget_zooms(self.object_id)
        self._forget_shapes(self.object_id)
        self._clear_prompts()
        self.changed.emit()

    def _clear_prompts(self) -> None:
        """Remove every click and box (a new object starts from none)."""
        assert self.points is not None  # attached
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
        self.wait(match=lambda key: key[0] == CLICK and key[2] == label)  # its last clicks written first
        self._committing.discard(label)
        self.object_id = label
        self.labels.selected_label = label
        session = self.session()
        if session is not None and self.manager is not None:
            self.manager.reopen_object(session)
        prompts = session.prompts if session is not None else Prompts()
        with self._mute():
            L.replace_slice_points(self.points, self.image, self.index, prompts)
            if self.boxes is not None and self.takes_boxes:
                L.replace_slice_box(self.boxes, self.image, self.index, prompts.box)
        self._restore_shapes(self.index, prompts)
        note = "" if session else " (no clicks recorded: new clicks replace it)"
        self.status.emit(f"re-opened object {label}{note}")
        self.changed.emit()

    def delete_object(self, label: int | None = None) -> None:
        """Remove an object (the selected label by default) from every slice."""
        if self.labels is None:
            return
        label = int(self.labels.selected_label if label is None else label)
        self.jobs.cancel(lambda key: key[0] == CLICK and key[2] == label)
        self._committing.discard(label)
        if label != self.object_id:
            self._bases = {k: v for k, v in self._bases.items() if k[1] != label}
        where = np.nonzero(self.labels.data == label)
        if where[0].size:
            self.labels.data_setitem(where, 0)
        self._close_sessions(label)
        self._forget_zooms(label)
        if label == self.object_id:
            self.cancel()
        self.changed.emit()

    # ------------------------------------------------------------------ plumbing
    def cancel_jobs(self) -> None:
        """Discard every click job (running ones stop between model steps; no result of theirs is written)."""
        self._pressed = None
        self.jobs.cancel(lambda key: key[0] == CLICK)
        self._committing.clear()

    def _on_image_data(self, event: Any = None) -> None:
        self._known.clear()  # new pixels: the next click converts and hashes the slice again

    def _on_layer_removed(self, event: Any) -> None:
        if event.value is self.unstable_layer:
            self.unstable_layer = None
        if event.value in self.channel_layers and event.value is not self.image:
            self.set_channels([layer for layer in self.channel_layers if layer is not event.value])
            show_warning(f"FocSAM: channel layer '{event.value.name}' was removed; the model sees the others")
        if event.value in (self.image, self.points, self.labels, self.boxes):
            name = event.value.name
            self.detach()
            show_warning(f"FocSAM: layer '{name}' was removed; choose the layers again to continue")
            self.changed.emit()

    def _mute(self) -> _Muted:
        return _Muted(self)


class _Muted:
    def __init__(self, controller: AnnotationController) -> None:
        self.controller = controller

    def __enter__(self) -> None:
        self.controller._muted = True

    def __exit__(self, *exc: object) -> None:
        self.controller._muted = False
