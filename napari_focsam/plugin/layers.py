"""Adapters between napari layers and the engine: which slice is shown, which clicks belong to it, and how a mask
is written into a Labels layer without touching anything else.

Everything here runs on the main (GUI) thread.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from napari.layers import Image, Labels, Points
from napari.viewer import Viewer

from ..engine.types import Prompts

POSITIVE_COLOR = (0.2, 0.9, 0.3, 1.0)  # green disc
NEGATIVE_COLOR = (1.0, 0.25, 0.25, 1.0)  # red cross
POSITIVE_SYMBOL, NEGATIVE_SYMBOL = "disc", "cross"
SIGN_FEATURE = "positive"


def spatial_ndim(image: Image) -> int:
    """Number of leading (slice) axes before the 2D plane (and the RGB axis) of an image layer."""
    return image.ndim - 2


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
    ndim = image.ndim - (1 if image.rgb else 0)
    layer = viewer.add_points(
        np.zeros((0, ndim)),
        name=name,
        features={SIGN_FEATURE: np.zeros(0, dtype=bool)},
        feature_defaults={SIGN_FEATURE: True},
        size=max(4.0, 0.012 * max(image.data.shape[-3 if image.rgb else -2:][:2])),
        face_color=list(POSITIVE_COLOR),
        border_color="white",
        border_width=0.1,
        scale=image.scale[:ndim],
        translate=image.translate[:ndim],
    )
    layer.mode = "add"
    return layer


def make_labels_layer(viewer: Viewer, image: Image, name: str = "FocSAM labels") -> Labels:
    """An empty int32 Labels layer covering ``image`` (same grid, scale and offset)."""
    shape = image.data.shape[:-1] if image.rgb else image.data.shape
    ndim = len(shape)
    return viewer.add_labels(
        np.zeros(shape, dtype=np.int32), name=name, scale=image.scale[:ndim], translate=image.translate[:ndim]
    )


def signs(points: Points) -> np.ndarray:
    """The sign of every point (True = positive); points without the feature count as positive."""
    if SIGN_FEATURE in points.features:
        return np.asarray(points.features[SIGN_FEATURE], dtype=bool)
    return np.ones(len(points.data), dtype=bool)


def style_points(points: Points) -> None:
    """Colour and shape every point by its sign (positive: green disc; negative: red cross)."""
    positive = signs(points)
    if len(positive) == 0:
        return
    points.face_color = np.where(positive[:, None], POSITIVE_COLOR, NEGATIVE_COLOR)
    points.symbol = np.where(positive, POSITIVE_SYMBOL, NEGATIVE_SYMBOL).tolist()


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
        return np.zeros((0, image.ndim - (1 if image.rgb else 0)))
    world = np.array([points.data_to_world(p) for p in points.data])
    ndim = image.ndim
    return np.array([image.world_to_data(w)[: ndim - (1 if image.rgb else 0)] for w in world])


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


def replace_slice_points(points: Points, image: Image, index: tuple[int, ...], prompts: Prompts) -> None:
    """Make the points on slice ``index`` equal ``prompts`` (used by undo/redo and re-open); others stay."""
    _, rows = prompts_for_slice(points, image, index)
    keep = np.setdiff1d(np.arange(len(points.data)), rows)
    kept_data = points.data[keep]
    kept_signs = signs(points)[keep]
    image_coords = [tuple(index) + tuple(p) for p in prompts.points]
    world = [image.data_to_world(np.asarray(c, dtype=float)) for c in image_coords]
    new_data = np.array([points.world_to_data(w) for w in world]).reshape(-1, points.ndim)
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
    base: np.ndarray,
    *,
    overwrite: bool = False,
) -> int:
    """Show ``mask`` as ``object_id`` on slice ``index`` of ``labels``, changing only pixels that differ.

    ``base`` is the slice as it was before this object was touched: pixels the object leaves go back to it, and
    other objects' pixels are never taken unless ``overwrite``. Goes through ``Labels.data_setitem`` so only the
    changed region is redrawn. Returns the number of pixels changed.
    """
    view = labels.data[index] if index else labels.data
    base_without = np.where(base == object_id, 0, base)
    allowed = mask if overwrite else mask & (base_without == 0)
    target = np.where(allowed, object_id, base_without).astype(view.dtype, copy=False)
    changed = np.asarray(view) != target
    if not changed.any():
        return 0
    ys, xs = np.nonzero(changed)
    indices = tuple(np.full(len(ys), i) for i in index) + (ys, xs)
    labels.data_setitem(indices, target[ys, xs])
    return len(ys)


def slice_copy(labels: Labels, index: tuple[int, ...]) -> np.ndarray:
    return np.array(labels.data[index] if index else labels.data, copy=True)
