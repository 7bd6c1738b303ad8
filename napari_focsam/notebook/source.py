"""The image an annotator works on: which shapes it takes (2D gray or RGB(A), or a stack of them along one leading
axis, or either of them with a channel axis), numpy, dask or zarr alike (only the shown slice is read), its default
contrast limits, the labels it gets, and what the model sees of it.

Channels: with ``channel_axis`` the chosen channels are mixed into the model's RGB input by the engine's rule
(:func:`~napari_focsam.engine.channels.mix_channels`: each through its contrast limits and in its colour, added up),
seen by the engine's jobs as a lazy (…, H, W, 3) uint8 array (:class:`MixedChannels`) of which only the part
indexed is read and mixed — so a large multi-channel slice is tiled and zoomed like an RGB one; the mix is part of
the input, so another choice, colour or limit is another embedding key. A channel's limits left
as None are fixed when the mix is made, to the channel's default (8-bit: 0-255; else the 0.5-99.5 percentiles of
the first slice), so every slice and every zoom of the image sees one mapping.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..engine.channels import ChannelMix, default_colours, default_mix, mix_channels
from ..engine.image import take_slice, to_model_rgb

SAMPLE_PIXELS = 4_000_000  #: the default contrast of a larger slice is taken from a strided sample of this size
SHAPES = "(H, W), (H, W, 3|4) colour, (Z, H, W) or (Z, H, W, 3|4), and with channel_axis (C, H, W) or (Z, C, H, W)"


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
    channel_axis: int | None = None  #: the channel axis of ``data`` (non-negative), or None
    n_channels: int = 0
    mix: ChannelMix | None = None  #: the channels the model sees (with a channel axis)
    mixed: Any = None  #: the :class:`MixedChannels` of ``mix`` (one object per mix: the tiles know it by identity)

    @classmethod
    def of(cls, data: Any, rgb: bool | None = None, channel_axis: int | None = None,
           channels: ChannelMix | Sequence[int] | None = None) -> ImageSource:
        """Check ``data`` and describe it; raises :class:`ImageShapeError` with a clear message otherwise (a bad
        channel choice: ValueError)."""
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
        if channel_axis is not None:
            return cls._with_channels(data, shape, channel_axis, rgb, channels)
        if channels is not None:
            raise ValueError("channels are chosen along a channel axis: give channel_axis= as well")
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

    @classmethod
    def _with_channels(cls, data: Any, shape: tuple[int, ...], channel_axis: int, rgb: bool | None,
                       channels: ChannelMix | Sequence[int] | None) -> ImageSource:
        if rgb:
            raise ImageShapeError("an image with a channel axis is mixed into colour, it is not RGB itself: "
                                  "leave rgb unset")
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)) \
                or not -len(shape) <= channel_axis < len(shape):
            raise ImageShapeError(f"channel_axis {channel_axis!r} is not an axis of the image of shape {shape}")
        axis = int(channel_axis) % len(shape)
        rest = shape[:axis] + shape[axis + 1:]
        if len(rest) not in (2, 3) or min(rest[-2:]) < 2:
            raise ImageShapeError(f"cannot annotate an image of shape {shape} with channel_axis={channel_axis}: the "
                                  f"other axes must be (H, W) or (Z, H, W) of at least 2×2 pixels")
        if len(rest) == 3 and axis == 0:
            raise ImageShapeError(f"the channel axis of a stack of shape {shape} comes after its slice axis: "
                                  "(Z, C, H, W) or (Z, H, W, C)")
        source = cls(data, False, rest[0] if len(rest) == 3 else 0, rest[-2], rest[-1], axis, shape[axis])
        return source.with_mix(channels)

    def with_mix(self, channels: ChannelMix | Sequence[int] | None, colours: Sequence[object] | None = None,
                 contrast_limits: Sequence[Sequence[float] | None] | None = None) -> ImageSource:
        """The same image with another channel choice (a :class:`ChannelMix`, or channel indices with optional
        colours and limits; None: the default, all channels up to three). Limits left None become the channel's
        default (see the module)."""
        if self.channel_axis is None:
            raise ValueError("the image has no channel axis: give channel_axis= to the annotator")
        if isinstance(channels, ChannelMix):
            if colours is not None or contrast_limits is not None:
                raise ValueError("give either a ChannelMix or channels with colours and limits, not both")
            mix = channels
        elif channels is None and colours is None and contrast_limits is None:
            mix = default_mix(self.n_channels)
        else:
            chosen = default_mix(self.n_channels).channels if channels is None else tuple(channels)
            mix = ChannelMix(chosen, colours if colours is not None else default_colours(len(chosen)),
                             contrast_limits)
        mix.check(self.n_channels)
        limits = [lim if lim is not None else self.channel_contrast(c)
                  for c, lim in zip(mix.channels, mix.contrast_limits)]
        for c, (low, high) in zip(mix.channels, limits):
            if not low < high:
                raise ValueError(f"the contrast limits of channel {c} must be low < high, got ({low:g}, {high:g})")
        resolved = ChannelMix(mix.channels, mix.colours, limits)
        return replace(self, mix=resolved, mixed=MixedChannels([self.channel(c) for c in resolved.channels],
                                                               resolved))

    def channel(self, c: int) -> _ChannelView:
        """Channel ``c`` as a lazy array of the labels' shape (reading it reads only what is indexed)."""
        assert self.channel_axis is not None
        return _ChannelView(self.data, self.channel_axis, c)

    def channel_contrast(self, c: int) -> tuple[float, float]:
        """A channel's default limits: the dtype's range for 8-bit data, else the first slice's percentiles."""
        return _default_contrast(np.asarray(self.channel(c)[self.index(0) + self._sample()]))

    @property
    def model_data(self) -> Any:
        """What the engine's jobs read: ``data``, or the :class:`MixedChannels` of the chosen channels."""
        return self.data if self.mixed is None else self.mixed

    @property
    def model_rgb(self) -> bool:
        return self.rgb or self.mix is not None

    @property
    def labels_shape(self) -> tuple[int, ...]:
        return ((self.depth,) if self.depth else ()) + (self.height, self.width)

    def index(self, z: int) -> tuple[int, ...]:
        return (int(z),) if self.depth else ()

    def slice(self, index: tuple[int, ...]) -> np.ndarray:
        """One slice as numpy (only that slice is read from dask or zarr; of a channel image, its first chosen
        channel)."""
        if self.mix is not None:
            return np.asarray(self.channel(self.mix.channels[0])[index])
        return take_slice(self.data, index, rgb=self.rgb)

    @property
    def _step(self) -> int:
        """Every n-th row and column, so that a sample of a slice has about 4 million pixels at most."""
        return max(1, int(np.ceil(np.sqrt(self.height * self.width / SAMPLE_PIXELS))))

    def _sample(self) -> tuple[Any, Any]:
        return np.s_[:: self._step], np.s_[:: self._step]

    def sample(self, index: tuple[int, ...]) -> np.ndarray:
        """A strided sample of a slice (all of it up to ~4 million pixels): what the default limits are taken from,
        without holding a huge slice in memory."""
        if self.mix is not None:
            return np.asarray(self.channel(self.mix.channels[0])[tuple(index) + self._sample()])
        if self._step == 1:
            return self.slice(index)
        part = self.data[tuple(index) + self._sample()]
        return np.asarray(part.compute() if hasattr(part, "compute") else part)

    def default_contrast(self, index: tuple[int, ...] = ()) -> tuple[float, float]:
        """The contrast limits the model would pick for a slice: the dtype's range for 8-bit data, else the 0.5th
        and 99.5th percentiles of the finite pixels."""
        return _default_contrast(self.sample(index or self.index(0)))

    def value_range(self, index: tuple[int, ...] = ()) -> tuple[float, float]:
        """The span the contrast sliders offer: the dtype's range for integers up to 16 bits, else the slice's."""
        dtype = np.dtype(self.data.dtype)
        if dtype.kind == "b":
            return 0.0, 1.0
        if dtype.kind in "iu" and dtype.itemsize <= 2:
            info = np.iinfo(dtype)
            return float(info.min), float(info.max)
        values = np.asarray(self.sample(index or self.index(0)), np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return 0.0, 1.0
        low, high = float(values.min()), float(values.max())
        return (low, high) if high > low else (low, low + 1.0)

    def display(self, index: tuple[int, ...], contrast: tuple[float, float],
                region: tuple[int, int, int, int] | None = None, step: int = 1) -> np.ndarray:
        """What the model sees of a slice (and so what the widget shows): (h, w, 3) uint8, of the rectangle
        ``region`` (y0, x0, y1, x1; default the whole slice) every ``step``-th pixel. Only that part is read."""
        y0, x0, y1, x1 = region or (0, 0, self.height, self.width)
        window = (slice(y0, y1, step), slice(x0, x1, step))
        if self.mixed is not None:
            return self.mixed[tuple(index) + window]
        if region is None and step == 1:
            crop = self.slice(index)
        else:
            part = self.data[tuple(index) + window]
            crop = np.asarray(part.compute() if hasattr(part, "compute") else part)
        return to_model_rgb(crop, rgb=self.rgb, contrast_limits=None if self.rgb else contrast)


def _default_contrast(array: np.ndarray) -> tuple[float, float]:
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


class _ChannelView:
    """One channel of an image with a channel axis, read lazily: ``view[index]`` (leading slice indices) reads only
    that plane of ``data`` (numpy, dask, zarr); ``np.asarray(view)`` reads the whole channel (a 2D image)."""

    def __init__(self, data: Any, axis: int, channel: int) -> None:
        self.data, self.axis, self.channel = data, axis, int(channel)
        shape = tuple(int(n) for n in data.shape)
        self.shape = shape[:axis] + shape[axis + 1:]
        self.dtype = np.dtype(data.dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        index = tuple(index) if isinstance(index, tuple) else (index,)
        full: list[Any] = [slice(None)] * (len(self.shape) + 1)
        positions = [a for a in range(len(full)) if a != self.axis]
        for position, value in zip(positions, index):
            full[position] = value
        full[self.axis] = self.channel
        plane = self.data[tuple(full)]
        return np.asarray(plane.compute() if hasattr(plane, "compute") else plane)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[()]
        return out if dtype is None else out.astype(dtype, copy=False)


class MixedChannels:
    """The model's view of an image with a channel axis: a lazy (…, H, W, 3) uint8 array whose pixels are the chosen
    channels mixed by :func:`~napari_focsam.engine.channels.mix_channels`. Indexing reads only the indexed part of
    the chosen channels (a slice, a tile's rectangle) and mixes it; leading indices are whole numbers."""

    def __init__(self, channels: Sequence[_ChannelView], mix: ChannelMix) -> None:
        self.channels = list(channels)
        self.mix = ChannelMix(range(len(self.channels)), mix.colours, mix.contrast_limits)
        self.shape = (*self.channels[0].shape, 3)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.uint8)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = tuple(key) if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        lead, spatial, colour = key[: self.ndim - 3], list(key[-3:-1]), key[-1]
        if any(not isinstance(i, (int, np.integer)) for i in lead):
            raise IndexError(f"index the slices of mixed channels one at a time, got {lead}")
        squeeze = [axis for axis, i in enumerate(spatial) if isinstance(i, (int, np.integer))]
        for axis in squeeze:
            spatial[axis] = slice(int(spatial[axis]), int(spatial[axis]) + 1)
        planes = np.stack([channel[tuple(lead) + tuple(spatial)] for channel in self.channels])
        out = mix_channels(planes, self.mix)
        if squeeze:
            out = out.reshape([n for axis, n in enumerate(out.shape) if axis not in squeeze])
        return out[..., colour]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[()]
        return out if dtype is None else out.astype(dtype, copy=False)


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


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Labels from a ``.npy`` or TIFF file."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    import tifffile

    return tifffile.imread(path)


def write_labels(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write ``labels`` to ``path`` (``.tif``/``.tiff`` or ``.npy``), atomically (a ``.partial`` file first)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".tif", ".tiff", ".npy"):
        raise ValueError(f"save labels as .tif, .tiff or .npy, not {path.name!r}")
    partial = path.with_name(path.name + ".partial")
    if suffix == ".npy":
        with open(partial, "wb") as handle:
            np.save(handle, labels)
    else:
        import tifffile

        tifffile.imwrite(partial, labels, compression="zlib")
    os.replace(partial, path)
    return path
