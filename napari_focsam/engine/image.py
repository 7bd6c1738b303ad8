"""From whatever a user has (gray or RGB/RGBA, any dtype, one slice of an nD stack) to the (H, W, 3) uint8 RGB
image every model takes.

The rule is "the model sees what the user sees": with contrast limits (napari's, or given by hand) the range is
mapped linearly to 0..255; without them, 8-bit data passes through unchanged and anything else is stretched between
robust percentiles (0.5 % and 99.5 % by default), so a 12-bit microscope image or a float image in any range works.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

DEFAULT_PERCENTILES = (0.5, 99.5)


class ImageValueWarning(UserWarning):
    """Some pixels could not be used as they are (NaN or infinite values)."""


def to_model_rgb(
    data: np.ndarray,
    *,
    rgb: bool | None = None,
    contrast_limits: Sequence[float] | None = None,
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
) -> np.ndarray:
    """Convert a 2D image to a C-contiguous (H, W, 3) uint8 RGB array.

    ``rgb``: whether the last axis holds colour channels (3 = RGB, 4 = RGBA, alpha dropped); ``None`` guesses
    from the shape (a last axis of 3 or 4 on a 3-D array). A 2-D array is gray and is repeated into three channels.
    """
    array = np.asarray(data)
    if rgb is None:
        rgb = array.ndim == 3 and array.shape[-1] in (3, 4)
    if rgb:
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise ValueError(f"an RGB(A) image must have shape (H, W, 3) or (H, W, 4), got {array.shape}")
        array = array[..., :3]
    elif array.ndim != 2:
        raise ValueError(
            f"expected one 2D slice (H, W) or an RGB(A) image (H, W, 3|4), got shape {array.shape}; "
            "for stacks, take one slice first (see take_slice)"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"the image is empty (shape {array.shape})")
    if array.dtype.kind == "c":
        raise ValueError("complex images are not supported: take the magnitude (np.abs) first")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"unsupported image dtype {array.dtype}")

    scaled = _to_uint8(array, contrast_limits, percentiles)
    if scaled.ndim == 2:
        scaled = np.repeat(scaled[..., None], 3, axis=2)
    return np.ascontiguousarray(scaled)


def _to_uint8(
    array: np.ndarray, contrast_limits: Sequence[float] | None, percentiles: tuple[float, float]
) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if contrast_limits is None and array.dtype == np.uint8:
        return array
    values = array.astype(np.float32, copy=False)
    finite = np.isfinite(values)
    if not finite.all():
        missing = int(finite.size - np.count_nonzero(finite))
        if missing == finite.size:
            raise ValueError("the image has no finite pixel (every value is NaN or infinite): nothing to segment")
        warnings.warn(f"{missing} of {finite.size} pixels are NaN or infinite: the model sees them as the lowest "
                      "value (black)", ImageValueWarning, stacklevel=3)
    if contrast_limits is not None:
        low, high = (float(v) for v in contrast_limits)
        if not (np.isfinite(low) and np.isfinite(high)):
            raise ValueError(f"contrast limits must be finite numbers, got {tuple(contrast_limits)}")
    elif finite.any():
        low, high = robust_range(values, finite, percentiles)
    else:
        low, high = 0.0, 1.0
    if high <= low:  # a constant image (or inverted limits): map it to black rather than divide by zero
        out = np.zeros(array.shape, np.uint8)
        return out
    scaled = (values - low) * (255.0 / (high - low))
    scaled = np.where(finite, scaled, 0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def robust_range(values: np.ndarray, finite: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """The (low, high) ``percentiles`` of the values where ``finite`` holds (at least one does).

    Above a million values, the percentiles are those of a strided subsample: as good and much cheaper.
    """
    sample = values[finite] if not finite.all() else values.reshape(-1)
    if sample.size > 1_000_000:
        sample = sample[:: sample.size // 1_000_000]
    low, high = (float(v) for v in np.percentile(sample, percentiles))
    return low, high


def take_slice(data: np.ndarray, index: Sequence[int], *, rgb: bool = False) -> np.ndarray:
    """The 2D slice (or RGB 2D slice) of an nD array at ``index`` over its leading axes, as a numpy array.

    Works with anything indexable like numpy (zarr, dask arrays): only that slice is read.
    """
    spatial = 3 if rgb else 2
    leading = data.ndim - spatial
    index = tuple(int(i) for i in index)
    if leading < 0:
        raise ValueError(f"an {'RGB ' if rgb else ''}image needs at least {spatial} axes, got shape {data.shape}")
    if len(index) != leading:
        raise ValueError(f"need {leading} leading indices for shape {data.shape}, got {index}")
    for axis, (i, n) in enumerate(zip(index, data.shape[:leading])):
        if not 0 <= i < n:
            raise IndexError(f"slice index {i} is outside axis {axis} of length {n}")
    out = data[index] if index else data
    return np.asarray(out.compute() if hasattr(out, "compute") else out)
