"""The "Stack tools" section of the FocSAM annotator: precompute a stack's embeddings, propagate an object through z,
segment a whole stack from a prompts file, and segment everything. What each action computes is in
:mod:`.stack_work`; this module is the GUI side.

Each action runs :mod:`napari_focsam.stack` in a worker thread started through the controller's ``run_job`` (never on
the GUI thread), one action at a time, with a napari progress bar counting slices and a Cancel button. A failure becomes
a notification and leaves every layer as it was; removing the image (or labels) layer a job works on stops it, and
nothing is written. Results are written on the main thread only.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QObject, Signal, Slot
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from ..engine.manager import ModelManager
from ..engine.types import CancelToken
from ..stack import PropagationResult
from . import layers as L
from .controller import AnnotationController
from .stack_work import (
    PrecomputeSummary,
    everything_labels,
    precompute_into_cache,
    precompute_into_store,
    propagate_from_slice,
    segment_prompts_file,
    store_path,
)

EVERYTHING_LAYER = "FocSAM everything"
BATCH_LAYER = "FocSAM batch"

STACK_HELP = (
    "<b>Precompute stack</b>: embed every slice of the image now (progress bar; Cancel and run again to resume), "
    "so clicks on any slice are instant. Into the model's cache, or into a store in the folder given (kept on disk, "
    "reused next time; made for this model and these contrast limits).<br>"
    "<b>Propagate object through z</b>: the selected label's (else the current object's) mask on this slice is "
    "carried to the slices above and below until the object ends; on those slices the label becomes the result "
    "(other objects kept unless <i>overwrite</i>). One undo step of the labels layer.<br>"
    "<b>Batch from prompts file</b>: CSV/JSON of clicks and boxes (slice, object_id, y, x in image pixels; see the "
    f"README) segmented on the whole image into a new labels layer \u201c{BATCH_LAYER}\u201d; with <i>into the labels "
    "layer</i> the current object is committed and only background pixels are filled."
)


# ---------------------------------------------------------------------- GUI side
class _Relay(QObject):
    """Carries progress from a worker thread to the GUI thread (a queued signal)."""

    advanced = Signal(int, int, int)  # job number, slices done, total


@dataclass(eq=False)
class StackJob:
    """One running (or finished) stack action."""

    number: int
    name: str
    image: Image
    labels: Labels | None
    token: CancelToken
    pbar: Any
    worker: Any = None
    done: int = 0
    total: int = 0
    stopped: str | None = None  #: why it was stopped before finishing (e.g. its layer was removed)
    result: Any = None
    delivered: bool = False  #: the result reached the GUI thread and was used


class StackPanel(QCollapsible):
    """Precompute / propagate / batch buttons, a store folder and a prompts file; see :data:`STACK_HELP`."""

    def __init__(self, controller: AnnotationController,
                 image_source: Callable[[], Image | None] | None = None) -> None:
        super().__init__("Stack tools")
        self.controller = controller
        self.viewer = controller.viewer
        self._image_source = image_source
        self.job: StackJob | None = None
        self.last_job: StackJob | None = None
        self._numbers = itertools.count(1)
        self._relay = _Relay()
        self._relay.advanced.connect(self._on_advanced)

        content = QWidget()
        layout = QVBoxLayout(content)
        layout.setContentsMargins(0, 0, 0, 0)
        self.store_edit = QLineEdit()
        self.store_edit.setPlaceholderText("store folder (empty: the model's cache)")
        self.store_edit.setToolTip("where precomputed embeddings are kept on disk (a stack store per image and model)")
        layout.addLayout(_row(self.store_edit, _button("…", "choose a folder for the stores", self._browse_store)))
        self.replace_box = QCheckBox("replace a store made for other settings")
        self.replace_box.setToolTip("a store made with another model, contrast limits or data is replaced (off: "
                                    "it is reported and left alone)")
        layout.addWidget(self.replace_box)
        self.precompute_button = _button("Precompute stack", "embed every slice now (resumable)", self.precompute)
        self.propagate_button = _button("Propagate object through z",
                                        "carry the label's mask on this slice to the slices above and below",
                                        self.propagate)
        layout.addLayout(_row(self.precompute_button, self.propagate_button))
        self.prompts_edit = QLineEdit()
        self.prompts_edit.setPlaceholderText("prompts file (.csv / .json)")
        layout.addLayout(_row(self.prompts_edit, _button("…", "choose a prompts file", self._browse_prompts)))
        self.into_labels_box = QCheckBox("into the labels layer (background only)")
        self.into_labels_box.setToolTip(f"off: the result is a new labels layer '{BATCH_LAYER}'; on: it fills the "
                                        "background of the labels layer (committed objects stay unless "
                                        "'overwrite committed objects')")
        self.batch_button = _button("Batch from prompts file", "segment every object of the prompts file",
                                    lambda: self.batch())
        layout.addLayout(_row(self.batch_button, self.into_labels_box))
        self.everything_button = _button("Segment everything", "an instance labels layer of every object the model "
                                         "finds on the image (each slice of a stack); re-open an object to refine "
                                         "it by clicking", lambda: self.everything())
        layout.addWidget(self.everything_button)
        self.cancel_button = _button("Cancel", "stop the running stack job (a precompute resumes next time)",
                                     self.cancel)
        self.cancel_button.setEnabled(False)
        layout.addWidget(self.cancel_button)
        help_label = QLabel(STACK_HELP)
        help_label.setWordWrap(True)
        layout.addWidget(help_label)
        self.addWidget(content)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)

    # ------------------------------------------------------------------ actions
    def precompute(self) -> Any:
        """Embed every slice of the image (into the store folder if one is given). Returns the worker, or None."""
        ready = self._ready("precompute", stack=True)
        if ready is None:
            return None
        manager, image = ready
        rgb, limits = _display(image)
        folder = self.store_edit.text().strip()
        func: Callable[..., Any]
        args: tuple[Any, ...]
        if folder:
            path = store_path(folder, image.name, manager.name)
            func, args = precompute_into_store, (manager, image.data, rgb, limits, path, self.replace_box.isChecked())
        else:
            func, args = precompute_into_cache, (manager, image.data, rgb, limits)
        return self._run("precompute stack", func, args, image, None, self._precomputed)

    def propagate(self) -> Any:
        """Propagate the selected label (else the current object) from the shown slice through z."""
        ready = self._ready("propagate", stack=True, labels=True)
        if ready is None:
            return None
        manager, image = ready
        c = self.controller
        assert c.labels is not None  # _ready(labels=True)
        index = c.index
        current = L.slice_copy(c.labels, index)
        label = next((int(v) for v in (c.labels.selected_label, c.object_id) if v > 0 and (current == v).any()), None)
        if label is None:
            self._say(f"propagate: label {c.labels.selected_label} has no pixels on this slice; segment the object "
                      "here first (or pick its label with the colour picker)", warn=True)
            return None
        rgb, limits = _display(image)
        args = (manager, image.data, rgb, limits, index, current == label)
        return self._run(f"propagate object {label}", propagate_from_slice, args, image, c.labels,
                         lambda job, result: self._propagated(job, result, label, index))

    def batch(self, path: str | os.PathLike[str] | None = None) -> Any:
        """Segment the image from a prompts file (``path``, else the file field) into a new labels layer, or into
        the labels layer with *into the labels layer*."""
        path = os.fspath(path) if path is not None else self.prompts_edit.text().strip()
        if not path:
            self._say("batch: choose a prompts file (.csv or .json) first", warn=True)
            return None
        self.prompts_edit.setText(path)
        into = self.into_labels_box.isChecked()
        ready = self._ready("batch", stack=False, labels=into)
        if ready is None:
            return None
        manager, image = ready
        rgb, limits = _display(image)
        args = (manager, image.data, rgb, limits, Path(path).expanduser())
        return self._run(f"batch from {Path(path).name}", segment_prompts_file, args, image,
                         self.controller.labels if into else None,
                         lambda job, result: self._batched(job, result, into))

    def everything(self) -> Any:
        """Segment everything in the image (each slice of a stack) into a new labels layer, which becomes the layer
        annotated when the image is the one annotated (so its objects can be re-opened and refined)."""
        ready = self._ready("segment everything", stack=False)
        if ready is None:
            return None
        manager, image = ready
        rgb, limits = _display(image)
        args = (manager, image.data, rgb, limits, L.grid_ndim(image))
        return self._run("segment everything", everything_labels, args, image, None, self._everything_done)

    def cancel(self) -> None:
        """Stop the running stack job at its next slice."""
        if self.job is not None:
            self.job.token.cancel()
            self._say(f"{self.job.name}: cancelling …")

    @property
    def busy(self) -> bool:
        return self.job is not None

    # ------------------------------------------------------------------ results (GUI thread)
    def _precomputed(self, job: StackJob, result: PrecomputeSummary) -> None:
        where = f"store {result.store}" if result.store is not None else "the model's cache"
        self._say(f"precomputed {result.n_slices} slices into {where}: {result.computed} embedded, "
                  f"{result.reused} already there, in {result.seconds:.1f} s")
        self.controller.changed.emit()

    def _propagated(self, job: StackJob, result: PropagationResult, label: int, index: tuple[int, ...]) -> None:
        if not self._same_labels(job):
            return
        masks = {(*index[:-1], z): result.mask(z) for z in result.slices if z != index[-1]}
        changed = self.controller.write_masks(label, masks)
        reached = f"slices {min(result.slices)}\u2013{max(result.slices)}" if masks else "no other slice"
        stops = "; ".join(result.stops)
        self._say(f"object {label} propagated to {reached} ({changed} pixels changed); {stops}")

    def _batched(self, job: StackJob, result: np.ndarray, into: bool) -> None:
        objects = int(np.count_nonzero(np.unique(result)))
        if into:
            if not self._same_labels(job):
                return
            assert job.labels is not None  # the labels layer annotated (checked just above)
            changed = self.controller.merge_labels(result)
            self._say(f"batch: {objects} objects; {changed} pixels filled in '{job.labels.name}'")
            return
        layer = self.viewer.add_labels(result, name=BATCH_LAYER, **L.grid_of(job.image))
        self._say(f"batch: {objects} objects in the new labels layer '{layer.name}'")

    def _everything_done(self, job: StackJob, result: np.ndarray) -> None:
        objects = int(np.count_nonzero(np.unique(result)))
        layer = self.viewer.add_labels(result, name=EVERYTHING_LAYER, **L.grid_of(job.image))
        c = self.controller
        if c.image is job.image:
            c.attach(job.image, c.points, layer, c.boxes, c.channel_layers)
        self._say(f"segment everything: {objects} objects in the new labels layer '{layer.name}'")

    # ------------------------------------------------------------------ plumbing
    def _same_labels(self, job: StackJob) -> bool:
        """Whether the labels layer the job was started for is still the one annotated (else nothing is written)."""
        if job.labels is self.controller.labels and job.labels in self.viewer.layers:
            return True
        self._say(f"{job.name}: the labels layer changed while it ran; nothing was written", warn=True)
        return False

    def _ready(self, action: str, *, stack: bool, labels: bool = False) -> tuple[ModelManager, Image] | None:
        c = self.controller
        if self.job is not None:
            self._say(f"{action}: '{self.job.name}' is still running (wait, or Cancel it)", warn=True)
            return None
        if c.manager is None:
            self._say(f"{action}: load a model first (or choose the fallback)", warn=True)
            return None
        image = c.image if c.image is not None else (self._image_source() if self._image_source else None)
        if image is None or image not in self.viewer.layers:
            self._say(f"{action}: add an image layer and choose it first", warn=True)
            return None
        if labels and c.labels is None:
            self._say(f"{action}: press 'Use these layers' first (it needs the labels layer)", warn=True)
            return None
        if image.multiscale:
            self._say(f"{action}: multiscale images are not supported", warn=True)
            return None
        if stack and L.spatial_ndim(image) < 1:
            self._say(f"{action}: needs a 3D stack or a time series; a 2D image is embedded when it is shown",
                      warn=True)
            return None
        return c.manager, image

    def _run(self, name: str, func: Any, args: tuple, image: Image, labels: Labels | None,
             on_done: Callable[[StackJob, Any], None]) -> Any:
        token = CancelToken()
        number = next(self._numbers)
        pbar = napari_progress(total=0, desc=f"FocSAM: {name}")
        job = StackJob(number, name, image, labels, token, pbar)
        relay = self._relay

        def report(done: int, total: int) -> None:  # in the worker thread
            relay.advanced.emit(number, int(done), int(total))

        def delivered(result: Any) -> None:
            job.result = result
            if job.stopped is None and job is self.job:
                job.delivered = True
                on_done(job, result)

        self.job = job
        self._set_busy(True)
        self._say(f"{name} …")
        job.worker = self.controller.run_job(lambda _: func(*args, progress=report, cancel=token), delivered,
                                             token=token, on_finished=lambda: self._finished(job))
        return job.worker

    @Slot(int, int, int)
    def _on_advanced(self, number: int, done: int, total: int) -> None:
        job = self.job
        if job is None or job.number != number:
            return
        job.done, job.total = done, total
        if job.pbar.total != total:
            job.pbar.total = total
        if done > job.pbar.n:
            job.pbar.update(done - job.pbar.n)

    def _finished(self, job: StackJob) -> None:
        job.pbar.close()
        if job is self.job:
            self.job = None
            self.last_job = job
            self._set_busy(False)
        if job.stopped is not None:
            self._say(f"{job.name} stopped: {job.stopped}; nothing was written")
        elif not job.delivered and job.token.cancelled:
            resume = " (run it again to resume)" if job.name == "precompute stack" else ""
            self._say(f"{job.name} cancelled after {job.done} of {job.total} slices{resume}")

    def _on_layer_removed(self, event: Any) -> None:
        job = self.job
        if job is not None and event.value in (job.image, job.labels) and job.stopped is None:
            job.stopped = f"the layer '{event.value.name}' was removed"
            job.token.cancel()
            show_warning(f"FocSAM: {job.name}: the layer '{event.value.name}' was removed; the job is stopped and "
                         "nothing is written")

    def _set_busy(self, busy: bool) -> None:
        for button in (self.precompute_button, self.propagate_button, self.batch_button, self.everything_button):
            button.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)

    def _say(self, text: str, *, warn: bool = False) -> None:
        if warn:
            show_warning(f"FocSAM: {text}")
        elif not text.endswith("…"):  # a job starting: its progress bar says so
            show_info(f"FocSAM: {text}")
        self.controller.status.emit(text)

    def _browse_store(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for precomputed embeddings")
        if folder:
            self.store_edit.setText(folder)

    def _browse_prompts(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Prompts file", "", "Prompts (*.csv *.json);;All files (*)")
        if path:
            self.prompts_edit.setText(path)


def _display(image: Image) -> tuple[bool, tuple[float, float] | None]:
    """``rgb`` and the contrast limits exactly as the controller embeds the slices (so the keys are the same)."""
    if image.rgb:
        return True, None
    low, high = (float(v) for v in image.contrast_limits)
    return False, (low, high)


def _button(text: str, tip: str, slot: Callable[[], Any]) -> QPushButton:
    button = QPushButton(text)
    button.setToolTip(tip)
    button.clicked.connect(lambda *_: slot())
    return button


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row
