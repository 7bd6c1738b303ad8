"""``segment_everything``: an instance label image of a 2D image (or of each slice of a stack) with any model.

SAM-family models run the point-grid generator of :mod:`.automatic` on the image's (cached) embedding; the
weight-free fallback runs its seeded watershed (:mod:`.fallback_automatic`). Stacks: :func:`segment_everything_stack`
segments each slice on its own, serially or on Dask (each worker loads the model once), with ids unique across the
stack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._cancel import CancelToken, check_cancel
from .automatic import AutomaticOptions, generate_masks
from .everything_tiled import segment_everything_tiled
from .fallback_automatic import WatershedOptions, watershed_instances
from .image import to_model_rgb
from .tile_grid import should_tile
from .views import input_side

__all__ = ["segment_everything", "segment_everything_stack"]

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


def _slice_task(manager, index: int, image: np.ndarray, options, watershed) -> tuple[int, np.ndarray]:
    return index, segment_everything(manager, image, options=options, watershed=watershed)


def task_everything(config, index: int, image: np.ndarray, options, watershed) -> tuple[int, np.ndarray]:
    """A Dask task: slice ``index`` with the worker's model (loaded once per worker)."""
    from ..stack.worker import manager_for

    return _slice_task(manager_for(config), index, image, options, watershed)


def segment_everything_stack(
    model: Any,
    stack: np.ndarray,
    *,
    options: AutomaticOptions | None = None,
    watershed: WatershedOptions | None = None,
    rgb: bool = False,
    contrast_limits: Sequence[float] | None = None,
    client: Any = None,
    workers: int | None = None,
    cancel: CancelToken | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """(Z, H, W) uint32 instances of a (Z, H, W) or (Z, H, W, 3) stack, slice by slice.

    ``model``: a :class:`~napari_focsam.engine.manager.ModelManager` (serial, in this process) or a model name /
    :class:`~napari_focsam.stack.worker.ModelConfig` (also on Dask: give ``client`` or ``workers``). Every slice is
    prepared with the same ``contrast_limits`` (default: the stack's 0.5-99.5 percentiles, so that the slices are
    scaled alike). Ids are unique across the stack: each slice's ids follow the previous slices'.
    ``progress(done, total)`` counts slices.
    """
    from ..stack.common import dask_config, local_manager, normalise_limits, runner_for

    stack = np.asarray(stack)
    if stack.ndim != (4 if rgb else 3):
        raise ValueError(f"a stack is (Z, H, W){' plus 3 channels' if rgb else ''}, got shape {stack.shape}")
    limits = normalise_limits(contrast_limits)
    if limits is None and not rgb:
        finite = stack[np.isfinite(stack)] if stack.dtype.kind == "f" else stack
        low, high = np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0)
        limits = (float(low), float(high) if high > low else float(low) + 1.0)
    prepared = [to_model_rgb(stack[z], rgb=rgb, contrast_limits=limits) for z in range(len(stack))]
    out = np.zeros(stack.shape[:3], np.uint32)
    total = len(stack)
    done = 0
    with runner_for(client, workers, None) as runner:
        if client is None and not workers:
            task, model_arg = _slice_task, local_manager(model)
        else:
            task, model_arg = task_everything, dask_config(model, runner)

        def submit(z: int) -> None:
            runner.submit(task, model_arg, z, prepared[z], options, watershed)
        z = 0
        while z < total or runner.pending:
            check_cancel(cancel)
            while z < total and not runner.full:
                submit(z)
                z += 1
            for index, labels in runner.results(wait=True):
                out[index] = labels
                done += 1
                if progress is not None:
                    progress(done, total)
            if cancel is not None and cancel.cancelled:
                runner.cancel()
                check_cancel(cancel)
    offset = 0
    for z in range(total):
        present = out[z] > 0
        if present.any():
            out[z][present] += offset
            offset = int(out[z].max())
    return out
