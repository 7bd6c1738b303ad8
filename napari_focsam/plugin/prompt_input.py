"""How the annotator reads prompts from the layers: clicks on the Points layer (with their sign), boxes (and, via
:mod:`.shape_input`, regions and scribbles) on the Shapes layer. Part of
:class:`~napari_focsam.plugin.controller.AnnotationController`; runs on the GUI thread."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.utils.notifications import show_warning

from ..engine.types import Prompts
from . import layers as L
from . import shape_layers as S
from .controller_parts import ControllerParts


class PromptInput(ControllerParts):
    """Clicks and boxes as a user makes them, and the prompts they give on one slice (a controller mixin)."""

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

    def polygon(self, vertices: Any, index: tuple[int, ...] | None = None) -> None:
        """Draw a polygon ((y, x) vertices in image pixels) exactly as the polygon tool would: via the Shapes layer.
        It grows the current object's region on that slice."""
        self._draw(vertices, "polygon", True, index)

    def scribble(self, points: Any, positive: bool = True, index: tuple[int, ...] | None = None) -> None:
        """Draw a stroke ((y, x) points in image pixels) exactly as the path tool would: a positive or negative
        scribble of the current object on that slice."""
        self._draw(points, "path", positive, index)

    def _draw(self, points: Any, shape_type: str, positive: bool, index: tuple[int, ...] | None) -> None:
        if self.image is None or self.boxes is None:
            raise RuntimeError("attach an image first")
        index = self.index if index is None else tuple(index)
        yx = np.asarray(points, dtype=float).reshape(-1, 2)
        coords = np.array([(*index, y, x) for y, x in yx], dtype=float).reshape(len(yx), len(index) + 2)
        self.boxes.feature_defaults = {L.SIGN_FEATURE: bool(positive)}
        self.boxes.add(L.image_to_layer(self.boxes, self.image, coords), shape_type=shape_type)
        self.boxes.feature_defaults = {L.SIGN_FEATURE: self.next_positive}

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
        with self._mute():
            S.style_shapes(self.boxes)
        if self.image is not None and not self._shapes_valid(self.index):
            return  # a refused shape was taken off the layer: the object does not change
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
        prompts = self._shape_prompts(prompts, index)
        if box is None:
            return prompts
        if self.takes_boxes:
            return prompts.with_box(box)
        if not self._boxes_warned:
            self._boxes_warned = True
            name = self.manager.display_name if self.manager is not None else "this model"
            message = (f"{name} takes clicks only: the box is ignored "
                       "(load a SAM model to use boxes)")
            show_warning(f"FocSAM: {message}")
            self.status.emit(message)
        return prompts

    def toggle_sign(self) -> None:
        """Flip the sign of the selected clicks, or, with none selected, of the next click."""
        if self.points is None:
            return
        if self._toggle_shape_signs():
            return
        selected = sorted(self.points.selected_data)
        if not selected:
            self.next_positive = not self.next_positive
            self.points.feature_defaults = {L.SIGN_FEATURE: self.next_positive}
            if self.boxes is not None:
                self.boxes.feature_defaults = {L.SIGN_FEATURE: self.next_positive}
            self.status.emit(f"next click: {'positive' if self.next_positive else 'negative'}")
            return
        with self._mute():
            L.set_signs(self.points, selected, ~L.signs(self.points)[selected])
        self.update()
