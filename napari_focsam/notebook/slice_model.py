"""The notebook controller's slice, contrast and model: which slice is shown and how, which model runs, and the
embedding of the shown slice in a job (with its progress in the widget). Part of
:class:`~napari_focsam.notebook.controller.NotebookController`; every method runs under its lock."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine.manager import ModelManager
from ..engine.work import embed_slice
from .controller_parts import NotebookParts

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..engine.channels import ChannelMix

CLICK = "click"  # job keys: (CLICK, slice, object id), ("embed",), ("load",)


class SliceAndModel(NotebookParts):
    """The view and the model of a notebook controller (a mixin)."""

    def set_slice(self, z: int) -> None:
        with self._lock:
            if not self.source.depth:
                raise ValueError("the image is 2D: it has no slices")
            if not 0 <= int(z) < self.source.depth:
                raise ValueError(f"slice {z} is outside the stack of {self.source.depth} slices")
            self.z = int(z)
            self.cancel_prefetch()
            self.send_image()
            self._update(prompts=True)
            self._embed()

    def set_contrast(self, low: float, high: float) -> None:
        """New contrast limits: the widget shows, and the model sees, the slice mapped through them."""
        with self._lock:
            low, high = float(low), float(high)
            if not (np.isfinite(low) and np.isfinite(high) and low < high):
                raise ValueError(f"contrast limits must be two finite numbers, low < high; got ({low}, {high})")
            self.contrast = (low, high)
            self._forget_zooms()  # a zoom shows the slice as it was
            self.send_image(labels=False)
            self._embed()

    def set_channels(self, channels: ChannelMix | Sequence[int] | None = None,
                     colours: Sequence[object] | None = None,
                     contrast_limits: Sequence[Sequence[float] | None] | None = None) -> None:
        """Let the model see other channels of an image with a channel axis (see
        :meth:`~napari_focsam.notebook.source.ImageSource.with_mix`): another input, so another embedding."""
        with self._lock:
            self.source = self.source.with_mix(channels, colours, contrast_limits)
            self._keys.clear()
            self._known.clear()
            self._forget_zooms()
            self.send_image(labels=False)
            self._update()
            self._embed()

    def load_model(self, model: str | ModelManager, device: str = "auto", precision: str = "fast",
                   **kwargs: Any) -> None:
        """Use ``model`` (a name, loaded in a job thread, or a ready :class:`ModelManager`)."""
        if isinstance(model, ModelManager):
            with self._lock:
                self._set_manager(model, model.name)
            return
        name = str(model)
        with self._lock:
            self._progress("load", f"Loading {name} …")

            def progress(done: int, total: int | None) -> None:
                with self._lock:
                    share = f" {100 * done / total:.0f} %" if total else f" {done / 1e6:.0f} MB"
                    self._progress("load", f"Downloading {name}{share}")

            self.jobs.submit(("load",), lambda token: ModelManager.load(name, device=device, precision=precision,
                                                                        progress=progress, **kwargs),
                             lambda manager: self._set_manager(manager, name), self._on_load_error,
                             on_finished=lambda: self._progress("load", None))

    def _on_load_error(self, exc: BaseException) -> None:
        self._set_status(f"could not load the model: {exc}", "error")

    def _set_manager(self, manager: ModelManager, name: str) -> None:
        self.jobs.cancel(lambda key: key[0] != CLICK)
        self.cancel_prefetch()
        self.manager, self.model_name = manager, name
        self._keys.clear()
        self._known.clear()
        self._forget_zooms()
        self._set_status(f"{manager.display_name} on {manager.device}", "info", send=False)
        self._update()
        self._embed()

    def _embed(self) -> None:
        if self.manager is None:
            return
        args = (self.manager, self.source.model_data, self.index, self.source.model_rgb, self.contrast)
        tiles = self.tiles
        self._progress("embed", f"Embedding slice {self.z} …" if self.source.depth else "Embedding the image …")
        self.jobs.submit(("embed",), lambda token: embed_slice(*args, tiles=tiles), self._on_embedded,
                         self._on_embed_error,
                         on_finished=lambda: self._progress("embed", None), supersede=False)

    def _on_embedded(self, result: tuple[ModelManager, tuple[int, ...], str, float | None]) -> None:
        manager, index, key, seconds = result
        if manager is self.manager and key:  # "" for a tiled slice (its tiles are embedded on the first click)
            self._keys[index] = key
            if seconds is not None:
                self._set_status(f"embedded in {seconds:.1f} s", "info")

    def _on_embed_error(self, exc: BaseException) -> None:
        self._set_status(f"the slice could not be embedded: {exc}", "error")

    def view_state(self) -> dict:
        source = self.source
        mix = source.mix
        channels = None if mix is None else {"count": source.n_channels, "chosen": list(mix.channels)}
        return {"height": source.height, "width": source.width, "depth": source.depth, "z": self.z,
                "window": list(self.window),
                "contrast": list(self.contrast), "range": list(source.value_range(self.index)),
                "rgb": source.model_rgb, "channels": channels, **self.geometry.state(self.z)}

