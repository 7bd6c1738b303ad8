"""The image an annotator works on: which shapes it takes (2D gray or RGB(A), or a stack of them along one leading
axis), numpy, dask or zarr alike (only the shown slice is read), its default contrast limits, the labels it gets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.image import take_slice, to_model_rgb

SHAPES = "(H, W), (H, W, 3|4) colour, (Z, H, W) or (Z, H, W, 3|4)"


class ImageShapeError(ValueError):
    """The image cannot be annotated as it is; the message says which shapes work."""


@dataclass(frozen=True)
class ImageSource:
    """A validated image: ``data`` as given (numpy, dask, zarr), whether its last axis is colour, its slices."""

    data: Any
    rgb: bool
    depth: int  #: number of slices along the leading axis (0: a 2D image)
    height: int
    width: int

    @classmethod
    def of(cls, data: Any, rgb: bool | None = None) -> ImageSource:
        """Check ``data`` and describe it; raises :class:`ImageShapeError` with a clear message otherwise."""
        if not hasattr(data, "shape") or not hasattr(data, "dtype"):
            try:
                data = np.asarray(data)
            except Exception as exc:  # noqa: BLE001 - anything that is not an array becomes one message
                raise ImageShapeError(f"the image must be an array (numpy, dask, zarr), got {type(data).__name__}") \
                    from exc
        shape = tuple(int(n) for n in data.shape)
        kind = np.dtype(data.dtype).kind
        if kind not in "biuf":
            what = "complex values (take np.abs first)" if kind == "c" else f"dtype {data.dtype}"
            raise ImageShapeError(f"cannot annotate an image of {what}; use integers, floats or booleans")
        if rgb is None:
            rgb = len(shape) in (3, 4) and shape[-1] in (3, 4)
        spatial = 3 if rgb else 2
        leading = len(shape) - spatial
        if leading not in (0, 1) or (rgb and shape[-1] not in (3, 4)):
            raise ImageShapeError(f"cannot annotate an image of shape {shape}: expected {SHAPES}")
        height, width = shape[leading: leading + 2]
        if height < 2 or width < 2 or (leading and shape[0] < 1):
            raise ImageShapeError(f"the image of shape {shape} is too small: at least 2×2 pixels are needed")
        return cls(data, bool(rgb), shape[0] if leading else 0, height, width)

    @property
    def labels_shape(self) -> tuple[int, ...]:
        return ((self.depth,) if self.depth else ()) + (self.height, self.width)

    def index(self, z: int) -> tuple[int, ...]:
        return (int(z),) if self.depth else ()

    def slice(self, index: tuple[int, ...]) -> np.ndarray:
        """One slice as numpy (only that slice is read from dask or zarr)."""
        return take_slice(self.data, index, rgb=self.rgb)

    def default_contrast(self, index: tuple[int, ...] = ()) -> tuple[float, float]:
        """The contrast limits the model would pick for a slice: the dtype's range for 8-bit data, else the 0.5th
        and 99.5th percentiles of the finite pixels."""
        array = self.slice(index or self.index(0))
        if array.dtype == np.uint8:
            return 0.0, 255.0
        if array.dtype == bool:
            return 0.0, 1.0
        values = np.asarray(array, np.float32)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return 0.0, 1.0
        if values.size > 1_000_000:
            values = values[:: values.size // 1_000_000]
        low, high = (float(v) for v in np.percentile(values, (0.5, 99.5)))
        return (low, high) if high > low else (low, low + 1.0)

    def value_range(self, index: tuple[int, ...] = ()) -> tuple[float, float]:
        """The span the contrast sliders offer: the dtype's range for integers up to 16 bits, else the slice's."""
        dtype = np.dtype(self.data.dtype)
        if dtype.kind == "b":
            return 0.0, 1.0
        if dtype.kind in "iu" and dtype.itemsize <= 2:
            info = np.iinfo(dtype)
            return float(info.min), float(info.max)
        values = np.asarray(self.slice(index or self.index(0)), np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return 0.0, 1.0
        low, high = float(values.min()), float(values.max())
        return (low, high) if high > low else (low, low + 1.0)

    def display(self, index: tuple[int, ...], contrast: tuple[float, float]) -> np.ndarray:
        """What the model sees of a slice (and so what the widget shows): (H, W, 3) uint8."""
        return to_model_rgb(self.slice(index), rgb=self.rgb, contrast_limits=None if self.rgb else contrast)


def check_labels(labels: Any, source: ImageSource) -> np.ndarray:
    """Initial labels for ``source``: an int32 copy of ``labels`` (array-like) of the right shape."""
    array = np.asarray(labels.compute() if hasattr(labels, "compute") else labels)
    if array.shape != source.labels_shape:
        raise ImageShapeError(f"labels of shape {array.shape} do not fit the image: expected {source.labels_shape}")
    if array.dtype.kind not in "biu":
        raise ImageShapeError(f"labels must be integers, got {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > np.iinfo(np.int32).max):
        raise ImageShapeError("labels must be between 0 and 2**31 - 1")
    return array.astype(np.int32, copy=True)
