"""Precompute the tile embeddings of a large image (or of every slice of a stack) into an embedding cache store.

``napari-focsam embed IMAGE --store DIR --tiles`` runs :func:`precompute_tiles`: every tile of the
:class:`~napari_focsam.engine.tile_grid.TileGrid` (the model's default tile and halo unless given) of every slice is
embedded and written to the zarr store of an :class:`~napari_focsam.engine.cache.EmbeddingCache`
(:mod:`napari_focsam.engine.embedding_store`), under the same keys that :class:`~napari_focsam.engine.tiles.TiledImage`
uses. A manager loaded with that store (``ModelManager.load(..., store=DIR)``, the widget's cache folder) then finds
every tile there instead of computing it, as long as the tile, halo, contrast limits and model are the same. Each
tile's region is read alone (TIFF files through their tiles, zarr and ``.npy`` lazily); an interrupted run resumes
(tiles already in the store are found, not recomputed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.cache import EmbeddingCache
from ..engine.manager import ModelManager
from ..engine.tiles import TiledImage
from .common import local_manager
from .reader import TIFF_SUFFIXES, open_stack


@dataclass(frozen=True)
class TilesResult:
    store: Path
    n_slices: int
    n_tiles: int  #: tiles per slice
    computed: int
    found: int  #: already in the store (a resumed or repeated run)
    seconds: float


def _lazy_array(stack: Any, rgb: bool | None, key: str | None) -> tuple[Any, bool]:
    """The stack as an array whose regions can be read alone, and whether its last axis is colour."""
    reader = open_stack(stack, rgb=rgb, key=key)
    if getattr(reader, "_tiff", None) is not None or (
            isinstance(stack, (str, os.PathLike)) and Path(stack).suffix.lower() in TIFF_SUFFIXES):
        import tifffile
        import zarr

        reader.close()
        return zarr.open_array(tifffile.imread(Path(stack).expanduser(), aszarr=True), mode="r"), reader.rgb
    return reader.array, reader.rgb


def precompute_tiles(stack: Any, store: str | os.PathLike[str], model: Any, *, tile: int | None = None,
                     halo: int | None = None, rgb: bool | None = None,
                     contrast_limits: Sequence[float] | None = None, key: str | None = None,
                     progress: Callable[[int, int], None] | None = None) -> TilesResult:
    """Embed every tile of every slice of ``stack`` (a path or an array) into the embedding store ``store`` with
    ``model`` (a :class:`~napari_focsam.stack.worker.ModelConfig` or a manager); see the module."""
    start = time.perf_counter()
    base = local_manager(model)
    problems: list[str] = []
    cache = EmbeddingCache(max_bytes=0, store=store, on_problem=problems.append)
    if not cache.store_usable:
        raise ValueError(f"{store} cannot be used as an embedding store: {'; '.join(problems) or 'unknown reason'}")
    manager = ModelManager(base.predictor, cache=cache)
    array, colour = _lazy_array(stack, rgb, key)
    spatial = 3 if colour else 2
    leading = tuple(int(n) for n in array.shape[: len(array.shape) - spatial])
    indices = [()] if not leading else [tuple(int(v) for v in i) for i in _ndindex(leading)]
    computed = found = 0
    n_tiles = 0
    done = 0
    for index in indices:
        tiled = TiledImage(manager, array, tile=tile, halo=halo, rgb=colour, contrast_limits=contrast_limits,
                           index=index, prefetch=0)
        n_tiles = len(tiled.grid)
        for t in tiled.grid:
            tiled.embed_tile(t)
            done += 1
            if progress is not None:
                progress(done, n_tiles * len(indices))
        computed += len(tiled.computed)
        found += len(tiled.from_cache)
    return TilesResult(Path(store), len(indices), n_tiles, computed, found, time.perf_counter() - start)


def _ndindex(shape: tuple[int, ...]) -> Any:
    import numpy as np

    return np.ndindex(*shape)
