"""The part of a large slice the notebook widget shows: a *window* of the slice, and an overview to move it.

A browser cannot hold a 20,000² picture (nor its labels as an Int32Array), and a 10-px nucleus shrunk into a
768-px canvas cannot be clicked. A slice whose longest side is at most :data:`WHOLE_LIMIT` is shown whole (as
before); a larger one is shown through a window of :data:`WINDOW_SIDE` px (``window_side``) at full resolution,
with a small overview of the whole slice (longest side :data:`OVERVIEW_SIDE`) on which a click moves the window. Only
the window's pixels are read and sent (its PNG, its labels); label patches are clipped to it. Masks, prompts and the
model's work are unchanged: the window only decides what the browser sees, and the browser sends image pixels.

Part of :class:`~napari_focsam.notebook.controller.NotebookController`; every method runs under its lock.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .controller_parts import NotebookParts
from .overlay import png_bytes, rle_encode

if TYPE_CHECKING:
    pass

WHOLE_LIMIT = 4096  #: slices up to this side are shown whole
WINDOW_SIDE = 1024  #: the window's side on larger slices (``window_side`` changes it)
OVERVIEW_SIDE = 256  #: the overview's longest side

Region = tuple[int, int, int, int]  #: (y0, x0, y1, x1), half-open


class NotebookWindow(NotebookParts):
    """The shown window of the slice (a controller mixin)."""

    def _init_window(self, window_side: int | None = None) -> None:
        side = WINDOW_SIDE if window_side is None else int(window_side)
        if not 16 <= side <= WHOLE_LIMIT:
            raise ValueError(f"window_side must be between 16 and {WHOLE_LIMIT} pixels, got {window_side}")
        self.window_side = side
        h, w = self.source.height, self.source.width
        self.window: Region = (0, 0, h, w)
        if max(h, w) > WHOLE_LIMIT:
            self.window = self._window_at(h / 2, w / 2)

    @property
    def windowed(self) -> bool:
        """Whether the widget shows a window of the slice (not the whole slice)."""
        return self.window != (0, 0, self.source.height, self.source.width)

    def _window_at(self, y: float, x: float, shape: tuple[int, int] | None = None) -> Region:
        h, w = self.source.height, self.source.width
        wh, ww = shape or (min(h, self.window_side), min(w, self.window_side))
        y0 = int(min(max(0, round(y - wh / 2)), h - wh))
        x0 = int(min(max(0, round(x - ww / 2)), w - ww))
        return y0, x0, y0 + wh, x0 + ww

    def set_window(self, y0: int, x0: int, y1: int, x1: int) -> None:
        """Show the rectangle (y0, x0)-(y1, x1) of the slice (half-open pixels; at most WHOLE_LIMIT a side)."""
        h, w = self.source.height, self.source.width
        region = tuple(int(v) for v in (y0, x0, y1, x1))
        if not (0 <= region[0] < region[2] <= h and 0 <= region[1] < region[3] <= w):
            raise ValueError(f"the window {region} is not a non-empty rectangle inside the {h}×{w} image")
        if max(region[2] - region[0], region[3] - region[1]) > WHOLE_LIMIT:
            raise ValueError(f"a window is at most {WHOLE_LIMIT} pixels a side")
        self.window = region  # type: ignore[assignment]
        self.send_image()

    def centre_window(self, y: float, x: float) -> None:
        """Move the window (its size kept) so that its centre is at pixel (y, x), as far as the slice allows."""
        y0, x0, y1, x1 = self.window
        self.window = self._window_at(float(y), float(x), (y1 - y0, x1 - x0))
        self.send_image()

    def send_image(self, labels: bool = True) -> None:
        """Send the shown window (its picture and, with ``labels``, its labels), then the overview if windowed."""
        self._emit({"type": "image", **self.view_state()}, self.view_buffers(labels))
        overview = self.overview_message()
        if overview is not None:
            self._emit(*overview)

    def view_buffers(self, labels: bool = True) -> list[bytes]:
        y0, x0, y1, x1 = self.window
        png = png_bytes(self.source.display(self.index, self.contrast, self.window))
        return [png, *rle_encode(self._view(self.index)[y0:y1, x0:x1])] if labels else [png]

    def overview_message(self) -> tuple[dict, list] | None:
        """The overview of the whole slice (where the window is), or None when the slice is shown whole."""
        if not self.windowed:
            return None
        step = max(1, math.ceil(max(self.source.height, self.source.width) / OVERVIEW_SIDE))
        picture = self.source.display(self.index, self.contrast, step=step)
        return ({"type": "overview", "z": self.z, "window": list(self.window),
                 "full": [self.source.height, self.source.width]}, [png_bytes(picture)])

    def clip_to_window(self, box: Region) -> Region | None:
        """``box`` (slice pixels) cut to the window, in window pixels; None when it lies outside."""
        wy0, wx0, wy1, wx1 = self.window
        y0, x0 = max(box[0], wy0), max(box[1], wx0)
        y1, x1 = min(box[2], wy1), min(box[3], wx1)
        if y0 >= y1 or x0 >= x1:
            return None
        return y0 - wy0, x0 - wx0, y1 - wy0, x1 - wx0


__all__ = ["OVERVIEW_SIDE", "WHOLE_LIMIT", "WINDOW_SIDE", "NotebookWindow"]
