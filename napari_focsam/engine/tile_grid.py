"""The tile grid of a large image: cores that partition the image, each embedded in a view with a halo.

A :class:`TileGrid` cuts an (H, W) image into cores of ``tile`` x ``tile`` pixels (the last row and column may be
shorter); tile (r, c)'s view is its core grown by ``halo`` pixels on every side and, where that would leave the
image, shifted back inside it so that every view has the same side ``tile + 2 * halo`` (the image's side when
smaller). With the defaults the view's side is the model's input side, so every tile reaches the model at full
resolution (no resizing); a larger tile is shrunk to the model's input like any image.

The rule for objects (:meth:`TileGrid.tile_for`): the prompts' bounding box (clicks, box corners, scribble points,
the region mask's extent) has a centre; the tile whose core contains that centre answers. The halo makes an object
that crosses a core's border whole in that tile's view as long as it reaches at most ``halo`` pixels beyond the
core; larger objects get a view around them (:mod:`.tiles`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .types import Prompts
from .views import View

Tile = tuple[int, int]  #: (row, column) of a tile in its grid

#: the halo as a fraction of the model's input side (128 px of SAM's 1024: objects up to 256 px across that sit on a
#: core border are whole in one view; the cost, re-embedded halo area, is (1024 / 768)² = 1.78x; docs/images.md)
HALO_FRACTION = 1 / 8
#: images whose longest side exceeds this many model input sides are tiled by default (2 x 1024 px for SAM: resizing
#: a larger image to the model's input shrinks a 10 px nucleus below 5 px; docs/images.md)
THRESHOLD_FACTOR = 2.0


def default_tiling(input_side: int) -> tuple[int, int, int]:
    """``(tile, halo, threshold)`` for a model whose input side is ``input_side`` (1024: 768, 128, 2048)."""
    halo = int(round(input_side * HALO_FRACTION))
    return input_side - 2 * halo, halo, int(round(input_side * THRESHOLD_FACTOR))


def should_tile(shape: tuple[int, ...], input_side: int, threshold: int | None = None) -> bool:
    """Whether an image of ``shape`` (its first two axes are spatial) is annotated in tiles by default: its longest
    side exceeds ``threshold`` (default: :data:`THRESHOLD_FACTOR` x the model's ``input_side``)."""
    limit = default_tiling(input_side)[2] if threshold is None else int(threshold)
    if limit < 1:
        raise ValueError(f"the tiling threshold must be at least 1 pixel, got {threshold}")
    return max(int(shape[0]), int(shape[1])) > limit


def _pixels(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"the {name} must be a whole number of pixels, got {value!r}")
    return int(value)


def check_tiling(tile: object, halo: object) -> tuple[int, int]:
    """``(tile, halo)`` as ints, or ValueError saying what is wrong."""
    tile, halo = _pixels("tile size", tile), _pixels("halo", halo)
    if tile < 1:
        raise ValueError(f"the tile size must be at least 1 pixel, got {tile}")
    if halo < 0:
        raise ValueError(f"the halo must be 0 or more pixels, got {halo}")
    if tile < halo:
        raise ValueError(f"a tile of {tile} px is smaller than its halo of {halo} px: the views would overlap more "
                         f"than they advance; use a tile of at least {halo} px (e.g. {max(halo, 1) * 4}) or a smaller "
                         "halo")
    return tile, halo


@dataclass(frozen=True)
class TileGrid:
    """Cores of ``tile`` pixels over an image of ``image_shape`` (H, W), each embedded in a view with ``halo``."""

    image_shape: tuple[int, int]
    tile: int
    halo: int

    def __post_init__(self) -> None:
        tile, halo = check_tiling(self.tile, self.halo)
        h, w = (int(v) for v in self.image_shape)
        if h < 1 or w < 1:
            raise ValueError(f"an image to tile must have pixels, got shape {self.image_shape}")
        object.__setattr__(self, "image_shape", (h, w))
        object.__setattr__(self, "tile", tile)
        object.__setattr__(self, "halo", halo)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of tiles."""
        h, w = self.image_shape
        return -(-h // self.tile), -(-w // self.tile)

    @property
    def view_side(self) -> int:
        return self.tile + 2 * self.halo

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def __iter__(self) -> Iterator[Tile]:
        rows, cols = self.shape
        return ((r, c) for r in range(rows) for c in range(cols))

    def _check(self, tile: Tile) -> Tile:
        r, c = (int(v) for v in tile)
        rows, cols = self.shape
        if not (0 <= r < rows and 0 <= c < cols):
            raise ValueError(f"tile {tuple(tile)} is outside the {rows} x {cols} grid")
        return r, c

    def core(self, tile: Tile) -> tuple[int, int, int, int]:
        r, c = self._check(tile)
        h, w = self.image_shape
        t = self.tile
        return r * t, c * t, min(h, (r + 1) * t), min(w, (c + 1) * t)

    def view(self, tile: Tile) -> View:
        """Tile ``tile``'s view: its core plus the halo, shifted inside the image (see the module)."""
        y0, x0, y1, x1 = core = self.core(tile)
        h, w = self.image_shape

        def span(lo: int, hi: int, n: int) -> tuple[int, int]:
            side = min(n, self.view_side)
            start = min(max(0, lo - self.halo), n - side)
            start = min(start, lo)  # the core's start stays inside (a short last core)
            end = max(start + side, hi)
            return start, min(n, end)

        (top, bottom), (left, right) = span(y0, y1, h), span(x0, x1, w)
        return View((h, w), (top, left, bottom, right), core=core)

    def tile_at(self, y: float, x: float) -> Tile:
        """The tile whose core contains the point (y, x) (pixel centres at integers; clipped into the image)."""
        h, w = self.image_shape
        row = int(np.clip(np.floor(y + 0.5), 0, h - 1)) // self.tile
        col = int(np.clip(np.floor(x + 0.5), 0, w - 1)) // self.tile
        return row, col

    def around(self, tile: Tile, radius: int = 1) -> list[Tile]:
        """The tiles within ``radius`` rows and columns of ``tile`` (itself excluded), nearest first."""
        r, c = self._check(tile)
        rows, cols = self.shape
        near = [(r + dr, c + dc) for dr in range(-radius, radius + 1) for dc in range(-radius, radius + 1)
                if (dr or dc) and 0 <= r + dr < rows and 0 <= c + dc < cols]
        return sorted(near, key=lambda t: (abs(t[0] - r) + abs(t[1] - c), t))

    def tile_for(self, prompts: Prompts) -> Tile:
        """The tile that answers ``prompts``: its core contains the centre of their bounding box (see the module)."""
        box = prompts_extent(prompts)
        if box is None:
            raise ValueError("the prompts say nothing about where the object is: click on it first")
        return self.tile_at((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)


def prompts_extent(prompts: Prompts) -> np.ndarray | None:
    """(y0, x0, y1, x1), inclusive, of everything in ``prompts`` (clicks of both kinds, the box, scribble points, the
    region's pixels); None when they are empty."""
    points = [prompts.points]
    if prompts.box is not None:
        points.append(np.asarray(prompts.box).reshape(2, 2))
    points.extend(s.points for s in prompts.scribbles)
    if prompts.mask is not None and prompts.mask.any():
        rows, cols = np.flatnonzero(prompts.mask.any(1)), np.flatnonzero(prompts.mask.any(0))
        points.append(np.array([[rows[0], cols[0]], [rows[-1], cols[-1]]], np.float64))
    every = np.concatenate([np.asarray(p, np.float64).reshape(-1, 2) for p in points])
    if not len(every):
        return None
    return np.concatenate([every.min(0), every.max(0)])
