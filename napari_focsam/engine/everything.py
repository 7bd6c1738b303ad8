"""``segment_everything``: an instance label image of a 2D image with any model.

SAM-family models run the point-grid generator of :mod:`.automatic` on the image's (cached) embedding; the
weight-free fallback runs its seeded watershed (:mod:`.fallback_automatic`); large images go tile by tile
(:mod:`.everything_tiled`). Stacks: :func:`napari_focsam.stack.everything.segment_everything_stack`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .._cancel import CancelToken, check_cancel
from .automatic import AutomaticOptions, generate_masks
from .everything_tiled import segment_everything_tiled
from .fallback_automatic import WatershedOptions, watershed_instances
from .image import to_model_rgb
from .tile_grid import should_tile
from .views import input_side

__all__ = ["segment_everything"]

#: the fallback segments images up to this many pixels whole (its watershed holds a few float64 copies of the image)
FALLBACK_UNTILED_PIXELS = 4096 * 4096


def segment_everything(
    manager,
    image: np.ndarray,
    *,
    options: AutomaticOptions | None = None,
    watershed: WatershedOptions | None = None,
    rgb: bool | None = None,
    contrast_limits: Sequence[float] | None = None,
    cancel: CancelToken | None = None,
    progress: Callable[[int, int], None] | None = None,
    tiled: bool | None = None,
    tile: int | None = None,
    halo: int | None = None,
) -> np.ndarray:
    """The (H, W) uint32 instance image of one 2D image (gray, RGB/RGBA, any dtype) with ``manager``'s model.

    ``options`` apply to SAM-family models, ``watershed`` to the fallback. ``progress(done, total)`` reports the
    grid points decoded (the fallback: 0 of 1, then 1 of 1), or the tiles done when tiled.

    ``tiled``: segment tile by tile (:mod:`.everything_tiled`, with ``tile`` and ``halo``) instead of the whole
    image at once. By default a SAM-family model tiles an image whose longest side exceeds twice its input side
    (:func:`~.tile_grid.should_tile`: resized to the model's input, small objects would shrink away); the fallback,
    which works at full resolution anyway, tiles images of more than :data:`FALLBACK_UNTILED_PIXELS` pixels (for
    memory).
    """
    if tiled is None:
        if manager.is_fallback:
            tiled = int(image.shape[0]) * int(image.shape[1]) > FALLBACK_UNTILED_PIXELS
        else:
            tiled = should_tile(tuple(image.shape), input_side(manager.predictor))
    if tiled:
        return segment_everything_tiled(manager, image, tile=tile, halo=halo, options=options, watershed=watershed,
                                        rgb=rgb, contrast_limits=contrast_limits, cancel=cancel, progress=progress)
    if manager.is_fallback:
        if progress is not None:
            progress(0, 1)
        prepared = to_model_rgb(image, rgb=rgb, contrast_limits=contrast_limits)
        labels = watershed_instances(prepared, watershed or WatershedOptions(), cancel=cancel)
        if progress is not None:
            progress(1, 1)
        return labels
    embedding = manager.embed(image, rgb=rgb, contrast_limits=contrast_limits, cancel=cancel)
    check_cancel(cancel)
    result = generate_masks(manager.predictor, embedding, options or AutomaticOptions(), cancel=cancel,
                            progress=progress)
    return result.labels()
