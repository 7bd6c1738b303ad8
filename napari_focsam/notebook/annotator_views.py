"""The :class:`~napari_focsam.notebook.Annotator`'s API for real microscopy images: world (physical) coordinates,
channels, zoom-in refinement and tiles. Each setter is one action of the controller (under its lock; model work goes
to the job threads).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..engine.channels import ChannelMix
from ..engine.work import TileSettings
from .geometry import Geometry

if TYPE_CHECKING:
    from .controller import NotebookController


def tile_settings(tiles: TileSettings | bool | None) -> TileSettings:
    """``tiles`` as :class:`TileSettings`: None is automatic (large slices), True always, False never."""
    if isinstance(tiles, TileSettings):
        return tiles
    if tiles is None or isinstance(tiles, bool):
        return TileSettings(enabled=tiles)
    raise TypeError(f"tiles is a TileSettings, True, False or None, got {tiles!r}")


class AnnotatorViews:
    """World coordinates, channels, zoom and tiles of an annotator (a mixin of :class:`Annotator`)."""

    if TYPE_CHECKING:
        def _ready(self) -> NotebookController: ...

    # ------------------------------------------------------------------ world coordinates
    @property
    def geometry(self) -> Geometry:
        """The pixel → world transform (``scale``, ``translate``, ``affine`` given to the annotator)."""
        return self._ready().geometry

    def to_pixels(self, world: Any) -> np.ndarray:
        """World points, (ndim,) or (N, ndim) — (y, x), or (z, y, x) for a stack — as pixel coordinates."""
        array = np.asarray(world, np.float64)
        out = self._ready().geometry.to_pixels(array)
        return out.reshape(array.shape)

    def to_world(self, pixels: Any) -> np.ndarray:
        """Pixel coordinates, (ndim,) or (N, ndim), as world points (the inverse of :meth:`to_pixels`)."""
        array = np.asarray(pixels, np.float64)
        return self._ready().geometry.to_world(array).reshape(array.shape)

    def click_at(self, point: Sequence[float], positive: bool = True, *, world: bool = True) -> None:
        """A click at a full point — (y, x), or (z, y, x) for a stack — in world units (``world=False``: pixels):
        the slice it lies on is shown first (the nearest one; a point outside the stack is refused), then the click
        goes there. The mask follows in a job thread (:meth:`wait` waits)."""
        controller = self._ready()
        given = np.asarray(point, np.float64).reshape(-1)
        if given.size != controller.geometry.ndim:
            raise ValueError(f"a point of this image has {controller.geometry.ndim} coordinates, got {given.size}")
        pixels = controller.geometry.to_pixels(given).reshape(-1) if world else given
        if controller.source.depth:
            z = int(np.floor(pixels[0] + 0.5))
            if not 0 <= z < controller.source.depth:
                raise ValueError(f"the point {tuple(float(v) for v in point)} lies at slice {pixels[0]:.2f}, "
                                 f"outside the stack of {controller.source.depth} slices")
            if z != controller.z:
                controller.set_slice(z)
        self.click(float(pixels[-2]), float(pixels[-1]), positive)  # type: ignore[attr-defined]

    def _plane_pixels(self, points: Sequence[float], world: bool) -> list[float]:
        """(y, x) pairs on the shown slice, in world units when ``world``, as pixels."""
        if not world:
            return [float(v) for v in points]
        controller = self._ready()
        return [float(v) for v in controller.geometry.plane_to_pixels(np.reshape(points, (-1, 2)),
                                                                      controller.z).reshape(-1)]

    # ------------------------------------------------------------------ channels
    @property
    def channel_mix(self) -> ChannelMix | None:
        """The channels the model sees, their colours and contrast limits (None: the image has no channel axis)."""
        return self._ready().source.mix

    def set_channels(self, channels: ChannelMix | Sequence[int] | None = None,
                     colours: Sequence[object] | None = None,
                     contrast_limits: Sequence[Sequence[float] | None] | None = None) -> None:
        """Choose the channels the model sees (indices along ``channel_axis``, or a :class:`ChannelMix`), their
        colours (names or RGB triples; default: gray for one, green + magenta for two, red, green, blue for three)
        and contrast limits (one (low, high) per channel; None: the channel's default). What the widget shows is
        what the model sees; another choice is another embedding (computed in the background)."""
        self._ready().set_channels(channels, colours, contrast_limits)

    # ------------------------------------------------------------------ zoom-in refinement
    @property
    def auto_zoom(self) -> bool:
        """Decode a small object on its zoom after its first click (images larger than the model's input)."""
        return self._ready().auto_zoom

    @auto_zoom.setter
    def auto_zoom(self, on: bool) -> None:
        controller = self._ready()
        with controller._lock:
            controller.auto_zoom = bool(on)
            controller._update()

    def refine_detail(self) -> None:
        """Zoom on the current object now: its box, with context, is embedded again at the model's full input
        resolution and the object decoded there (in a job thread; :meth:`wait` waits). Later clicks inside the zoom
        stay on it; undo walks back its steps, then leaves it."""
        controller = self._ready()
        index, object_id = controller.index, controller.object_id
        controller.wait(match=lambda key: key == ("click", index, object_id))
        with controller._lock:
            controller.refine_detail()

    @property
    def zoomed(self) -> tuple[int, int, int, int] | None:
        """The current object's zoom rectangle (y0, x0, y1, x1; pixels) on the shown slice, or None."""
        region = self._ready().zoom_info()["zoom"]
        return None if region is None else (int(region[0]), int(region[1]), int(region[2]), int(region[3]))

    # ------------------------------------------------------------------ the shown window
    @property
    def window(self) -> tuple[int, int, int, int]:
        """The part of the slice the widget shows, (y0, x0, y1, x1) in pixels: the whole slice up to 4,096 px a
        side, else a window (``window_side``) that the overview, or setting this, moves."""
        return self._ready().window

    @window.setter
    def window(self, region: Sequence[int]) -> None:
        controller = self._ready()
        with controller._lock:
            controller.set_window(*region)

    def show_at(self, y: float, x: float, *, world: bool = False) -> None:
        """Centre the shown window on pixel (y, x) (``world``: world y, x), keeping its size."""
        y, x = self._plane_pixels((y, x), world)
        controller = self._ready()
        with controller._lock:
            controller.centre_window(y, x)

    # ------------------------------------------------------------------ tiles
    @property
    def tiles(self) -> TileSettings:
        """When a large slice is annotated in tiles (see ``docs/images.md``): automatic by default."""
        return self._ready().tiles

    @tiles.setter
    def tiles(self, tiles: TileSettings | bool | None) -> None:
        settings = tile_settings(tiles)
        controller = self._ready()
        controller.wait()
        with controller._lock:
            controller.tiles = settings
            controller._keys.clear()
            controller._known.clear()
            controller._forget_zooms()
            controller._update()
            controller._embed()

    @property
    def tiled(self) -> bool:
        """Whether the shown slice is annotated in tiles with the current model."""
        return self._ready().tiled()


__all__ = ["AnnotatorViews", "tile_settings"]
