"""Automatic instance segmentation of a large image, tile by tile (never read or held whole by the model).

:func:`segment_everything_tiled` runs the automatic mode of :mod:`.everything` on each tile's view of a
:class:`~.tiles.TiledImage` (SAM-family models: the point grid on the tile's cached embedding, at the model's full
input resolution; the fallback: its seeded watershed on the view) and keeps each object once:

1. an object belongs to the tile whose **core** contains the centre of its bounding box (the rule objects follow
   when annotated by clicking, :mod:`.tile_grid`), so an object seen whole by two overlapping views is kept once;
2. an object touching an edge of its view that lies inside the image is cut by that edge and dropped (the
   neighbouring view holds it whole when it reaches at most a halo beyond its core: objects larger than the halo
   allows are lost; raise ``halo`` for them, or segment a resized copy of the image);
3. objects are painted tile after tile; inside a tile a smaller object lying on a larger one keeps its pixels (as
   :func:`~.automatic.masks_to_labels` paints them), and a pixel already claimed by an earlier tile's object keeps
   its id.

Ids are 1, 2, ... in painting order, unique over the image. The output is a new uint32 array, or ``out`` (any
array with numpy indexing, e.g. a zarr array of the image's shape): only each view's region is read and written.
The fallback's threshold (Otsu's) is chosen per view, so its foreground can differ slightly from view to view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._cancel import CancelToken, check_cancel
from .automatic import AutomaticOptions, generate_masks
from .fallback_automatic import WatershedOptions, watershed_instances
from .tile_grid import Tile
from .tiles import TiledImage
from .views import View

if TYPE_CHECKING:
    from .manager import ModelManager

__all__ = ["segment_everything_tiled"]

#: the fallback's (tile, halo): its watershed works at full resolution on any size, so tiles only bound memory
FALLBACK_TILING = (2048, 128)


def segment_everything_tiled(
    manager: ModelManager,
    image: Any,
    *,
    tile: int | None = None,
    halo: int | None = None,
    options: AutomaticOptions | None = None,
    watershed: WatershedOptions | None = None,
    rgb: bool | None = None,
    contrast_limits: Sequence[float] | None = None,
    index: Sequence[int] = (),
    out: Any = None,
    cancel: CancelToken | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """The instance labels of a large 2D image (numpy, zarr, dask, multi-scale: level 0; ``index`` picks a slice
    of a stack) segmented tile by tile (see the module). ``tile``/``halo`` default to the model's tiling (the
    fallback, which needs no embedding: :data:`FALLBACK_TILING`); ``progress(done, total)`` counts tiles. Returns
    ``out`` (filled) or a new (H, W) uint32 array."""
    if manager.is_fallback:
        tile = FALLBACK_TILING[0] if tile is None else tile
        halo = FALLBACK_TILING[1] if halo is None else halo
    tiled = TiledImage(manager, image, tile=tile, halo=halo, rgb=rgb, contrast_limits=contrast_limits,
                       index=index, prefetch=0)
    grid = tiled.grid
    h, w = grid.image_shape
    if out is None:
        out = np.zeros((h, w), np.uint32)
    elif tuple(out.shape) != (h, w):
        raise ValueError(f"out has shape {tuple(out.shape)}; the labels of this image are {(h, w)}")
    next_id = 1
    total = len(grid)
    for done, t in enumerate(grid, start=1):
        check_cancel(cancel)
        view = grid.view(t)
        masks = _tile_masks(tiled, t, view, options, watershed, cancel)
        keep = owned(masks, view, grid.core(t), (h, w))
        region = np.array(out[view.slices])
        for mask in _smallest_first(masks[keep]):
            free = mask & (region == 0)
            if free.any():
                region[free] = next_id
                next_id += 1
        out[view.slices] = region
        if progress is not None:
            progress(done, total)
    return out


def _tile_masks(tiled: TiledImage, t: Tile, view: View, options: AutomaticOptions | None,
                watershed: WatershedOptions | None, cancel: CancelToken | None) -> np.ndarray:
    """(N, h, w) bool masks of every object the automatic mode finds in tile ``t``'s view."""
    manager = tiled.manager
    if manager.is_fallback:
        labels = watershed_instances(tiled.prepare(view), watershed or WatershedOptions(), cancel=cancel)
        ids = np.unique(labels)
        ids = ids[ids > 0]
        return labels[None] == ids[:, None, None] if len(ids) else np.zeros((0, *labels.shape), bool)
    embedding = tiled.embed_tile(t, cancel=cancel)
    check_cancel(cancel)
    return generate_masks(manager.predictor, embedding, options or AutomaticOptions(), cancel=cancel).masks


def owned(masks: np.ndarray, view: View, core: tuple[int, int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """Which of ``masks`` (N, h, w, in ``view``'s frame) a tile with ``core`` keeps in an image of ``shape``: those
    whose bounding box's centre lies in the core and that no edge of the view inside the image cuts."""
    keep = np.zeros(len(masks), bool)
    oy, ox = view.offset
    vh, vw = view.shape
    h, w = shape
    inner = (oy > 0, ox > 0, oy + vh < h, ox + vw < w)  # top, left, bottom, right edges inside the image
    cy0, cx0, cy1, cx1 = core
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if not len(rows):
            continue
        y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
        if (inner[0] and y0 == 0) or (inner[1] and x0 == 0) or (inner[2] and y1 == vh - 1) or \
                (inner[3] and x1 == vw - 1):
            continue  # cut by the view's edge: the neighbour whose core holds it sees it whole
        cy, cx = oy + (y0 + y1 + 1) / 2, ox + (x0 + x1 + 1) / 2
        keep[i] = cy0 <= cy < cy1 and cx0 <= cx < cx1
    return keep


def _smallest_first(masks: np.ndarray) -> list[np.ndarray]:
    """The masks smallest first: painted into free pixels only, a smaller mask lying on a larger one keeps its
    pixels, as in :func:`~.automatic.masks_to_labels` (which paints the largest first, over-painting)."""
    areas = [int(np.count_nonzero(mask)) for mask in masks]
    return [masks[i] for i in np.argsort(areas, kind="stable")]
