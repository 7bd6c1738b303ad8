"""The prompt shapes of the annotator's Shapes layer that are not boxes: polygons, ellipses and closed paths (the
object's region) and open paths and lines (scribbles, positive or negative like clicks).

A rectangle stays the object's box (:func:`~napari_focsam.plugin.layers.box_rows`); every other shape on the shown
slice is read here with :func:`napari_focsam.engine.prompt_shapes.shape_to_prompt`. A shape's sign is its
``positive`` feature (scribbles only; regions are always the object). Everything here runs on the GUI thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Shapes

from ..engine.prompt_shapes import shape_to_prompt
from . import layers as L

REGION_COLOR = (0.3, 0.8, 1.0, 1.0)  # light blue outline: a polygon / lasso prompt


@dataclass(frozen=True, eq=False)
class DrawnShape:
    """One prompt shape as read from the layer: its row, kind (``"polygon"`` or ``"scribble"``), its vertices in
    the layer's data coordinates and type (to draw it again), its (y, x) points in image pixels, and its sign."""

    row: int
    kind: str
    vertices: np.ndarray
    shape_type: str
    points: np.ndarray
    positive: bool

    def same(self, other: DrawnShape) -> bool:
        return (self.kind == other.kind and self.positive == other.positive and self.shape_type == other.shape_type
                and np.array_equal(self.points, other.points))


def shape_signs(shapes: Shapes) -> np.ndarray:
    """Every shape's sign (True = positive); shapes without the feature count as positive."""
    if L.SIGN_FEATURE in shapes.features and len(shapes.features) == len(shapes.data):
        return np.asarray(shapes.features[L.SIGN_FEATURE], dtype=bool)
    return np.ones(len(shapes.data), dtype=bool)


def ensure_sign_feature(shapes: Shapes, positive: bool = True) -> None:
    """Give ``shapes`` the sign feature (existing shapes positive) and the default sign for new ones."""
    if L.SIGN_FEATURE not in shapes.features or len(shapes.features) != len(shapes.data):
        shapes.features = {L.SIGN_FEATURE: np.ones(len(shapes.data), dtype=bool)}
    shapes.feature_defaults = {L.SIGN_FEATURE: bool(positive)}


def drawn_shapes(shapes: Shapes, image: Image, index: tuple[int, ...]) -> list[DrawnShape]:
    """The prompt shapes (all but rectangles) on slice ``index``, in drawing order. A shape of a type that is no
    prompt is skipped."""
    leading = len(index)
    positive = shape_signs(shapes)
    out = []
    for row, (vertices, kind) in enumerate(zip(shapes.data, shapes.shape_type)):
        if kind == "rectangle" or len(vertices) == 0:
            continue
        vertices = np.asarray(vertices, dtype=float)
        coords = L.layer_to_image(shapes, image, vertices)
        if leading and not np.all(np.round(coords[:, :leading]).astype(int) == np.asarray(index, dtype=int)):
            continue
        what, points = shape_to_prompt(coords[:, leading: leading + 2], kind)
        out.append(DrawnShape(row, what, vertices, kind, points, bool(positive[row]) or what == "polygon"))
    return out


def replace_slice_shapes(shapes: Shapes, image: Image, index: tuple[int, ...], drawn: list[DrawnShape]) -> None:
    """Make the prompt shapes on slice ``index`` exactly ``drawn`` (rectangles and other slices stay)."""
    rows = [d.row for d in drawn_shapes(shapes, image, index)]
    if rows:
        shapes.selected_data = set(rows)
        shapes.remove_selected()
    for d in drawn:
        defaults = dict(shapes.feature_defaults.iloc[0]) if len(shapes.feature_defaults.columns) else {}
        shapes.feature_defaults = {**defaults, L.SIGN_FEATURE: d.positive}
        shapes.add(np.asarray(d.vertices, dtype=float), shape_type=d.shape_type)
        shapes.feature_defaults = defaults or {L.SIGN_FEATURE: True}
    style_shapes(shapes)


def scribble_shape(shapes: Shapes, image: Image, index: tuple[int, ...], points: np.ndarray,
                   positive: bool) -> DrawnShape:
    """A path for a scribble of ``points`` (image pixels) on slice ``index``, to be drawn on ``shapes``."""
    coords = np.array([(*index, y, x) for y, x in np.asarray(points, dtype=float)])
    vertices = L.image_to_layer(shapes, image, coords)
    return DrawnShape(-1, "scribble", vertices, "path", np.asarray(points, dtype=float), bool(positive))


def style_shapes(shapes: Shapes) -> None:
    """Outline colours: boxes yellow, regions light blue, scribbles green (positive) or red (negative). Only set
    when they differ."""
    if not len(shapes.data):
        return
    positive = shape_signs(shapes)
    colours = np.array([L.BOX_COLOR if kind == "rectangle" else
                        REGION_COLOR if kind in ("polygon", "ellipse") else
                        L.POSITIVE_COLOR if positive[i] else L.NEGATIVE_COLOR
                        for i, kind in enumerate(shapes.shape_type)])
    current = np.asarray(shapes.edge_color)
    if current.shape != colours.shape or not np.allclose(current, colours):
        shapes.edge_color = colours


def remove_rows(shapes: Shapes, rows: list[int]) -> None:
    if rows:
        shapes.selected_data = set(rows)
        shapes.remove_selected()
