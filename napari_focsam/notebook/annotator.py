"""``Annotator``: click-to-segment inside Jupyter (JupyterLab, Notebook 7, VS Code, Colab), no Qt, no display.

An `anywidget <https://anywidget.dev>`_ widget: the browser half (``static/annotator.js``) draws and takes the mouse
and keys; this half receives its messages on the kernel's comm thread, turns them into actions of a
:class:`~napari_focsam.notebook.controller.NotebookController` (the engine's models, sessions, cache and job
runner, as in the napari widget) and sends back what changed. No model runs on the comm thread: masks are computed
in the job runner's threads and sent from there, under one lock, as soon as they are ready.

Messages from the browser are ``{"type": ...}`` dicts: ``hello`` (send everything), ``click`` (``y, x, positive,
seq``), ``box`` (``y0, x0, y1, x1, seq``), ``undo``, ``redo``, ``commit``, ``cancel``, ``reopen``, ``delete``,
``select`` (``label``), ``slice`` (``z``), ``contrast`` (``low, high``), ``overwrite`` (``on``), ``stability``
(``on``), ``load`` (``model, device, precision``), ``refine`` (refine detail: zoom on the current object),
``auto_zoom`` (``on``), ``channels`` (``channels``: indices along the channel axis), ``window`` (``y, x``: centre
the shown window there). A refused request (a click
outside the image, a box for a click-only model, ...) becomes a message in the widget,
never an exception in the notebook.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets

from ..engine.channels import ChannelMix
from ..engine.manager import PRECISIONS, ModelManager
from ..engine.stability import Jitter, Stability
from ..engine.work import TileSettings
from ..weights.registry import REGISTRY
from .annotator_views import AnnotatorViews, tile_settings
from .controller import NotebookController
from .geometry import Geometry
from .source import ImageSource, check_labels, read_labels, write_labels

STATIC = Path(__file__).parent / "static"
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISION_TEXT = {"fast": "fast (bf16 where the device has it)", "float32": "float32 throughout"}


@dataclass(frozen=True)
class ObjectInfo:
    """One object in the labels: its id, its pixels, the slices it is on (empty for a 2D image)."""

    label: int
    pixels: int
    slices: tuple[int, ...]
    current: bool  #: the object being annotated now (not committed yet)
    #: the ST of its latest mask while the stability display was on (:meth:`Annotator.show_stability`), else None
    stability: float | None = None
    #: its area (2D) or volume (stack) in world units: pixels × the world size of a pixel (``scale``, ``affine``)
    size: float = 0.0


class Annotator(anywidget.AnyWidget, AnnotatorViews):
    """Annotate ``image`` object by object with ``model`` (a name, or a :class:`ModelManager`; default: the most
    accurate cached model, else the weight-free fallback).

    ``image``: numpy, dask or zarr; (H, W), (H, W, 3|4), (Z, H, W) or (Z, H, W, 3|4) (a slider picks the slice).
    ``labels``: initial labels (array or a ``.tif``/``.npy`` file); ``save_to``: a ``.tif``/``.npy`` file written
    after every commit and delete, and read back when it exists (so a kernel restart loses no committed object).
    ``contrast_limits``: (low, high) for gray images (default: 8-bit as is, else the 0.5-99.5 percentiles); what the
    widget shows is what the model sees. Further keywords go to :meth:`ModelManager.load`.

    Microscopy (see ``docs/notebook.md``): ``scale``, ``translate`` (one value per spatial axis: (y, x), or
    (z, y, x) for a stack) and ``affine`` place the pixels in the world (``units`` names them); the canvas shows the
    true proportions and clicks can be given in world units (``click(..., world=True)``). ``channel_axis`` (and
    ``channels``: indices or a :class:`ChannelMix`) mixes a multi-channel image into the model's input. ``tiles``
    (a :class:`TileSettings`, True, False; None: automatic) annotates large slices in tiles; ``auto_zoom`` decodes a
    small object on its zoom after its first click. A slice larger than 4,096 px is shown through a window of
    ``window_side`` px (default 1,024) that an overview moves (:attr:`window`).
    """

    _esm = STATIC / "annotator.js"
    _css = STATIC / "annotator.css"
    #: the canvas width in CSS pixels (0: the image's width, at most 768)
    display_width = traitlets.Int(0).tag(sync=True)

    def __init__(self, image: Any, model: str | ModelManager | None = None, *, labels: Any = None,
                 rgb: bool | None = None, contrast_limits: tuple[float, float] | None = None, device: str = "auto",
                 precision: str = "fast", save_to: str | os.PathLike | None = None, display_width: int = 0,
                 scale: Any = None, translate: Any = None, affine: Any = None, units: str = "",
                 channel_axis: int | None = None, channels: ChannelMix | Any = None,
                 tiles: TileSettings | bool | None = None, auto_zoom: bool = True, window_side: int | None = None,
                 **load_kwargs: Any) -> None:
        super().__init__(display_width=int(display_width))
        self._send_lock = threading.Lock()
        self._callbacks: list[Callable[[int, np.ndarray], None]] = []
        self.save_to = Path(save_to) if save_to is not None else None
        self.device, self.precision = device, precision
        self.controller: NotebookController | None = None
        #: why the widget cannot annotate (an unsupported image, unreadable labels); None when all is well
        self.error: str | None = None
        self.on_msg(self._on_message)
        try:
            source = ImageSource.of(image, rgb, channel_axis, channels)
            geometry = Geometry.of(3 if source.depth else 2, scale, translate, affine, units)
            initial = self._initial_labels(labels, source)
            self.controller = NotebookController(source, self._post, initial, contrast_limits, geometry,
                                                 tile_settings(tiles), window_side)
        except (ValueError, OSError) as exc:
            self.error = str(exc)
            return
        self.controller.auto_zoom = bool(auto_zoom)
        self.controller.on_committed = self._committed
        if model is None:
            from ..weights.preference import best_cached_model

            model = best_cached_model()[0]
        self.controller.load_model(model, device, precision, **load_kwargs)

    # ------------------------------------------------------------------ Python API
    @property
    def labels(self) -> np.ndarray:
        """A copy of the labels: (H, W) or (Z, H, W) int32, 0 = background."""
        controller = self._ready()
        with controller._lock:
            return controller.labels.copy()

    @property
    def objects(self) -> list[ObjectInfo]:
        """The objects in the labels, committed ones and the current one."""
        controller = self._ready()
        with controller._lock:
            labels = controller.labels
            voxel = controller.geometry.voxel
            ids, counts = np.unique(labels[labels != 0], return_counts=True)
            out = []
            for label, count in zip(ids.tolist(), counts.tolist()):
                slices = (tuple(int(z) for z in np.flatnonzero((labels == label).any(axis=(1, 2))))
                          if labels.ndim == 3 else ())
                out.append(ObjectInfo(int(label), int(count), slices, int(label) == controller.object_id,
                                      controller.stabilities.get(int(label)), float(count) * voxel))
            return out

    @property
    def object_id(self) -> int:
        return self._ready().object_id

    @property
    def manager(self) -> ModelManager | None:
        return self._ready().manager

    @property
    def contrast_limits(self) -> tuple[float, float]:
        return self._ready().contrast

    @contrast_limits.setter
    def contrast_limits(self, limits: tuple[float, float]) -> None:
        self._ready().set_contrast(*limits)

    @property
    def slice(self) -> int:
        return self._ready().z

    @slice.setter
    def slice(self, z: int) -> None:
        self._ready().set_slice(z)

    def click(self, y: float, x: float, positive: bool = True, *, world: bool = False) -> None:
        """A click at pixel (y, x) of the shown slice (``world``: at world y, x on it, in the units of ``scale``);
        the mask follows in a job thread (:meth:`wait` waits).

        Unlike mouse clicks, which coalesce while a job runs (the latest wins), each click from Python starts
        after the object's previous one is computed, so every click is its own undo step."""
        y, x = self._plane_pixels((y, x), world)
        self._settle_current().click(y, x, positive)

    def box(self, y0: float, x0: float, y1: float, x1: float, *, world: bool = False) -> None:
        """The current object's box on the shown slice (models that take boxes), as one step; corners in pixels
        (``world``: world units, the box then covers both corners' pixels)."""
        y0, x0, y1, x1 = self._plane_pixels((y0, x0, y1, x1), world)
        self._settle_current().box(y0, x0, y1, x1)

    def undo(self) -> None:
        """Undo the current object's last step on the shown slice (after its clicks so far are computed)."""
        self._settle_current().undo()

    def redo(self) -> None:
        self._settle_current().redo()

    def show_stability(self, on: bool = True, jitter: Jitter | None = None) -> None:
        """Show the current object's stability (Stable-SAM's ST, see ``docs/stability.md``) after each of its masks,
        as the *stability* box in the widget does; ``jitter`` sets the copies and noise level. It is computed in the
        background after the mask is shown, and the next click cancels it."""
        controller = self._ready()
        with controller._lock:
            controller.set_stability(on, jitter)

    def stability(self, jitter: Jitter | None = None, timeout: float = 60.0) -> Stability:
        """The stability of the current object's mask on the shown slice, computed now (in a job thread, after the
        object's clicks so far; this call waits for it). Raises ValueError when the object has no mask there."""
        controller = self._settle_current()
        with controller._lock:
            session = controller.session()
            if session is None or session.current is None or session.prompts.is_empty:
                raise ValueError(f"object {controller.object_id} has no mask on this slice to measure")
            box: dict[str, Any] = {}
            ready = threading.Event()

            def done(result: Stability) -> None:
                box["result"] = result
                ready.set()

            def failed(exc: BaseException) -> None:
                box["error"] = exc
                ready.set()

            job = controller.jobs.background(("stability-call",),
                                             lambda token: session.stability(jitter, cancel=token), done, failed)
        if not ready.wait(timeout):
            job.token.cancel()
            raise TimeoutError("the stability is still being computed")
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _settle_current(self) -> NotebookController:
        controller = self._ready()
        index, object_id = controller.index, controller.object_id
        controller.wait(match=lambda key: key == ("click", index, object_id))
        return controller

    def commit(self) -> int:
        """Commit the current object and start the next one; returns the committed id."""
        return self._ready().commit()

    def cancel(self) -> None:
        self._ready().cancel()

    def reopen(self, label: int | None = None) -> None:
        """Continue refining a committed object (default: the label picked with Ctrl+click)."""
        self._ready().reopen(label)

    def delete(self, label: int | None = None) -> None:
        """Remove an object from every slice (default: the label picked with Ctrl+click)."""
        self._ready().delete(label)
        self._autosave()

    def load_model(self, model: str | ModelManager, device: str | None = None, precision: str | None = None,
                   **kwargs: Any) -> None:
        """Use another model (loaded in a job thread; :meth:`wait` waits for it)."""
        self._ready().load_model(model, device or self.device, precision or self.precision, **kwargs)

    def wait(self, timeout: float = 60.0) -> Annotator:
        """Block until every job (model load, embedding, clicks) is done and its result delivered."""
        self._ready().wait(timeout)
        return self

    def on_commit(self, callback: Callable[[int, np.ndarray], None]) -> None:
        """Call ``callback(label, mask)`` when a committed object is final (its last mask computed); it runs on a
        job thread or the kernel's thread, with the annotator's state locked: keep it short."""
        self._callbacks.append(callback)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the labels to ``path`` (``.tif``/``.tiff`` or ``.npy``), atomically (a ``.partial`` file first)."""
        return write_labels(path, self.labels)

    def close(self) -> None:
        """Stop the job threads and close the widget."""
        if self.controller is not None:
            self.controller.close()
        super().close()

    # ------------------------------------------------------------------ internals
    def _ready(self) -> NotebookController:
        if self.controller is None:
            raise RuntimeError(f"this annotator has no image: {self.error}")
        return self.controller

    def _initial_labels(self, labels: Any, source: ImageSource) -> np.ndarray:
        if labels is None and self.save_to is not None and self.save_to.exists():
            labels = self.save_to
        if labels is None:
            return np.zeros(source.labels_shape, np.int32)
        if isinstance(labels, (str, os.PathLike)):
            labels = read_labels(labels)
        return check_labels(labels, source)

    def _committed(self, label: int) -> None:
        self._autosave()
        controller = self._ready()
        for callback in list(self._callbacks):
            callback(label, controller.labels == label)

    def _autosave(self) -> None:
        if self.save_to is not None:
            self.save(self.save_to)

    def _post(self, message: dict, buffers: list) -> None:
        """Send one message to the browser (from the comm thread or a job thread: one at a time)."""
        with self._send_lock:
            self.send(message, [bytes(b) for b in buffers])

    def _state(self) -> tuple[dict, list]:
        controller = self.controller
        if controller is None:
            return {"type": "state", "error": f"Cannot annotate: {self.error}"}, []
        names = list(REGISTRY)
        if controller.model_name and controller.model_name not in names:
            names.append(controller.model_name)
        with controller._lock:
            message = {"type": "state", **controller.view_state(), "info": controller.info(),
                       "prompts": controller.prompt_state(),
                       "models": [[n, REGISTRY[n].display_name if n in REGISTRY else n] for n in names],
                       "devices": [[d, d] for d in DEVICES], "device": self.device,
                       "precisions": [[p, PRECISION_TEXT.get(p, p)] for p in PRECISIONS], "precision": self.precision}
            return message, controller.view_buffers()

    def _on_message(self, _: Any, content: dict, buffers: list) -> None:
        """One message from the browser (the kernel's comm thread): an action, or a message back when refused."""
        kind = content.get("type") if isinstance(content, dict) else None
        try:
            if kind == "hello":
                self._post(*self._state())
                if self.controller is not None:
                    with self.controller._lock:
                        overview = self.controller.overview_message()
                    if overview is not None:
                        self._post(*overview)
                return
            controller = self._ready()
            self._act(controller, kind, content)
        except Exception as exc:  # noqa: BLE001 - every refusal is a line in the widget, never a traceback
            if self.controller is None:
                return
            text = str(exc) if isinstance(exc, (ValueError, RuntimeError)) else f"{type(exc).__name__}: {exc}"
            with self.controller._lock:
                self.controller._set_status(text, "warning", send=False)
                message = {"type": "update", "info": self.controller.info(),
                           "prompts": self.controller.prompt_state(), "refused": content.get("seq")}
                self._post(message, [])

    def _act(self, controller: NotebookController, kind: str | None, m: dict) -> None:
        if kind == "click":
            controller.click(float(m["y"]), float(m["x"]), bool(m.get("positive", True)), seq=m.get("seq"))
        elif kind == "box":
            controller.box(float(m["y0"]), float(m["x0"]), float(m["y1"]), float(m["x1"]), seq=m.get("seq"))
        elif kind in ("undo", "redo", "commit", "cancel"):
            getattr(controller, kind)()
        elif kind in ("reopen", "delete"):
            getattr(self, kind)(None if m.get("label") is None else int(m["label"]))
        elif kind == "select":
            with controller._lock:
                controller.selected = int(m.get("label") or 0)
                controller._set_status(f"picked label {controller.selected}" if controller.selected else
                                       "no label there (background)")
        elif kind == "slice":
            controller.set_slice(int(m["z"]))
        elif kind == "contrast":
            controller.set_contrast(float(m["low"]), float(m["high"]))
        elif kind == "overwrite":
            controller.overwrite = bool(m.get("on"))
        elif kind == "stability":
            with controller._lock:
                controller.set_stability(bool(m.get("on")))
        elif kind == "refine":
            with controller._lock:
                controller.refine_detail(seq=m.get("seq"))
        elif kind == "window":
            with controller._lock:
                controller.centre_window(float(m["y"]), float(m["x"]))
        elif kind == "auto_zoom":
            self.auto_zoom = bool(m.get("on"))
        elif kind == "channels":
            controller.set_channels([int(c) for c in m.get("channels") or []])
        elif kind == "load":
            self.device, self.precision = str(m.get("device", self.device)), str(m.get("precision", self.precision))
            controller.load_model(str(m["model"]), self.device, self.precision)
        else:
            raise ValueError(f"unknown request {kind!r}")
