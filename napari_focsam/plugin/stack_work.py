"""The worker side of the annotator's stack tools: what each stack action computes, off the GUI thread.

Qt-free and layer-free: the stack panel reads the layers on the GUI thread, passes plain data here (from the job
runner's threads), and writes the results into layers on the GUI thread.
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.image import take_slice, to_model_rgb
from ..engine.manager import ModelManager
from ..engine.types import CancelToken, check_cancel
from ..stack import (
    PropagationResult,
    StackStore,
    StoreMismatchError,
    attach_store,
    precompute_stack,
    propagate_object,
    segment_from_prompts,
)


@dataclass(frozen=True)
class PrecomputeSummary:
    """What a precompute did: slices embedded now, slices already there (verified or cached) and skipped."""

    n_slices: int
    computed: int
    reused: int
    seconds: float
    store: Path | None  #: the stack store written; None: the model's embedding cache
    attached: bool = False  #: whether the store was attached to the model's cache by this run


def store_path(folder: str | os.PathLike[str], image_name: str, model_name: str) -> Path:
    """Where the store of an image and a model goes: ``folder`` itself if it is a store or named ``*.zarr``,
    otherwise ``folder/<image>.<model>.zarr``."""
    folder = Path(os.fspath(folder)).expanduser().absolute()
    if folder.suffix.lower() == ".zarr" or StackStore.is_store(folder):
        return folder
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", image_name).strip("._") or "image"
    return folder / f"{safe}.{model_name}.zarr"


def precompute_into_cache(manager: ModelManager, data: Any, rgb: bool, limits: tuple[float, float] | None, *,
                          progress: Callable[[int, int], None], cancel: CancelToken) -> PrecomputeSummary:
    """Embed every slice of ``data`` into ``manager``'s embedding cache, exactly as a click there would (same key);
    slices already cached are skipped. Refuses a stack whose embeddings cannot all stay in the cache's memory (and
    that has no disk store), since the first slices would be evicted again: a store folder is needed then."""
    start = time.perf_counter()
    leading = tuple(data.shape[: len(data.shape) - (3 if rgb else 2)])
    total = math.prod(leading)
    cache = manager.cache
    computed = reused = 0
    progress(0, total)
    for done, index in enumerate(np.ndindex(*leading), start=1):
        check_cancel(cancel)
        prepared = to_model_rgb(take_slice(data, index, rgb=rgb), rgb=rgb, contrast_limits=limits)
        ran: list[bool] = []

        def compute(image: np.ndarray = prepared, ran: list[bool] = ran) -> Any:
            ran.append(True)
            return manager.predictor.embed(image, cancel=cancel)

        embedding = cache.get_or_compute(manager.key_for(prepared), compute, device=manager.device)
        computed, reused = computed + bool(ran), reused + (not ran)
        if done == 1 and not cache.store_usable and embedding.nbytes * total > cache.max_bytes:
            raise MemoryError(
                f"the embeddings of the {total} slices ({embedding.nbytes * total / 2**20:.0f} MiB) do not fit the "
                f"in-memory cache ({cache.max_bytes / 2**20:.0f} MiB): choose a store folder to precompute this stack")
        progress(done, total)
    return PrecomputeSummary(total, computed, reused, time.perf_counter() - start, None)


def precompute_into_store(manager: ModelManager, data: Any, rgb: bool, limits: tuple[float, float] | None,
                          path: Path, replace: bool, *, progress: Callable[[int, int], None],
                          cancel: CancelToken) -> PrecomputeSummary:
    """Embed every slice into the stack store at ``path`` (resuming one made earlier) and attach it to
    ``manager``'s cache, so its embeddings serve the clicks."""
    try:
        result = precompute_stack(data, path, manager, rgb=rgb, contrast_limits=limits, overwrite=replace,
                                  progress=progress, cancel=cancel)
    except StoreMismatchError as exc:
        raise StoreMismatchError(f"{exc}. Tick 'replace a store made for other settings' or choose another "
                                 "folder.") from exc
    attached = False
    resolved = result.store.resolve()
    if not any(isinstance(s, StackStore) and Path(s.path).resolve() == resolved for s in manager.cache.sources):
        attached = attach_store(manager, result.store) is not None
    return PrecomputeSummary(result.n_slices, result.computed, result.verified, result.seconds, result.store,
                             attached)


def propagate_from_slice(manager: ModelManager, data: Any, rgb: bool, limits: tuple[float, float] | None,
                         index: tuple[int, ...], mask: np.ndarray, *, progress: Callable[[int, int], None],
                         cancel: CancelToken) -> PropagationResult:
    """Propagate ``mask`` (on slice ``index``, its last entry z) up and down the z axis."""
    return propagate_object(data, {int(index[-1]): mask}, manager, prefix=index[:-1], rgb=rgb,
                            contrast_limits=limits, progress=progress, cancel=cancel)


def segment_prompts_file(manager: ModelManager, data: Any, rgb: bool, limits: tuple[float, float] | None,
                         path: Path, *, progress: Callable[[int, int], None], cancel: CancelToken) -> np.ndarray:
    """The label stack of a prompts file on ``data``."""
    return np.asarray(segment_from_prompts(data, path, manager, rgb=rgb, contrast_limits=limits,
                                           progress=progress, cancel=cancel))


def everything_labels(manager: ModelManager, data: Any, rgb: bool, limits: tuple[float, float] | None, ndim: int,
                      *, progress: Callable[[int, int], None], cancel: CancelToken) -> np.ndarray:
    """Instance labels of a 2D image or of every 2D slice of an nD one (``ndim`` grid axes; ids unique)."""
    from ..engine.everything import segment_everything
    from ..stack.everything import segment_everything_stack

    if ndim <= 2:
        return segment_everything(manager, data, rgb=rgb, contrast_limits=limits, cancel=cancel, progress=progress)
    return np.asarray(segment_everything_stack(manager, data, rgb=rgb, contrast_limits=limits, cancel=cancel,
                                               progress=progress))
