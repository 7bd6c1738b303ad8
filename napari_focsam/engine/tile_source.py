"""Reading a large image for tiles without reading it whole: its full-resolution level, one slice of a stack, and
contrast limits from what was read (used by :mod:`.tiles`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .image import DEFAULT_PERCENTILES, robust_range


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
