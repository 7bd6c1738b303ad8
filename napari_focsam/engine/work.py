"""What one click job and one embedding job of an interactive front-end do, off its GUI (or comm) thread.

Qt-free and Jupyter-free: the front-end (the napari controller, the notebook annotator) reads its inputs on its own
thread, passes plain data here, and writes the returned :class:`ClickResult` into its labels there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .channels import ChannelStack
from .image import take_slice
from .manager import ModelManager
from .tile_grid import check_tiling, should_tile
from .types import CancelToken, Prompts
from .views import Region, ViewMask, input_side


@dataclass
class TiledClick:
    """What a click on a tiled slice gives besides its mask: the region the mask covers (``view``: the mask of that
    region only, never a whole slice), the regions the object covered before and left (``left``: cleared of it
    when written), its tile (None for a view centred on the prompts) and the work of embedding the tiles around it
    (``prefetch(token)``, for the front-end's low-priority queue; None: nothing to prefetch)."""

    view: ViewMask
    left: tuple[Region, ...] = ()
    tile: tuple[int, int] | None = None
    prefetch: Callable[[CancelToken], Any] | None = None


@dataclass
class ClickResult:
    manager: ModelManager
    index: tuple[int, ...]
    object_id: int
    mask: np.ndarray  # the slice's mask (with ``region_only``, of a tiled slice: that of ``tiled.view.region``)
    embedding_key: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    embedded: float | None = None  # seconds spent computing the embedding (None: it came from the cache)
    finished_at: float = 0.0  # time.perf_counter() when the worker was done
    tiled: TiledClick | None = None  # set for a click on a tiled slice


@dataclass(frozen=True)
class TileSettings:
    """How a front-end treats large slices (see :mod:`.tiles`): ``enabled`` None tiles a slice whose longest side
    exceeds ``threshold`` (default: twice the model's input side), True always, False never; ``tile`` and ``halo``
    None are the model's defaults (768 and 128 px for SAM); ``prefetch`` rings of tiles around an object's tile are
    embedded after its click, at low priority. Bad values are refused with a message."""

    enabled: bool | None = None
    tile: int | None = None
    halo: int | None = None
    threshold: int | None = None
    prefetch: int = 1

    def __post_init__(self) -> None:
        if self.tile is not None or self.halo is not None:
            check_tiling(self.tile if self.tile is not None else max(1, self.halo or 0),
                         self.halo if self.halo is not None else 0)
        if self.threshold is not None and self.threshold < 1:
            raise ValueError(f"the tiling threshold must be at least 1 pixel, got {self.threshold}")
        if isinstance(self.prefetch, bool) or not isinstance(self.prefetch, int) or self.prefetch < 0:
            raise ValueError(f"prefetch is a number of rings of tiles (0 or more), got {self.prefetch!r}")

    def applies(self, manager: ModelManager, data: Any, index: tuple[int, ...], rgb: bool) -> bool:
        """Whether slice ``index`` of ``data`` (an array or a :class:`~napari_focsam.engine.channels.ChannelStack`)
        is annotated in tiles with ``manager``'s model."""
        if self.enabled is not None:
            return bool(self.enabled)
        shape = tuple(data.shape[len(index):])
        return should_tile(shape, input_side(manager.predictor), self.threshold)


def model_slice(data: Any, index: tuple[int, ...], rgb: bool) -> tuple[np.ndarray, bool]:
    """Slice ``index`` of ``data`` (an image array, or a :class:`~napari_focsam.engine.channels.ChannelStack`, whose
    slice is the mixed RGB image) and whether it is RGB."""
    if isinstance(data, ChannelStack):
        return data.take(index), True
    return take_slice(data, index, rgb=rgb), rgb


def embed_slice(manager: ModelManager, data: Any, index: tuple[int, ...], rgb: bool,
                contrast: tuple[float, float], cancel: CancelToken | None = None, *,
                tiles: TileSettings | None = None) -> tuple[ModelManager, tuple[int, ...], str, float | None]:
    """Embed one slice (from the cache if it is there). Returns the manager, the slice, the key and the seconds
    spent computing (None: it came from the cache). ``cancel`` is polled between the encoder's blocks. A slice
    annotated in tiles is not embedded whole (its tiles are, on the first click): the key is then ``""``."""
    if tiles is not None and tiles.applies(manager, data, index, rgb):
        return manager, index, "", None
    image, rgb = model_slice(data, index, rgb)
    embedding = manager.embed(image, rgb=rgb, contrast_limits=None if rgb else contrast, cancel=cancel)
    info = manager.last_embed
    seconds = info.seconds if info is not None and info.key == embedding.key and not info.from_cache else None
    return manager, index, embedding.key, seconds


def compute_object(manager: ModelManager, data: Any, index: tuple[int, ...], rgb: bool,
                   contrast: tuple[float, float], object_id: int, prompts: Prompts,
                   token: CancelToken, known_key: str | None = None, *,
                   tiles: TileSettings | None = None, region_only: bool = False) -> ClickResult:
    """One click job: the embedding (cached; computed to the end even if superseded, since the next job needs it),
    the object's session, and :meth:`~napari_focsam.engine.session.ObjectSession.sync` to the prompts (a superseded
    job stops between model steps and keeps the steps it completed).

    ``known_key`` is the slice's embedding key from an earlier job with the same image data and contrast: when that
    embedding (or the object's session) is still held, the slice is not converted and hashed again (a few
    milliseconds per click on a 1024² image).

    With ``tiles`` that apply to the slice, the object is answered from its tile (:mod:`.tiles`), its ``tiled``
    (:class:`TiledClick`) says which region the mask covers, and its ``embedding_key`` is ``""`` (no whole-slice
    session). The mask is the slice's (False outside that region, and the tiles around are embedded on a thread of
    the tiled image's own) or, with ``region_only``, the region's alone: no array the size of the slice is made,
    and the front-end runs ``tiled.prefetch`` on its own queue."""
    if tiles is not None and tiles.applies(manager, data, index, rgb):
        return _compute_tiled(manager, data, index, rgb, contrast, object_id, prompts, token, tiles, region_only)
    start = time.perf_counter()
    embedded = None
    session = _known_session(manager, known_key, object_id)
    if session is None:
        image, rgb = model_slice(data, index, rgb)
        embedding = manager.embed(image, rgb=rgb, contrast_limits=None if rgb else contrast)
        info = manager.last_embed
        embedded = info.seconds if info is not None and info.key == embedding.key and not info.from_cache else None
        token.raise_if_cancelled()
        session = manager.get_object(embedding, object_id) or manager.new_object(embedding, object_id)
    mask = session.sync(prompts, cancel=token)
    step = session.current
    timings = dict(step.prediction.timings) if step is not None else {}
    seconds = time.perf_counter() - start - (embedded or 0.0)
    return ClickResult(manager, index, object_id, mask, session.embedding.key, seconds, timings, embedded,
                       finished_at=time.perf_counter())


def _known_session(manager: ModelManager, key: str | None, object_id: int) -> Any:
    """The object's session on the embedding ``key`` (opened if the embedding is cached), or None."""
    if key is None:
        return None
    session = manager.get_object(key, object_id)
    if session is not None:
        return session
    embedding = manager.cache.get(key, device=manager.device)
    return None if embedding is None else manager.new_object(embedding, object_id)


def _tiled_object(manager: ModelManager, data: Any, index: tuple[int, ...], rgb: bool,
                  contrast: tuple[float, float], object_id: int, tiles: TileSettings) -> Any:
    from .tiles import tiled_image_for

    tiled = tiled_image_for(manager, data, index, rgb, None if rgb else contrast, tiles.tile, tiles.halo)
    return tiled, tiled.object(object_id)


def _tiled_click(obj: Any, view: ViewMask, prefetch: Callable[[CancelToken], Any] | None = None) -> TiledClick:
    left = tuple(region for region in obj.regions if region != view.region)
    return TiledClick(view, left, obj.tile, prefetch)


def _compute_tiled(manager: ModelManager, data: Any, index: tuple[int, ...], rgb: bool,
                   contrast: tuple[float, float], object_id: int, prompts: Prompts, token: CancelToken,
                   tiles: TileSettings, region_only: bool) -> ClickResult:
    start = time.perf_counter()
    tiled, obj = _tiled_object(manager, data, index, rgb, contrast, object_id, tiles)
    timings: dict[str, float] = {}
    if prompts.is_empty:  # every prompt removed: the object is cleared from the regions it covered
        region = obj.view.region if obj.view is not None else (0, 0, 1, 1)
        obj.current = None
        view = ViewMask(tiled.shape, region, np.zeros((region[2] - region[0], region[3] - region[1]), bool))
        click = _tiled_click(obj, view)
    else:
        before = (obj.current, obj.tile)
        view = obj.sync(prompts, cancel=token)
        step = obj.current.session.current
        timings = dict(step.prediction.timings) if step is not None else {}
        work = tiled.prefetch_work(obj.tile, tiles.prefetch) if obj.tile is not None and region_only else None
        if obj.tile is not None and not region_only and before != (obj.current, obj.tile):  # entered a tile
            tiled.prefetch(obj.tile, tiles.prefetch)
        click = _tiled_click(obj, view, work)
    return ClickResult(manager, index, object_id, view.mask if region_only else view.full(), "",
                       time.perf_counter() - start, timings, finished_at=time.perf_counter(), tiled=click)


def tiled_step(manager: ModelManager, data: Any, index: tuple[int, ...], rgb: bool,
               contrast: tuple[float, float], object_id: int, which: str, tiles: TileSettings, *,
               region_only: bool = False) -> tuple[Any, Prompts] | None:
    """Undo (``which="undo"``) or redo one step of a tiled object: its slice mask (with ``region_only``, a
    :class:`TiledClick`: the mask of the region it covers and the regions to clear) and its prompts (full-slice
    pixels), or None when the object has no steps."""
    _, obj = _tiled_object(manager, data, index, rgb, contrast, object_id, tiles)
    if obj.current is None:
        return None
    view_mask = obj.undo() if which == "undo" else obj.redo()
    return (_tiled_click(obj, view_mask) if region_only else view_mask.full()), obj.prompts
