"""The "FocSAM annotator" dock widget: the view. All logic lives in :class:`AnnotationController`."""

from __future__ import annotations

from typing import Any

from napari.layers import Image, Labels, Points, Shapes
from napari.utils.notifications import show_warning
from napari.viewer import Viewer
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..weights.registry import REGISTRY
from .channel_list import ChannelList
from .controller import AnnotationController
from .stack_panel import StackPanel

MODELS: tuple[tuple[str, str], ...] = (
    ("FocSAM ViT-H", "focsam_vit_h"),
    ("SAM ViT-B", "sam_vit_b"),
    ("SAM ViT-L", "sam_vit_l"),
    ("SAM ViT-H", "sam_vit_h"),
    ("Fallback (no model: watershed)", "fallback"),
)
# ---- HQ-SAM and PA-SAM (docs/models.md); the registry's description is each item's tooltip ----
MODELS = (*MODELS[:-1],
          ("HQ-SAM ViT-B (finer boundaries)", "sam_hq_vit_b"),
          ("HQ-SAM ViT-L (finer boundaries)", "sam_hq_vit_l"),
          ("HQ-SAM ViT-H (finer boundaries)", "sam_hq_vit_h"),
          ("PA-SAM ViT-L (prompt adapter; manual download)", "pa_sam_vit_l"),
          ("SegNext ViT-B SA×2 HQ (dense prompts; ~1 s per click on a 2-core CPU)", "segnext_vitb_sa2_hq"),
          ("SegNext ViT-B SA×2 (dense prompts; ~1 s per click on a 2-core CPU)", "segnext_vitb_sa2"),
          ("SegNext ViT-B SA×1 (dense prompts; ~1 s per click on a 2-core CPU)", "segnext_vitb_sa1"),
          MODELS[-1])
# ---- microscopy and medicine (docs/models.md): the name and the registry's one-line summary ----
MODELS = (*MODELS[:-1],
          *((f"{REGISTRY[n].display_name}: {REGISTRY[n].summary}", n)
            for n in ("microsam_vit_b_lm", "microsam_vit_l_lm", "microsam_vit_b_em_organelles",
                      "microsam_vit_l_em_organelles", "medsam_vit_b")),
          MODELS[-1])
DEVICES = ("auto", "cpu", "cuda", "mps")
#: (shown, ``ModelManager.load(precision=...)``)
PRECISION_CHOICES = (
    ("fast (bf16 where the device has it)", "fast"),
    ("float32 throughout", "float32"),
)
NEW_LAYER = "<new layer>"

#: (action, key, description): bound on the viewer and on the clicks/labels layers, shown in tooltips and help
SHORTCUTS = (
    ("commit", "c", "commit the object and start the next one"),
    ("commit", "n", "next object (same as commit)"),
    ("cancel", "Escape", "cancel the current object"),
    ("undo", "Control-Z", "undo the last click"),
    ("redo", "Control-Shift-Z", "redo"),
    ("toggle_sign", "t", "toggle the sign of the selected clicks (or of the next click)"),
    ("reopen", "r", "re-open the selected label and keep refining it"),
    ("refine_label", "Shift-R", "refine the selected label: it becomes the object's first prompt (a mask)"),
    ("refine_detail", "Shift-D", "refine detail: embed the object's box again at full resolution, decode there"),
    ("delete_object", "Shift-Delete", "delete the selected label everywhere"),
)
HELP = (
    "<b>Click</b> on the object: positive. <b>Shift+click</b> or <b>right click</b>: negative.<br>"
    "<b>Box</b> (SAM models): select the boxes layer, draw a rectangle (the latest one on a slice is the box; "
    "delete it to drop the box); select the clicks layer again to click.<br>"
    "<b>Polygon / lasso</b> on the shapes layer: adds to the object's region. <b>Path</b>: a scribble "
    "(Shift or right button at its start, or <b>T</b>: negative).<br>"
    "<b>Stacks</b> (3D, time series): <i>Stack tools</i> below: precompute, propagate through z, batch.<br>"
    + "<br>".join(f"<b>{key.replace('Control', 'Ctrl')}</b>: {text}" for _, key, text in SHORTCUTS)
)


class FocsamWidget(QWidget):
    """Pick a model, the layers, and annotate object by object."""

    def __init__(self, napari_viewer: Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.controller = AnnotationController(napari_viewer)
        layout = QVBoxLayout(self)
        layout.addWidget(self._model_box())
        layout.addWidget(self._layers_box())
        layout.addWidget(self._objects_box())
        self.stack_panel = StackPanel(self.controller, lambda: self.image_combo.currentData())
        layout.addWidget(self.stack_panel)
        self.progress_bar = QProgressBar()
        self.progress_bar.setVisible(False)
        layout.addWidget(self.progress_bar)
        self.status = QLabel("no model loaded")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        help_label = QLabel(HELP)
        help_label.setWordWrap(True)
        layout.addWidget(help_label)
        layout.addStretch(1)

        self.controller.status.connect(self._on_status)
        self.controller.progress.connect(self._on_progress)
        self.controller.changed.connect(self._refresh)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._bind_keys(napari_viewer)
        self._refresh_layers()
        self._refresh()

    # ------------------------------------------------------------------ UI
    def _model_box(self) -> QGroupBox:
        box = QGroupBox("Model")
        form = QFormLayout(box)
        self.model_combo = QComboBox()
        for text, name in MODELS:
            self.model_combo.addItem(text, name)
            entry = REGISTRY.get(name)
            if entry is not None and entry.description:
                self.model_combo.setItemData(self.model_combo.count() - 1, entry.description,
                                             Qt.ItemDataRole.ToolTipRole)
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("checkpoint file (empty: model cache / download)")
        browse = QPushButton("…")
        browse.setToolTip("choose a checkpoint file")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.checkpoint_edit)
        row.addWidget(browse)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.precision_combo = QComboBox()
        for text, precision in PRECISION_CHOICES:
            self.precision_combo.addItem(text, precision)
        self.precision_combo.setToolTip(
            "fast: bf16 where it pays (the encoder on CUDA and on CPUs with AVX512-BF16/AMX, the decoder's "
            "image-side products on such CPUs; masks ≥ 99.6 % equal to float32); float32: as the published models, "
            "1.5-4x slower on such CPUs")
        self.load_button = QPushButton("Load model")
        self.load_button.clicked.connect(self.load_model)
        self.model_label = QLabel("")
        self.model_label.setWordWrap(True)
        form.addRow("model", self.model_combo)
        form.addRow("checkpoint", row)
        form.addRow("device", self.device_combo)
        form.addRow("precision", self.precision_combo)
        form.addRow(self.load_button)
        form.addRow(self.model_label)
        self.hint_label = QLabel("")
        self.hint_label.setWordWrap(True)
        self.hint_label.setVisible(False)
        form.addRow(self.hint_label)
        return box

    def _layers_box(self) -> QGroupBox:
        box = QGroupBox("Layers")
        form = QFormLayout(box)
        self.image_combo, self.points_combo, self.labels_combo = QComboBox(), QComboBox(), QComboBox()
        self.boxes_combo = QComboBox()
        self.boxes_combo.setToolTip("a Shapes layer: the latest rectangle on a slice is the object's box (SAM models); "
                                    "polygons, ellipses and closed paths its region; paths and lines scribbles")
        self.use_button = QPushButton("Use these layers")
        self.use_button.setToolTip("attach to the chosen layers (missing clicks/labels/boxes layers are created)")
        self.use_button.clicked.connect(self.use_layers)
        form.addRow("image", self.image_combo)
        form.addRow("clicks", self.points_combo)
        form.addRow("labels", self.labels_combo)
        form.addRow("shapes", self.boxes_combo)
        self.channel_list = ChannelList(self.viewer)
        self.image_combo.currentIndexChanged.connect(
            lambda _: self.channel_list.refresh(self.image_combo.currentData(), [self.image_combo.currentData()]))
        form.addRow("channels", self.channel_list)
        form.addRow(self.use_button)
        return box

    def _objects_box(self) -> QGroupBox:
        box = QGroupBox("Objects")
        layout = QVBoxLayout(box)
        self.object_label = QLabel("")
        layout.addWidget(self.object_label)
        self.buttons: dict[str, QPushButton] = {}
        rows = (("commit", "Commit / next", "undo", "Undo", "redo", "Redo"),
                ("cancel", "Cancel object", "reopen", "Re-open label", "delete_object", "Delete label"),
                ("refine_label", "Refine label", "refine_detail", "Refine detail", "", ""))
        for row_spec in rows:
            row = QHBoxLayout()
            for action, text in zip(row_spec[::2], row_spec[1::2]):
                if not action:
                    continue
                button = QPushButton(text)
                keys = [k.replace("Control", "Ctrl") for a, k, _ in SHORTCUTS if a == action]
                descriptions = [d for a, _, d in SHORTCUTS if a == action]
                button.setToolTip(f"{descriptions[0]} ({' / '.join(keys)})")
                button.clicked.connect(self._shortcut(action))  # (not the bare method: Qt passes `checked`)
                self.buttons[action] = button
                row.addWidget(button)
            layout.addLayout(row)
        self.overwrite_box = QCheckBox("overwrite committed objects")
        self.overwrite_box.setToolTip("let a mask take pixels of other objects (off: other objects are kept)")
        self.overwrite_box.toggled.connect(lambda on: setattr(self.controller, "overwrite", on))
        self.stability_box = QCheckBox("show stability (ST)")
        self.stability_box.setToolTip(
            "after each mask, Stable-SAM's stability of the object over jittered copies of its prompts, in the "
            "background (green >= 0.9, orange >= 0.7, red below; docs/stability.md)")
        self.stability_box.toggled.connect(self._toggle_stability)
        self.unstable_box = QCheckBox("show unstable pixels")
        self.unstable_box.setToolTip("a layer with the pixels where the jittered copies' masks disagree")
        self.unstable_box.toggled.connect(self.controller.set_show_unstable)
        row = QHBoxLayout()
        row.addWidget(self.stability_box)
        row.addWidget(self.unstable_box)
        layout.addLayout(row)
        self.prefetch_box = QCheckBox("prefetch neighbouring slices")
        self.prefetch_box.setToolTip("embed the slices above and below in the background")
        self.prefetch_box.toggled.connect(lambda on: setattr(self.controller, "prefetch", on))
        self.zoom_box = QCheckBox("zoom in on small objects")
        self.zoom_box.setChecked(self.controller.auto_zoom)
        self.zoom_box.setToolTip("after an object's first click, decode later clicks on its box embedded again at the "
                                 "model's full input resolution when it is small in the slice (docs/images.md)")
        self.zoom_box.toggled.connect(lambda on: setattr(self.controller, "auto_zoom", on))
        layout.addWidget(self.overwrite_box)
        layout.addWidget(self.zoom_box)
        layout.addWidget(self.prefetch_box)
        return box

    def _bind_keys(self, target: Any) -> None:
        for action, key, _ in SHORTCUTS:
            target.bind_key(key, self._shortcut(action), overwrite=True)

    def _shortcut(self, action: str) -> Any:
        def handler(_: Any) -> None:
            getattr(self.controller, action)()

        handler.__name__ = f"focsam_{action}"
        return handler

    # ------------------------------------------------------------------ actions
    def _toggle_stability(self, on: bool) -> None:
        self.controller.stability_enabled = bool(on)
        if on:
            self.controller.request_stability()
        self._refresh()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "FocSAM / SAM checkpoint", "",
                                              "Checkpoints (*.pth *.pt *.safetensors *.zip);;All files (*)")
        if path:
            self.checkpoint_edit.setText(path)

    def load_model(self) -> Any:
        name = self.model_combo.currentData()
        checkpoint = self.checkpoint_edit.text().strip() or None
        device = self.device_combo.currentText()
        self.load_button.setEnabled(False)
        worker = self.controller.load_model(name, checkpoint, device, precision=self.precision_combo.currentData(),
                                            on_finished=lambda: self.load_button.setEnabled(True))
        if self.controller.image is None and self.image_combo.currentData() is not None:
            self.use_layers()
        return worker

    def select_model(self, name: str, *, load: bool = True, hint: str = "") -> Any:
        """Choose the registered model ``name`` with an empty checkpoint field (weights from the model cache) and
        load it when ``load`` (returns the job, else None); ``hint`` stays shown under the model box."""
        from ..weights.registry import get_entry

        index = self.model_combo.findData(name)
        if index < 0:
            self.model_combo.addItem(get_entry(name).display_name, name)
            index = self.model_combo.count() - 1
        self.model_combo.setCurrentIndex(index)
        self.checkpoint_edit.clear()
        self.hint_label.setText(hint)
        self.hint_label.setVisible(bool(hint))
        return self.load_model() if load else None

    def use_layers(self) -> None:
        image = self.image_combo.currentData()
        if image is None:
            self.status.setText("add an image layer first")
            return
        points, labels = self.points_combo.currentData(), self.labels_combo.currentData()
        try:
            self.controller.attach(image, points, labels, self.boxes_combo.currentData(),
                                   self.channel_list.channels_for(image))
        except ValueError as error:  # a non-positive scale, labels on another grid, channels of another shape
            self.status.setText(f"not attached: {error}")
            show_warning(f"FocSAM: {error}")
            return
        for layer in (self.controller.points, self.controller.labels):
            self._bind_keys(layer)
        self._refresh_layers()

    # ------------------------------------------------------------------ refresh
    def _refresh_layers(self, event: Any = None) -> None:
        for combo, kind, optional in ((self.image_combo, Image, False), (self.points_combo, Points, True),
                                      (self.labels_combo, Labels, True), (self.boxes_combo, Shapes, True)):
            current = combo.currentData()
            combo.blockSignals(True)
            combo.clear()
            if optional:
                combo.addItem(NEW_LAYER, None)
            for layer in self.viewer.layers:
                if isinstance(layer, kind):
                    combo.addItem(layer.name, layer)
            attached = {Image: self.controller.image, Points: self.controller.points,
                        Labels: self.controller.labels, Shapes: self.controller.boxes}[kind]
            wanted = attached if attached is not None else current
            index = combo.findData(wanted) if wanted is not None else -1
            combo.setCurrentIndex(max(index, 0))  # optional layers default to a new one
            combo.blockSignals(False)
        c = self.controller
        self.channel_list.refresh(self.image_combo.currentData(), c.channel_layers or None)

    def _on_progress(self, what: str, done: int, total: int) -> None:
        """A load or embedding in progress: a bar that counts its steps, or a still one when they are not known (a
        busy animation would repaint the window all the time)."""
        bar = self.progress_bar
        if not what:
            bar.setVisible(False)
            return
        bar.setRange(0, max(total, 1))
        bar.setValue(min(done, max(total, 1)))
        bar.setFormat(f"{what} … {done}/{total}" if total else f"{what} …")
        bar.setVisible(True)

    def _on_status(self, text: str) -> None:
        self.status.setText(text)
        self._refresh()

    def _refresh(self) -> None:
        c = self.controller
        if c.manager is not None:
            text = f"<b>{c.manager.display_name}</b> on {c.manager.device}"
            numerics = getattr(c.manager.predictor, "encoder_dtype", None)
            if numerics is not None:
                text += f" ({str(numerics).replace('torch.', '')} encoder)"
            if c.last_embed_seconds is not None:
                text += f"; last embedding {c.last_embed_seconds:.1f} s"
            if c.last_click_seconds is not None:
                text += f"; last click {1000 * c.last_click_seconds:.0f} ms"
            cost = getattr(c.manager.predictor, "cost_note", None)
            if cost and c.manager.device.type == "cpu":
                text += f"<br><i>{cost}</i>"
            self.model_label.setText(text)
        session = c.session() if c.ready else None
        text = f"current object: {c.object_id}" + (" (refined)" if session and session.is_refined else "")
        stability = c.stability_text() if c.stability_enabled else None
        if stability is not None:
            text += f"; <span style='color:{stability[1]}'><b>{stability[0]}</b></span>"
        self.object_label.setText(text)
        self.buttons["undo"].setEnabled(bool(session and session.can_undo))
        self.buttons["redo"].setEnabled(bool(session and session.can_redo))
