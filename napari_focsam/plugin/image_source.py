"""What the model sees of the chosen image layer(s), and the embeddings of its slices. Part of
:class:`~napari_focsam.plugin.controller.AnnotationController`; runs on the GUI thread.

* **Channels**: the image layer alone (gray or RGB), or several image layers of one grid (napari's
  ``channel_axis`` makes one layer per channel) mixed into the model's RGB input by
  :class:`~napari_focsam.engine.channels.ChannelStack` — each chosen layer through its own contrast limits and in its
  colormap's colour, as napari's additive blending shows them. The mix is read from the layers at every request, so
  changing a layer's contrast or the choice gives another embedding (the key hashes the mixed pixels).
* **Scale**: the image's scale, translate, rotation, shear and affine are napari's world ↔ data transform; clicks
  and shapes are read through it (see :mod:`.layers`), the layers the annotator makes copy it, and a Labels layer
  on another grid is refused (masks are written in the image's data coordinates).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from napari.layers import Image, Labels

from ..engine.channels import ChannelMix, ChannelStack
from ..engine.manager import ModelManager
from .controller_parts import ControllerParts
from .tiles_view import is_prefetch


def check_geometry(image: Image, labels: Labels | None = None) -> None:
    """Refuse, with a message, an image whose scale is not positive on every axis and a Labels layer that does not
    lie on the image's grid (another shape or another world transform)."""
    scale = np.asarray(image.scale, dtype=float)
    bad = [axis for axis, s in enumerate(scale) if not (np.isfinite(s) and s > 0)]
    if bad:
        raise ValueError(f"image layer '{image.name}' has a non-positive scale {scale[bad[0]]:g} on axis {bad[0]} "
                         f"(scale {tuple(float(s) for s in scale)}); give every axis a positive pixel size")
    if labels is None:
        return
    shape = tuple(image.data.shape[:-1] if image.rgb else image.data.shape)
    if tuple(labels.data.shape) != shape:
        raise ValueError(f"labels layer '{labels.name}' has shape {tuple(labels.data.shape)}, the image {shape}: "
                         "choose a Labels layer of the image's shape (or a new one)")
    if not np.allclose(_matrix(labels), _matrix(image)):
        raise ValueError(f"labels layer '{labels.name}' is not on the image's grid (its scale, translate or affine "
                         "differ): masks are written in the image's pixels, so choose a new Labels layer")


def _matrix(layer: Any) -> np.ndarray:
    return np.asarray(layer._transforms[1:].simplified.affine_matrix, dtype=float)


def layer_colour(layer: Image) -> tuple[float, float, float]:
    """The colour a channel layer is shown in: the top colour of its colormap (white for gray)."""
    return tuple(float(v) for v in np.asarray(layer.colormap.colors)[-1][:3])  # type: ignore[return-value]


class ImageSource(ControllerParts):
    """The image (or channels) the model sees and the embeddings of its slices (a controller mixin)."""

    channel_layers: list[Image]

    def set_channels(self, layers: Sequence[Image] | None, channels: Sequence[int] | None = None) -> None:
        """Let the model see ``layers`` (one grid; the attached image's shape) mixed, or the image alone (None or
        empty). ``channels`` chooses among ``layers`` by index (all of them, up to three, by default)."""
        layers = list(layers or [])
        if layers:
            if self.image is None:
                raise RuntimeError("attach an image first")
            if self.image.rgb:
                raise ValueError(f"image layer '{self.image.name}' is RGB: it is used as it is, not mixed")
            if channels is not None:
                ChannelMix(channels).check(len(layers))
                layers = [layers[c] for c in channels]
            elif len(layers) > 3:
                layers = layers[:3]
            for layer in layers:
                if not isinstance(layer, Image) or layer.rgb:
                    raise ValueError(f"layer '{getattr(layer, 'name', layer)}' is not a single-channel image layer")
                if tuple(layer.data.shape) != tuple(self.image.data.shape):
                    raise ValueError(f"channel layer '{layer.name}' has shape {tuple(layer.data.shape)}, the image "
                                     f"'{self.image.name}' {tuple(self.image.data.shape)}: channels share one grid")
        for layer in self.channel_layers:
            if layer is not self.image:
                layer.events.data.disconnect(self._on_image_data)
        self.channel_layers = layers
        for layer in layers:
            if layer is not self.image:
                layer.events.data.connect(self._on_image_data)
        self._known.clear()
        self._keys.clear()
        self.zooms.clear()
        self.changed.emit()
        self.embed_current()

    def model_source(self) -> tuple[Any, bool, tuple[float, float], tuple[Any, ...]]:
        """(data, rgb, contrast limits, signature) for a worker: the image layer's data, or a
        :class:`ChannelStack` of the chosen channel layers with their colours and limits as shown. The signature
        names everything that decides the model's input except the pixels (the memo of known keys uses it)."""
        image = self.image
        assert image is not None  # attached
        if not self.channel_layers:
            low, high = (float(v) for v in image.contrast_limits)
            contrast = (low, high)
            return image.data, image.rgb, contrast, (id(image.data), image.rgb, contrast)
        mix = ChannelMix(range(len(self.channel_layers)), [layer_colour(layer) for layer in self.channel_layers],
                         [tuple(float(v) for v in layer.contrast_limits) for layer in self.channel_layers])
        stack = ChannelStack([layer.data for layer in self.channel_layers], mix)
        signature = (tuple(id(layer.data) for layer in self.channel_layers), mix)
        return stack, True, (0.0, 255.0), signature

    # ------------------------------------------------------------------ embeddings
    def embed_current(self) -> None:
        """Embed the shown slice in the background (with a progress bar) so the first click is fast. While one
        embedding runs, only the latest slice asked for waits (scrolling skips the slices in between)."""
        if self.ready:
            self._embed(self.index)

    def _on_slice_changed(self, event: Any = None) -> None:
        if not self.ready:
            return
        self.embed_current()
        self.jobs.clear_background()
        self.jobs.cancel_background(is_prefetch)  # the tiles around an object of the slice left
        if self.prefetch:
            index = self.index
            for step in (-1, 1):
                if index:
                    neighbour = (*index[:-1], index[-1] + step)
                    if self.image is not None and 0 <= neighbour[-1] < self.image.data.shape[len(index) - 1]:
                        self._embed(neighbour, prefetch=True)

    def _embed(self, index: tuple[int, ...], prefetch: bool = False) -> None:
        from .work import embed_slice

        assert self.manager is not None  # ready
        data, rgb, contrast, _ = self.model_source()
        args = (self.manager, data, index, rgb, contrast)
        if prefetch:  # the low-priority background thread: clicks never wait behind it
            self.jobs.background(("prefetch", index), lambda token: embed_slice(*args, tiles=self.tiles),
                                 self._on_embedded, self._on_error)
            return
        label = f"Embedding slice {index}" if index else "Embedding image"
        self.run_job(lambda token: embed_slice(*args, cancel=token, tiles=self.tiles), self._on_embedded,
                     key=("embed",),
                     progress=label, steps=_embedding_steps(self.manager), supersede=False)

    def _on_embedded(self, result: tuple[ModelManager, tuple[int, ...], str, float | None]) -> None:
        manager, index, key, seconds = result
        if manager is not self.manager:
            return
        self._keys[index] = key
        if seconds is not None:
            self.last_embed_seconds = seconds
            self.status.emit(f"embedded slice {index} in {seconds:.1f} s" if index else f"embedded in {seconds:.1f} s")
        self.changed.emit()


def _embedding_steps(manager: ModelManager) -> int | None:
    """How many times an embedding checks its cancel token (once per ViT block, once more after the encoder), or
    None when not known (the fallback: it is quick)."""
    encoder = getattr(getattr(manager.predictor, "model", None), "image_encoder", None)
    blocks = getattr(encoder, "blocks", None)
    return len(blocks) + 1 if blocks is not None else None
