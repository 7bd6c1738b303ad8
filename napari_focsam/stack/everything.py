"""``segment_everything_stack``: automatic instance segmentation of every 2D slice of a stack, read slice by slice.

Each slice is read when its task is submitted (a TIFF's page, a zarr or dask array's chunk rows: the stack is never
held whole), segmented by :func:`~napari_focsam.engine.everything.segment_everything` serially or on Dask (each
worker loads the model once), and written into the output, which can itself be a zarr array. Ids are unique across
the stack: each slice's ids follow those of the slices before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..engine.automatic import AutomaticOptions
from ..engine.everything import segment_everything
from ..engine.fallback_automatic import WatershedOptions
from ..engine.types import CancelToken, check_cancel
from .common import dask_config, local_manager, normalise_limits, prepare, runner_for
from .reader import StackReader, open_stack

__all__ = ["segment_everything_stack"]

#: the default contrast limits are the percentiles of this many evenly spaced slices (all of a shorter stack)
LIMIT_SAMPLES = 16


def _slice_task(manager, index: int, image: np.ndarray, options, watershed) -> tuple[int, np.ndarray]:
    return index, segment_everything(manager, image, options=options, watershed=watershed)


def task_everything(config, index: int, image: np.ndarray, options, watershed) -> tuple[int, np.ndarray]:
    """A Dask task: slice ``index`` with the worker's model (loaded once per worker)."""
    from .worker import manager_for

    return _slice_task(manager_for(config), index, image, options, watershed)


def stack_limits(reader: StackReader, samples: int = LIMIT_SAMPLES) -> tuple[float, float]:
    """The 0.5-99.5 percentiles of up to ``samples`` evenly spaced slices (finite pixels), so that every slice is
    scaled alike without reading the whole stack first."""
    n = reader.n_slices
    picks = np.unique(np.linspace(0, n - 1, min(n, samples)).round().astype(int))
    values = []
    for i in picks:
        data = np.asarray(reader.read(int(i)))
        values.append(data[np.isfinite(data)] if data.dtype.kind == "f" else data.ravel())
    finite = np.concatenate(values) if values else np.zeros(0)
    low, high = np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0)
    return float(low), float(high) if high > low else float(low) + 1.0


def segment_everything_stack(
    model: Any,
    stack: Any,
    *,
    options: AutomaticOptions | None = None,
    watershed: WatershedOptions | None = None,
    rgb: bool | None = None,
    contrast_limits: Sequence[float] | None = None,
    client: Any = None,
    workers: int | None = None,
    out: Any = None,
    cancel: CancelToken | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """uint32 instances of every 2D slice of a stack: (..., H, W) for a (..., H, W) or (..., H, W, 3) stack.

    ``stack``: a path (TIFF, zarr, ``.npy``), a numpy, zarr or dask array, or a
    :class:`~napari_focsam.stack.reader.StackReader`; ``rgb`` says whether its last axis is colour (None: guessed).
    ``model``: a :class:`~napari_focsam.engine.manager.ModelManager` (serial, in this process) or a model name /
    :class:`~napari_focsam.stack.worker.ModelConfig` (also on Dask: give ``client`` or ``workers``). Every slice is
    prepared with the same ``contrast_limits`` (default: :func:`stack_limits`). ``out``: an array of the labels'
    shape to fill (e.g. a zarr array), else a new numpy array. ``progress(done, total)`` counts slices.
    """
    reader = open_stack(stack, rgb=rgb)
    if not reader.leading_shape:
        raise ValueError(f"a stack is (Z, H, W){' plus 3 channels' if reader.rgb else ''} (or more leading axes), "
                         f"got one image of shape {reader.shape}; use segment_everything for a single image")
    shape = (*reader.leading_shape, *reader.slice_shape[:2])
    if out is None:
        out = np.zeros(shape, np.uint32)
    elif tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; the labels of this stack are {shape}")
    limits = normalise_limits(contrast_limits)
    if limits is None and not reader.rgb:
        limits = stack_limits(reader)
    total = reader.n_slices
    done = 0
    task: Callable[..., tuple[int, np.ndarray]]
    model_arg: Any  # the manager (serial) or the config the Dask workers load
    with runner_for(client, workers, None) as runner:
        if client is None and not workers:
            task, model_arg = _slice_task, local_manager(model)
        else:
            task, model_arg = task_everything, dask_config(model, runner)
        z = 0
        while z < total or runner.pending:
            check_cancel(cancel)
            while z < total and not runner.full:
                runner.submit(task, model_arg, z, prepare(reader, z, limits), options, watershed)
                z += 1
            for flat, labels in runner.results(wait=True):
                out[reader.index(flat)] = labels
                done += 1
                if progress is not None:
                    progress(done, total)
            if cancel is not None and cancel.cancelled:
                runner.cancel()
                check_cancel(cancel)
    offset = 0
    for flat in range(total):
        index = reader.index(flat)
        labels = np.asarray(out[index])
        present = labels > 0
        if present.any():
            labels[present] += offset
            out[index] = labels
            offset = int(labels.max())
    return out
