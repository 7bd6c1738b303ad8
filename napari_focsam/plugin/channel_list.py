"""The widget's channel choice: which image layers of the chosen image's grid the model sees, mixed (napari's
``channel_axis`` gives one layer per channel). Each layer is mixed through its own contrast limits and in its
colormap's colour, so the contrast per channel is set where napari sets it: the layer controls."""

from __future__ import annotations

from napari.layers import Image
from napari.viewer import Viewer
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QListWidget, QListWidgetItem

from .image_source import layer_colour


class ChannelList(QListWidget):
    """Checkable single-channel image layers of one shape; the chosen image is checked by default."""

    def __init__(self, viewer: Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self._layers: list[Image] = []
        self.setMaximumHeight(90)
        self.setToolTip("channels the model sees, mixed in their colours through their contrast limits (set them in "
                        "the layer controls); none checked or only the image: the image alone. Up to three are "
                        "sensible (the model takes RGB)")

    def refresh(self, image: Image | None, chosen: list[Image] | None = None) -> None:
        """List the layers that can be mixed with ``image``; keep what was checked (or check ``chosen``)."""
        checked = chosen if chosen else self.checked()
        self.clear()
        self._layers = []
        if image is None or image.rgb:
            self.setEnabled(False)
            return
        candidates = [layer for layer in self.viewer.layers
                      if isinstance(layer, Image) and not layer.rgb and layer.data.shape == image.data.shape]
        if not any(layer in checked for layer in candidates):
            checked = [image]
        for layer in candidates:
            colour = ",".join(f"{int(255 * v)}" for v in layer_colour(layer))
            item = QListWidgetItem(f"{layer.name}  (rgb {colour})")
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if layer in checked else Qt.CheckState.Unchecked)
            self.addItem(item)
            self._layers.append(layer)
        self.setEnabled(len(candidates) > 1)

    def checked(self) -> list[Image]:
        """The checked layers, in the layer list's order."""
        items = [self.item(i) for i in range(len(self._layers))]
        return [layer for layer, item in zip(self._layers, items)
                if item is not None and item.checkState() == Qt.CheckState.Checked]

    def check(self, layers: list[Image]) -> None:
        """Check exactly ``layers`` (those listed)."""
        for i, layer in enumerate(self._layers):
            item = self.item(i)
            if item is not None:
                item.setCheckState(Qt.CheckState.Checked if layer in layers else Qt.CheckState.Unchecked)

    def channels_for(self, image: Image) -> list[Image] | None:
        """What to mix for ``image``: None (the image alone) when only it, or nothing, is checked."""
        chosen = self.checked()
        return None if not chosen or chosen == [image] else chosen
