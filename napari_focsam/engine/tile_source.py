"""Reading a large image for tiles without reading it whole: its full-resolution level, one slice of a stack, and
contrast limits from what was read; and the tiled images a front-end keeps per manager (used by :mod:`.tiles`)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .image import DEFAULT_PERCENTILES, robust_range

if TYPE_CHECKING:
    from .manager import ModelManager
    from .tiles import TiledImage


def level_zero(image: Any) -> Any:
    """The full-resolution array of ``image``: itself, the first level of a multi-scale list (napari's multiscale
    data, a list of zarr/dask arrays), or the first dataset of an OME-Zarr group."""
    if isinstance(image, (list, tuple)) or type(image).__name__ == "MultiScaleData":
        if not len(image):
            raise ValueError("a multi-scale image needs at least one level")
        return image[0]
    attrs = getattr(image, "attrs", None)
    if attrs is not None and not hasattr(image, "shape"):
        multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        path = multiscales[0]["datasets"][0]["path"] if multiscales else "0"
        return image[path]
    return image


class Plane:
    """One 2D (or RGB 2D) slice of an nD array, read lazily: indexing prepends the slice's leading indices."""

    def __init__(self, data: Any, index: tuple[int, ...]) -> None:
        self.data, self.index = data, index
        self.shape = tuple(data.shape[len(index):])

    def __getitem__(self, key: Any) -> Any:
        return self.data[self.index + (key if isinstance(key, tuple) else (key,))]


def percentiles(array: Any) -> tuple[float, float]:
    """The robust (0.5, 99.5 percentile) range of ``array``'s finite values; (0, 1) when it has none."""
    values = np.asarray(array.compute() if hasattr(array, "compute") else array, dtype=np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return 0.0, 1.0
    return robust_range(values, finite, DEFAULT_PERCENTILES)


_REGISTRY: weakref.WeakKeyDictionary[Any, dict[tuple, tuple[tuple[Any, ...], TiledImage]]] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def tiled_image_for(manager: ModelManager, data: Any, index: tuple[int, ...], rgb: bool,
                    contrast_limits: Sequence[float] | None, tile: int | None = None, halo: int | None = None, *,
                    prefetch: int = 0) -> TiledImage:
    """The :class:`TiledImage` a front-end uses for one slice of ``data`` with ``manager`` (made once, then kept
    with the manager while the same data array, slice, colour mode, contrast limits and tiling are asked for).

    ``data`` may be a :class:`~.channels.ChannelStack` (made anew for every request by a front-end that reads the
    mix from its layers): its slice is tiled as a :class:`~.channels.MixedPlane`, kept while the same channel
    arrays and the same mix (channels, colours, limits) are asked for. ``prefetch``: the rings a new image embeds on
    its own thread (default none: a front-end runs :meth:`TiledImage.prefetch_work` on its job runner)."""
    from .channels import ChannelStack, MixedPlane
    from .tiles import TiledImage

    limits = None if contrast_limits is None else tuple(float(v) for v in contrast_limits)
    if isinstance(data, ChannelStack):
        sources: tuple[Any, ...] = tuple(data.arrays)
        key: tuple[Any, ...] = ("channels", tuple(_identity(a) for a in sources), data.mix, tuple(index), tile,
                                halo)
    else:
        sources = (data,)
        key = (id(data), tuple(index), bool(rgb), limits, tile, halo)
    with _REGISTRY_LOCK:
        images = _REGISTRY.setdefault(manager, {})
        held = images.get(key)
        if held is not None and [_identity(a) for a in held[0]] == [_identity(a) for a in sources]:
            return held[1]
        if isinstance(data, ChannelStack):
            tiled = TiledImage(manager, MixedPlane(data, index), tile=tile, halo=halo, rgb=True, prefetch=prefetch)
        else:
            tiled = TiledImage(manager, data, tile=tile, halo=halo, rgb=rgb, contrast_limits=limits, index=index,
                               prefetch=prefetch)
        images[key] = (sources, tiled)
        return tiled


def _identity(array: Any) -> Any:
    """What names a channel array across requests: the array itself (its id), or for a lazy view made anew for
    every request (a front-end's channel of a larger array) its type and its fields (plain values as they are,
    other objects by id). The registry holds the first such object, so the ids it names stay taken while held."""
    fields = getattr(array, "__dict__", None)
    if isinstance(array, np.ndarray) or hasattr(array, "chunks") or not fields:
        return id(array)
    return type(array).__qualname__, tuple(sorted((k, _plain(v)) for k, v in fields.items()))


def _plain(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool, type(None), np.dtype)):
        return value
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return ("id", id(value))
