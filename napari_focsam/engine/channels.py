"""Many channels into the model's three: each chosen channel through its contrast limits and colour, added up, as
napari shows channel layers (additive blending).

A fluorescence image has 2-8 channels (nuclei, membranes, markers); a SAM-family model takes RGB. The rule follows
"the model sees what the user sees" (:mod:`.image`): a :class:`ChannelMix` names the channels to use, the colour of
each (napari's colormap colour: green, magenta, …) and its contrast limits; :func:`mix_channels` scales every chosen
channel to 0..1 between its limits, multiplies it by its colour, sums and clips. The result is an (H, W, 3) uint8
image, so the embedding key (a hash of what the model sees) changes with the choice, the colours and the limits.

Defaults (:func:`default_mix`): one channel is gray; two are green and magenta (napari's pair for two channels,
their overlap white); three are red, green and blue; of more, the first three are chosen (red, green, blue; a
choice of more channels cycles on through magenta, cyan and yellow). Limits default
to each channel's robust range (0.5-99.5 percentiles), as for a single-channel image.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .image import DEFAULT_PERCENTILES, robust_range

GRAY = (1.0, 1.0, 1.0)
RED, GREEN, BLUE = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
MAGENTA, CYAN, YELLOW = (1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0)
#: napari colormap names a user may give instead of RGB triples
NAMED_COLOURS = {"gray": GRAY, "grey": GRAY, "red": RED, "green": GREEN, "blue": BLUE, "magenta": MAGENTA,
                 "cyan": CYAN, "yellow": YELLOW}


@dataclass(frozen=True)
class ChannelMix:
    """Which channels the model sees, in which colour, between which limits.

    ``channels``: indices into the channel axis; ``colours``: one RGB triple (0..1) or colour name per channel;
    ``contrast_limits``: one (low, high) pair per channel, or None for each channel's robust range.
    """

    channels: tuple[int, ...]
    colours: tuple[tuple[float, float, float], ...]
    contrast_limits: tuple[tuple[float, float] | None, ...]

    def __init__(self, channels: Sequence[int], colours: Sequence[object] | None = None,
                 contrast_limits: Sequence[Sequence[float] | None] | None = None) -> None:
        chosen = tuple(_index(c) for c in channels)
        if not chosen:
            raise ValueError("choose at least one channel")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"a channel is chosen twice: {list(chosen)}")
        if colours is None:
            colours = default_colours(len(chosen))
        if len(colours) != len(chosen):
            raise ValueError(f"{len(chosen)} channels but {len(colours)} colours")
        limits = (None,) * len(chosen) if contrast_limits is None else tuple(contrast_limits)
        if len(limits) != len(chosen):
            raise ValueError(f"{len(chosen)} channels but {len(limits)} contrast limits")
        object.__setattr__(self, "channels", chosen)
        object.__setattr__(self, "colours", tuple(_colour(c) for c in colours))
        object.__setattr__(self, "contrast_limits", tuple(_limits(lim) for lim in limits))

    def check(self, n_channels: int) -> None:
        """Raise a clear error if a chosen channel is not among ``n_channels``."""
        outside = [c for c in self.channels if not 0 <= c < n_channels]
        if outside:
            raise ValueError(f"channel {outside[0]} does not exist: the image has {n_channels} channel"
                             f"{'s' if n_channels != 1 else ''} (0..{n_channels - 1})")


def default_colours(n: int) -> tuple[tuple[float, float, float], ...]:
    """The colours of ``n`` chosen channels (see the module docstring)."""
    if n == 1:
        return (GRAY,)
    if n == 2:
        return (GREEN, MAGENTA)
    cycle = (RED, GREEN, BLUE, MAGENTA, CYAN, YELLOW)
    return tuple(cycle[i % len(cycle)] for i in range(n))


def default_mix(n_channels: int) -> ChannelMix:
    """The default choice for an image with ``n_channels`` channels: all of them up to three, else the first three."""
    if n_channels < 1:
        raise ValueError("the image has no channel")
    return ChannelMix(range(min(n_channels, 3)))


def mix_channels(data: Any, mix: ChannelMix | None = None, *, channel_axis: int = 0,
                 percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """The (H, W, 3) uint8 image the model sees of a 2D multi-channel image ``data`` (channels on ``channel_axis``,
    numpy or anything array-like: only the chosen channels are read)."""
    array = data if hasattr(data, "shape") else np.asarray(data)
    if len(array.shape) != 3:
        raise ValueError(f"expected one 2D image with a channel axis (3 axes), got shape {tuple(array.shape)}")
    axis = channel_axis % 3
    mix = default_mix(array.shape[axis]) if mix is None else mix
    mix.check(array.shape[axis])
    total = None
    for channel, colour, limits in zip(mix.channels, mix.colours, mix.contrast_limits):
        plane = array[(slice(None),) * axis + (channel,)]  # only this channel is read (zarr, dask)
        plane = np.asarray(plane.compute() if hasattr(plane, "compute") else plane, dtype=np.float32)
        scaled = _unit(plane, limits, percentiles)
        layer = scaled[..., None] * np.asarray(colour, np.float32)
        total = layer if total is None else total + layer
    assert total is not None  # mix.check: at least one channel
    return np.ascontiguousarray(np.clip(np.rint(total * 255.0), 0, 255).astype(np.uint8))


def _unit(plane: np.ndarray, limits: tuple[float, float] | None, percentiles: tuple[float, float]) -> np.ndarray:
    finite = np.isfinite(plane)
    if not finite.any():
        return np.zeros(plane.shape, np.float32)
    low, high = robust_range(plane, finite, percentiles) if limits is None else limits
    if high <= low:
        return np.zeros(plane.shape, np.float32)
    out = (plane - low) / (high - low)
    return np.where(finite, np.clip(out, 0.0, 1.0), 0.0).astype(np.float32)


def _index(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"channel indices must be whole numbers, got {value!r}")
    return int(value)


def _colour(value: object) -> tuple[float, float, float]:
    if isinstance(value, str):
        try:
            return NAMED_COLOURS[value.lower()]
        except KeyError:
            raise ValueError(f"unknown colour {value!r}; use one of {sorted(NAMED_COLOURS)} or an RGB triple") from None
    rgb = tuple(float(v) for v in np.asarray(value, dtype=float).reshape(-1))
    if len(rgb) not in (3, 4) or not all(0.0 <= v <= 1.0 for v in rgb[:3]):
        raise ValueError(f"a colour is an RGB triple of numbers in 0..1, got {value!r}")
    return rgb[:3]  # type: ignore[return-value]


def _limits(value: Sequence[float] | None) -> tuple[float, float] | None:
    if value is None:
        return None
    pair = tuple(float(v) for v in value)
    if len(pair) != 2 or not all(np.isfinite(pair)):
        raise ValueError(f"contrast limits are two finite numbers (low, high), got {value!r}")
    return pair


class ChannelStack:
    """Channels held as separate arrays of one grid (napari's ``channel_axis`` makes one layer per channel), mixed
    into the model's RGB slice by slice: ``take(index)`` reads only the chosen channels' slice ``index``.

    ``arrays``: the channels (numpy, zarr, dask; the same shape); ``mix``: which of them, colours and limits
    (indices into ``arrays``; out of range is refused). Front-ends pass it where an image array goes
    (:func:`~napari_focsam.engine.work.compute_object`): the embedding key hashes the mixed image, so another
    choice, colour or limit is another embedding.
    """

    def __init__(self, arrays: Sequence[Any], mix: ChannelMix | None = None) -> None:
        if not arrays:
            raise ValueError("no channel given")
        shapes = {tuple(a.shape) for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"the channels must have one shape, got {sorted(shapes)}")
        self.arrays = list(arrays)
        self.mix = default_mix(len(self.arrays)) if mix is None else mix
        self.mix.check(len(self.arrays))
        self.shape = tuple(self.arrays[0].shape)
        self.ndim = len(self.shape)

    def take(self, index: Sequence[int]) -> np.ndarray:
        """The (H, W, 3) uint8 image the model sees of slice ``index`` (leading indices)."""
        index = tuple(int(i) for i in index)
        if len(index) != self.ndim - 2:
            raise ValueError(f"need {self.ndim - 2} leading indices for channels of shape {self.shape}, got {index}")
        planes = [self.arrays[c][index] if index else self.arrays[c] for c in self.mix.channels]
        local = ChannelMix(range(len(planes)), self.mix.colours, self.mix.contrast_limits)
        return mix_channels(_Planes(planes), local)


class MixedPlane:
    """Slice ``index`` of a :class:`ChannelStack` as a lazy (H, W, 3) uint8 image, for tiles: indexing a region
    (``plane[rows, cols]`` or ``plane[rows, cols, :]``) reads that region of the chosen channels only and mixes it.

    Contrast limits the mix leaves open (None) are the channel's robust range in the *first* region read, then kept
    for every other region, so that all tiles look the same to the model. :attr:`tag` names the mix (channels,
    colours, limits) for the embedding keys of its tiles."""

    dtype = np.dtype(np.uint8)

    def __init__(self, stack: ChannelStack, index: Sequence[int] = ()) -> None:
        self.stack, self.index = stack, tuple(int(i) for i in index)
        if len(self.index) != stack.ndim - 2:
            raise ValueError(f"need {stack.ndim - 2} leading indices for channels of shape {stack.shape}, "
                             f"got {self.index}")
        self.shape = (*stack.shape[-2:], 3)
        self.ndim = 3
        self.limits: list[tuple[float, float] | None] = list(stack.mix.contrast_limits)
        self._lock = threading.Lock()

    @property
    def tag(self) -> str:
        mix = self.stack.mix
        return f"channels={list(mix.channels)};colours={list(mix.colours)};limits={list(mix.contrast_limits)}"

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > 3 or (len(key) == 3 and key[2] != slice(None)):
            raise IndexError(f"a mixed plane is read by region (rows, columns), got {key!r}")
        region = tuple(key[:2]) + (slice(None),) * (2 - len(key[:2]))
        planes = []
        for n, channel in enumerate(self.stack.mix.channels):
            plane = self.stack.arrays[channel][self.index + region]
            plane = np.asarray(plane.compute() if hasattr(plane, "compute") else plane, dtype=np.float32)
            if self.limits[n] is None:
                finite = np.isfinite(plane)
                found = robust_range(plane, finite, DEFAULT_PERCENTILES) if finite.any() else (0.0, 1.0)
                with self._lock:  # the first region read decides (prefetch and clicks read concurrently)
                    if self.limits[n] is None:
                        self.limits[n] = found
            planes.append(plane)
        local = ChannelMix(range(len(planes)), self.stack.mix.colours, self.limits)
        return mix_channels(_Planes(planes), local)


class _Planes:
    """Chosen 2D planes seen as one (C, H, W) array whose channels are read one at a time."""

    def __init__(self, planes: list[Any]) -> None:
        self.planes = planes
        self.shape = (len(planes), *tuple(planes[0].shape))

    def __getitem__(self, key: tuple[int]) -> Any:
        return self.planes[key[0]]
