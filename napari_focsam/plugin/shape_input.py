"""Regions and scribbles in the annotator: polygons, lassos and strokes drawn on the Shapes layer with napari's own
tools, and existing labels (or masks from Python) as the object's region ("refine this label"). Part of
:class:`~napari_focsam.plugin.controller.AnnotationController`; runs on the GUI thread.

The object's region on a slice is its *seed* (a label picked for refining, or a mask given from Python) united with
the polygons, ellipses and closed paths on that slice; open paths and lines are scribbles with their sign. Like
clicks, the layers say what the prompts are and the job makes the object's session follow them
(:meth:`~napari_focsam.engine.session.ObjectSession.sync`): each shape drawn is one step of the object. A shape the
engine refuses (zero area, outside the image, a one-point stroke) is taken off the layer with a message, and the
object does not change. Undo and redo draw the shapes of the step in effect again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Shapes
from napari.utils.notifications import show_info, show_warning

from ..engine.prompt_shapes import as_mask, as_vertices, check_extent, fill_polygon
from ..engine.types import Prompts
from . import layers as L
from . import shape_layers as S
from .controller_parts import ControllerParts

Key = tuple[tuple[int, ...], int]  # (slice, object id)


class ShapeInput(ControllerParts):
    """Regions and scribbles of the current object (a controller mixin)."""

    def _init_shapes(self) -> None:
        self._seeds: dict[Key, np.ndarray] = {}  # the seed region in effect per (slice, object)
        self._seen_seeds: dict[Key, np.ndarray] = {}  # the last seed set there (so redo finds it again)
        self._drawn: dict[Key, list[S.DrawnShape]] = {}  # every prompt shape read there, in drawing order
        self._fills: dict[tuple[tuple[int, int], bytes], np.ndarray] = {}  # filled polygons by vertices

    # ------------------------------------------------------------------ reading the layer
    def _image_shape(self) -> tuple[int, int]:
        assert self.image is not None  # attached
        shape = self.image.data.shape
        height, width = shape[-3:-1] if self.image.rgb else shape[-2:]
        return height, width

    def _fill(self, points: np.ndarray) -> np.ndarray:
        hw = self._image_shape()
        key = (hw, np.ascontiguousarray(points).tobytes())
        if key not in self._fills:
            self._fills[key] = fill_polygon(points, hw)
        return self._fills[key]

    def _check_shape(self, shape: S.DrawnShape) -> None:
        """Raise ValueError with the engine's reason when the shape is no valid prompt."""
        hw = self._image_shape()
        if shape.kind == "polygon":
            self._fill(shape.points)
        else:
            check_extent(as_vertices(shape.points, "scribble", 2), hw, "scribble")

    def _shape_prompts(self, prompts: Prompts, index: tuple[int, ...]) -> Prompts:
        """``prompts`` with the current object's region and scribbles on slice ``index``. Shapes that are no valid
        prompt are removed from the layer with a message."""
        if self.boxes is None:
            drawn = []
        else:
            drawn = self._valid_shapes(index)
        key = (index, self.object_id)
        if drawn:
            memory = self._drawn.setdefault(key, [])
            memory.extend(d for d in drawn if not any(d.same(m) for m in memory))
        region = self._seeds.get(key)
        for shape in drawn:
            if shape.kind == "polygon":
                filled = self._fill(shape.points)
                region = filled if region is None else region | filled
        if region is not None:
            prompts = prompts.with_mask(region)
        for shape in drawn:
            if shape.kind == "scribble":
                prompts = prompts.with_scribble(shape.points, shape.positive)
        return prompts

    def _shapes_valid(self, index: tuple[int, ...]) -> bool:
        """Check the prompt shapes on slice ``index``; False when one was refused (and taken off the layer)."""
        assert self.boxes is not None  # attached
        before = len(self.boxes.data)
        self._valid_shapes(index)
        return len(self.boxes.data) == before

    def _valid_shapes(self, index: tuple[int, ...]) -> list[S.DrawnShape]:
        while True:
            try:
                drawn = S.drawn_shapes(self.boxes, self.image, index)
            except ValueError as exc:  # a shape type that is no prompt: napari has none today
                self._refuse(str(exc), [])
                return []
            for shape in drawn:
                try:
                    self._check_shape(shape)
                except ValueError as exc:
                    self._refuse(f"{exc}; the {shape.kind} was removed, the object is unchanged", [shape.row])
                    break
            else:
                return drawn

    def _refuse(self, message: str, rows: list[int]) -> None:
        with self._mute():
            S.remove_rows(self.boxes, rows)
        show_warning(f"FocSAM: {message}")
        self.status.emit(message)

    # ------------------------------------------------------------------ drawing them again
    def _restore_shapes(self, index: tuple[int, ...], prompts: Prompts) -> None:
        """Draw the region and scribbles of ``prompts`` (the step now in effect) on slice ``index``: the polygons
        drawn there whose union (with the seed) is the region, else the region as the seed alone."""
        if self.boxes is None:
            return
        key = (index, self.object_id)
        memory = self._drawn.get(key, [])
        polygons = [d for d in memory if d.kind == "polygon"]
        chosen: list[S.DrawnShape] = []
        seed = None
        region = prompts.mask
        if region is not None:
            seed, chosen = region, []
            for candidate in _unique(self._seen_seeds.get(key), None):
                k = self._polygons_for(region, candidate, polygons)
                if k is not None:
                    seed, chosen = candidate, polygons[:k]
                    break
        if seed is None:
            self._seeds.pop(key, None)
        else:
            self._seeds[key] = seed
        strokes = []
        for scribble in prompts.scribbles:
            known = [d for d in memory if d.kind == "scribble" and d.positive == scribble.positive
                     and np.array_equal(d.points, scribble.points)]
            strokes.append(known[0] if known else
                           S.scribble_shape(self.boxes, self.image, index, scribble.points, scribble.positive))
        with self._mute():
            S.replace_slice_shapes(self.boxes, self.image, index, chosen + strokes)

    def _polygons_for(self, region: np.ndarray, seed: np.ndarray | None,
                      polygons: list[S.DrawnShape]) -> int | None:
        """How many of the first ``polygons`` make ``region`` together with ``seed`` (None: no count does)."""
        union = np.zeros(region.shape, bool) if seed is None else seed.copy()
        counts = []
        for k in range(len(polygons) + 1):
            if k:
                union |= self._fill(polygons[k - 1].points)
            if (seed is not None or k) and np.array_equal(union, region):
                counts.append(k)
        return counts[-1] if counts else None

    def _forget_shapes(self, object_id: int) -> None:
        for store in (self._seeds, self._seen_seeds, self._drawn):
            for key in [k for k in store if k[1] == object_id]:
                del store[key]
        if not self._drawn:
            self._fills.clear()

    # ------------------------------------------------------------------ regions from labels and masks
    def refine_label(self, label: int | None = None) -> None:
        """Refine an existing label on the shown slice: the current object is committed, and the label (the
        Labels layer's selected label by default) becomes the object, its pixels there the object's first prompt
        (a mask). Clicks, boxes and shapes refine it; committing writes it back as the same label; *Cancel object*
        gives the label back as it was."""
        if self.labels is None or self.image is None:
            show_info("FocSAM: choose the layers first (Use these layers)")
            return
        if self.manager is None:
            show_info("FocSAM: load a model first (or choose the fallback)")
            return
        label = int(self.labels.selected_label if label is None else label)
        index = self.index
        region = np.asarray(L.slice_copy(self.labels, index) == label)
        if label <= 0 or not region.any():
            where = f" on slice {index}" if index else ""
            show_info(f"FocSAM: label {label} is not in the Labels layer{where}; pick one with the colour picker")
            return
        if label != self.object_id:
            self.commit()
            self.wait(match=lambda key: key[0] == "click" and key[2] == label)  # its last masks written first
            self._committing.discard(label)
            self.object_id = label
            self.labels.selected_label = label
        self._drop_session(index, label)
        self._bases[(index, label)] = L.slice_copy(self.labels, index)  # Cancel gives the label back
        self._set_seed(index, region)
        self.status.emit(f"refining label {label}: click or draw to correct it; commit writes it back")
        self.update()

    def set_mask(self, mask: Any) -> None:
        """Make ``mask`` ((H, W) of the image, bool or 0/1) the current object's region on the shown slice, as one
        step; it replaces the polygons drawn there."""
        if self.image is None:
            raise RuntimeError("attach an image first")
        try:
            region = as_mask(mask, self._image_shape())
        except ValueError as exc:
            show_warning(f"FocSAM: {exc}; the object is unchanged")
            self.status.emit(str(exc))
            return
        self._set_seed(self.index, region)
        self.update()

    def _set_seed(self, index: tuple[int, ...], region: np.ndarray) -> None:
        key = (index, self.object_id)
        region = as_mask(region)
        self._seeds[key] = self._seen_seeds[key] = region
        if self.boxes is not None:  # the seed replaces the region: polygons drawn on the slice go
            rows = [d.row for d in S.drawn_shapes(self.boxes, self.image, index) if d.kind == "polygon"]
            with self._mute():
                S.remove_rows(self.boxes, rows)

    def _drop_session(self, index: tuple[int, ...], label: int) -> None:
        """Forget the label's recorded steps on slice ``index`` (the label as it is now is the new start)."""
        key = self._keys.get(index)
        if self.manager is not None and key is not None:
            session = self.manager.get_object(key, label)
            if session is not None:
                self.manager.close_object(session)

    # ------------------------------------------------------------------ signs
    def _shape_sign_from_mouse(self, layer: Shapes, event: Any) -> None:
        """A stroke started with Shift or the right button is negative (like a click); else the next sign."""
        if not getattr(layer, "_is_creating", False) and str(layer.mode).startswith("add_"):
            negative = "Shift" in event.modifiers or event.button == 2
            layer.feature_defaults = {L.SIGN_FEATURE: self.next_positive and not negative}

    def _toggle_shape_signs(self) -> bool:
        """Flip the sign of the selected scribbles of the Shapes layer when it is the active layer; False if
        there are none."""
        shapes = self.boxes
        if shapes is None or self.viewer.layers.selection.active is not shapes:
            return False
        strokes = {d.row for d in S.drawn_shapes(shapes, self.image, self.index) if d.kind == "scribble"}
        rows = sorted(strokes & set(shapes.selected_data))
        if not rows:
            return False
        features = shapes.features.copy()
        values = S.shape_signs(shapes).copy()
        values[rows] = ~values[rows]
        features[L.SIGN_FEATURE] = values
        with self._mute():
            shapes.features = features
            S.style_shapes(shapes)
        self.update()
        return True


def _unique(*items: np.ndarray | None) -> list[np.ndarray | None]:
    out: list[np.ndarray | None] = []
    for item in items:
        if not any(item is o for o in out):
            out.append(item)
    return out
