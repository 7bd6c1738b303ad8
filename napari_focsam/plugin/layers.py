"""Adapters between napari layers and the engine: which slice is shown, which clicks and which box (rectangle of a
Shapes layer) belong to it, and how a mask is written into a Labels layer without touching anything else.

Everything here runs on the main (GUI) thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Points, Shapes
from napari.viewer import Viewer

from ..engine.types import Prompts

POSITIVE_COLOR = (0.2, 0.9, 0.3, 1.0)  # green disc
NEGATIVE_COLOR = (1.0, 0.25, 0.25, 1.0)  # red cross
POSITIVE_SYMBOL, NEGATIVE_SYMBOL = "disc", "cross"
SIGN_FEATURE = "positive"
BOX_COLOR = (1.0, 0.8, 0.1, 1.0)  # yellow outline, no fill


def spatial_ndim(image: Image) -> int:
    """Number of leading (slice) axes before the 2D plane (and the RGB axis) of an image layer."""
    return image.ndim - 2


def grid_ndim(image: Image) -> int:
    """Number of data axes of an image layer without its colour axis (napari's ``Image.ndim`` never counts it)."""
    return image.ndim


def current_index(viewer: Viewer, image: Image) -> tuple[int, ...]:
    """The slice of ``image`` the viewer shows: its leading data indices at the current dims position."""
    leading = spatial_ndim(image)
    if leading == 0:
        return ()
    point = np.asarray(viewer.dims.point)[-image.ndim:]
    data = np.asarray(image.world_to_data(point))
    index = np.round(data[:leading]).astype(int)
    upper = np.asarray(image.data.shape[:leading]) - 1
    return tuple(int(i) for i in np.clip(index, 0, upper))


def make_points_layer(viewer: Viewer, image: Image, name: str = "FocSAM clicks") -> Points:
    """A Points layer for clicks on ``image``, in add mode, with the sign as a feature."""
    ndim = grid_ndim(image)
    layer = viewer.add_points(
        np.zeros((0, ndim)),
        name=name,
        features={SIGN_FEATURE: np.zeros(0, dtype=bool)},
        feature_defaults={SIGN_FEATURE: True},
        size=max(4.0, 0.012 * max(image.data.shape[-3 if image.rgb else -2:][:2])),
        face_color=list(POSITIVE_COLOR),
        border_color="white",
        border_width=0.1,
        **grid_of(image),
    )
    layer.mode = "add"
    return layer


def make_shapes_layer(viewer: Viewer, image: Image, name: str = "FocSAM shapes") -> Shapes:
    """An empty Shapes layer for box, polygon and scribble prompts on ``image`` (same grid), ready to draw
    rectangles."""
    ndim = grid_ndim(image)
    width = max(1.0, 0.004 * max(image.data.shape[-3 if image.rgb else -2:][:2]))
    layer = viewer.add_shapes(
        None,
        ndim=ndim,
        name=name,
        shape_type="rectangle",
        edge_color=list(BOX_COLOR),
        face_color=[0.0, 0.0, 0.0, 0.0],
        edge_width=width,
        **grid_of(image),
    )
    layer.current_edge_color = list(BOX_COLOR)
    layer.current_face_color = [0.0, 0.0, 0.0, 0.0]
    layer.current_edge_width = width
    layer.mode = "add_rectangle"
    return layer


def make_labels_layer(viewer: Viewer, image: Image, name: str = "FocSAM labels") -> Labels:
    """An empty int32 Labels layer covering ``image`` (same grid, scale and offset)."""
    shape = image.data.shape[:-1] if image.rgb else image.data.shape
    return viewer.add_labels(np.zeros(shape, dtype=np.int32), name=name, **grid_of(image))


def grid_of(image: Image) -> dict[str, object]:
    """The world transform of ``image`` (scale, translate, rotation, shear, affine) as layer keyword arguments: a
    layer made with them lies on the image's pixels, anisotropic or rotated."""
    ndim = grid_ndim(image)
    return {"scale": image.scale[:ndim], "translate": image.translate[:ndim], "rotate": image.rotate,
            "shear": image.shear, "affine": image.affine}


def signs(points: Points) -> np.ndarray:
    """The sign of every point (True = positive); points without the feature count as positive."""
    if SIGN_FEATURE in points.features:
        return np.asarray(points.features[SIGN_FEATURE], dtype=bool)
    return np.ones(len(points.data), dtype=bool)


def style_points(points: Points) -> None:
    """Colour and shape every point by its sign (positive: green disc; negative: red cross). Only what differs is
    set: restyling every point on every click made each click slower as clicks accumulated."""
    positive = signs(points)
    if len(positive) == 0:
        return
    colours = np.where(positive[:, None], POSITIVE_COLOR, NEGATIVE_COLOR)
    current = np.asarray(points.face_color)
    if current.shape != colours.shape or not np.allclose(current, colours):
        points.face_color = colours
    symbols = np.where(positive, POSITIVE_SYMBOL, NEGATIVE_SYMBOL)
    if [str(getattr(s, "value", s)) for s in points.symbol] != symbols.tolist():
        points.symbol = symbols.tolist()


def set_signs(points: Points, indices: Sequence[int], positive: np.ndarray | bool) -> None:
    features = points.features.copy()
    if SIGN_FEATURE not in features:
        features[SIGN_FEATURE] = True
    values = features[SIGN_FEATURE].to_numpy(dtype=bool).copy()
    values[list(indices)] = positive
    features[SIGN_FEATURE] = values
    points.features = features
    style_points(points)


def points_in_image_coords(points: Points, image: Image) -> np.ndarray:
    """Point positions in ``image``'s data coordinates (N, image spatial ndim)."""
    if len(points.data) == 0:
        return np.zeros((0, grid_ndim(image)))
    return layer_to_image(points, image, np.asarray(points.data, dtype=float))


def prompts_for_slice(points: Points, image: Image, index: tuple[int, ...]) -> tuple[Prompts, np.ndarray]:
    """The clicks on slice ``index`` as engine prompts ((y, x) in image pixels, in the order they were added),
    and their row numbers in the Points layer."""
    coords = points_in_image_coords(points, image)
    leading = len(index)
    if len(coords) == 0:
        return Prompts(), np.zeros(0, dtype=int)
    on_slice = np.all(np.round(coords[:, :leading]).astype(int) == np.asarray(index, dtype=int), axis=1)
    rows = np.nonzero(on_slice)[0]
    yx = coords[rows][:, leading: leading + 2]
    return Prompts(yx, signs(points)[rows].astype(int)), rows


def layer_to_image(layer: Points | Shapes, image: Image, coords: np.ndarray) -> np.ndarray:
    """Data coordinates of ``layer`` (N, layer ndim) as ``image`` data coordinates (N, image spatial ndim); all
    points at once (one transform per point made each click slower as clicks accumulated)."""
    ndim = grid_ndim(image)
    world = _transform(layer, np.asarray(coords, dtype=float).reshape(-1, layer.ndim), inverse=False)
    return _transform(image, _fit(world, image.ndim), inverse=True)[:, :ndim]


def image_to_layer(layer: Points | Shapes, image: Image, coords: np.ndarray) -> np.ndarray:
    """``image`` data coordinates (N, image spatial ndim) as data coordinates of ``layer`` (N, layer ndim)."""
    coords = np.asarray(coords, dtype=float)
    coords = _fit(coords.reshape(len(coords), -1) if coords.size else np.zeros((0, image.ndim)), image.ndim)
    world = _transform(image, coords, inverse=False)
    return _transform(layer, _fit(world, layer.ndim), inverse=True)


def _fit(coords: np.ndarray, ndim: int) -> np.ndarray:
    """Rows of ``coords`` to ``ndim`` columns as napari does: the last ``ndim``, or zeros in front."""
    if coords.shape[1] >= ndim:
        return coords[:, coords.shape[1] - ndim:]
    return np.concatenate([np.zeros((len(coords), ndim - coords.shape[1])), coords], axis=1)


def _transform(layer: Image | Points | Shapes, coords: np.ndarray, *, inverse: bool) -> np.ndarray:
    """``layer.data_to_world`` (or ``world_to_data``) of every row at once: the same affine napari applies."""
    if len(coords) == 0:
        return coords.reshape(0, layer.ndim)
    affine = layer._transforms[1:].simplified  # what data_to_world/world_to_data use
    return np.asarray(affine.inverse(coords) if inverse else affine(coords), dtype=float).reshape(len(coords), -1)


def box_rows(shapes: Shapes, image: Image, index: tuple[int, ...]) -> list[tuple[int, np.ndarray]]:
    """The rectangles of ``shapes`` on slice ``index``, in the order they were drawn: (row, (y0, x0, y1, x1) in
    ``image`` pixels, unclipped). Other shape types (ellipses, polygons, ...) are not boxes and are skipped."""
    leading = len(index)
    out = []
    for row, (vertices, kind) in enumerate(zip(shapes.data, shapes.shape_type)):
        if kind != "rectangle" or len(vertices) == 0:
            continue
        coords = layer_to_image(shapes, image, np.asarray(vertices, dtype=float))
        if leading and not np.all(np.round(coords[:, :leading]).astype(int) == np.asarray(index, dtype=int)):
            continue
        yx = coords[:, leading: leading + 2]
        out.append((row, np.concatenate([yx.min(axis=0), yx.max(axis=0)])))
    return out


def box_for_slice(shapes: Shapes, image: Image, index: tuple[int, ...]) -> np.ndarray | None:
    """The box prompt on slice ``index``: the latest rectangle there, (y0, x0, y1, x1) in ``image`` pixels clipped
    to the image; None when there is none (or it lies entirely outside the image)."""
    height, width = image.data.shape[-3:-1] if image.rgb else image.data.shape[-2:]
    for _, box in reversed(box_rows(shapes, image, index)):
        y0, x0 = max(box[0], 0.0), max(box[1], 0.0)
        y1, x1 = min(box[2], height - 1.0), min(box[3], width - 1.0)
        if y0 <= y1 and x0 <= x1:
            return np.array([y0, x0, y1, x1])
    return None


def replace_slice_box(shapes: Shapes, image: Image, index: tuple[int, ...], box: np.ndarray | None) -> None:
    """Make the rectangles on slice ``index`` one rectangle for ``box`` (none for None); other slices stay."""
    rows = [row for row, _ in box_rows(shapes, image, index)]
    if rows:
        shapes.selected_data = set(rows)
        shapes.remove_selected()
    if box is not None:
        y0, x0, y1, x1 = (float(v) for v in box)
        corners = [(*index, y, x) for y, x in ((y0, x0), (y0, x1), (y1, x1), (y1, x0))]
        shapes.add(image_to_layer(shapes, image, np.asarray(corners, dtype=float)), shape_type="rectangle")


def replace_slice_points(points: Points, image: Image, index: tuple[int, ...], prompts: Prompts) -> None:
    """Make the points on slice ``index`` equal ``prompts`` (used by undo/redo and re-open); others stay."""
    _, rows = prompts_for_slice(points, image, index)
    keep = np.setdiff1d(np.arange(len(points.data)), rows)
    kept_data = points.data[keep]
    kept_signs = signs(points)[keep]
    image_coords = np.array([tuple(index) + tuple(p) for p in prompts.points], dtype=float)
    new_data = image_to_layer(points, image, image_coords.reshape(len(prompts.points), len(index) + 2))
    data = np.concatenate([kept_data, new_data]) if len(kept_data) else new_data
    features = {SIGN_FEATURE: np.concatenate([kept_signs, np.asarray(prompts.labels, dtype=bool)])}
    points.data = data
    points.features = features
    style_points(points)


def write_object(
    labels: Labels,
    index: tuple[int, ...],
    mask: np.ndarray,
    object_id: int,
    base: Any,
    *,
    overwrite: bool = False,
) -> int:
    """Show ``mask`` as ``object_id`` on slice ``index`` of ``labels``, changing only pixels that differ.

    The object takes the mask's pixels that are background or already its own (every mask pixel with
    ``overwrite``); pixels it holds outside the mask go back to ``base``, the slice as it was before this object was
    touched (an array or a :class:`~.label_base.LabelBase`; background where ``base`` had the object itself). Every
    other pixel keeps its *current* value: other objects are judged by the labels as they are now, so a mask of an
    earlier object that lands after ``base`` was taken (its job finished late) is never erased or taken. Only the
    window where the object is or appears is compared (on the GUI thread a whole 1024² slice costs milliseconds),
    and the write goes through ``Labels.data_setitem`` so only the changed region is redrawn. Returns the number of
    pixels changed.
    """
    view = labels.data[index] if index else labels.data
    region = _extent(mask, np.asarray(view) == object_id)
    if region is None:
        return 0
    rows, cols = region
    return write_window(labels, index, (rows.start, cols.start, rows.stop, cols.stop), mask[rows, cols], object_id,
                        base, overwrite=overwrite)


def write_window(labels: Labels, index: tuple[int, ...], region: tuple[int, int, int, int], mask: np.ndarray,
                 object_id: int, base: Any, *, overwrite: bool = False) -> int:
    """:func:`write_object` inside ``region`` (y0, x0, y1, x1) of slice ``index`` only: ``mask`` is that region's
    mask, ``base`` anything indexed by the slice's (rows, columns) (an array, :class:`~.label_base.LabelBase`).
    Nothing outside the region is read or written: no array the size of the slice is made."""
    rows, cols = slice(region[0], region[2]), slice(region[1], region[3])
    view = labels.data[index] if index else labels.data
    mask, base, current = np.asarray(mask, bool), np.asarray(base[rows, cols]), np.asarray(view[rows, cols])
    target = current.copy()
    leaving = (current == object_id) & ~mask
    target[leaving] = np.where(base[leaving] == object_id, 0, base[leaving])
    entering = mask if overwrite else mask & ((current == 0) | (current == object_id))
    target[entering] = object_id
    changed = current != target
    if not changed.any():
        return 0
    ys, xs = np.nonzero(changed)
    indices = tuple(np.full(len(ys), i) for i in index) + (ys + rows.start, xs + cols.start)
    labels.data_setitem(indices, target[ys, xs])
    return len(ys)


def _extent(*masks: np.ndarray) -> tuple[slice, slice] | None:
    """The smallest (rows, columns) window holding every True pixel of the (H, W) ``masks``, or None if none."""
    rows = np.zeros(masks[0].shape[0], bool)
    cols = np.zeros(masks[0].shape[1], bool)
    for m in masks:
        rows |= m.any(axis=1)
        cols |= m.any(axis=0)
    if not rows.any():
        return None
    ys, xs = np.flatnonzero(rows), np.flatnonzero(cols)
    return slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1)


def slice_copy(labels: Labels, index: tuple[int, ...]) -> np.ndarray:
    return np.array(labels.data[index] if index else labels.data, copy=True)
