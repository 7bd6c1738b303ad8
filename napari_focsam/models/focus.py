"""Where the FocSAM refiner looks: the focus box and the windows it selects.

The refiner only recomputes the embedding windows that touch an enlarged bounding box of the coarse mask. This module
holds that geometry, free of any learned weights:

* :func:`focus_bbox` turns coarse decoder logits into one expanded box per sample, in input-frame pixels;
* :func:`box_cell_mask` marks the embedding cells a box touches (the exact result of adaptive max pooling the
  full-resolution box mask down to the embedding grid);
* :class:`WindowGrid` describes one window partition of the embedding (plain, or cyclically shifted) as flat token
  indices, so that windows can be gathered from and scattered into a channel-last canvas without copying the rest;
* :func:`select_windows` and :class:`WindowSelection` pick the windows that contain a marked cell.

Boxes are ``(left, up, right_excl, bottom_excl)`` tuples of ints: columns ``left:right_excl`` and rows
``up:bottom_excl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BBox = tuple[int, int, int, int]
"""A box as ``(left, up, right_excl, bottom_excl)`` in pixels."""


def mask_bbox(mask: torch.Tensor) -> list[BBox]:
    """Tight bounding box of each boolean mask; an empty mask gives the whole frame.

    ``mask``: ``(B, H, W)`` boolean tensor.

    Returns one ``(left, up, right_excl, bottom_excl)`` box per sample.
    """
    if mask.ndim != 3:
        raise ValueError(f"mask must be (B, H, W), got shape {tuple(mask.shape)}")
    height, width = mask.shape[-2:]
    rows_on = mask.any(dim=2).cpu()
    cols_on = mask.any(dim=1).cpu()
    boxes: list[BBox] = []
    for rows, cols in zip(rows_on, cols_on):
        row_ids = torch.nonzero(rows).flatten().tolist()
        col_ids = torch.nonzero(cols).flatten().tolist()
        if not row_ids:
            boxes.append((0, 0, width, height))
        else:
            boxes.append((col_ids[0], row_ids[0], col_ids[-1] + 1, row_ids[-1] + 1))
    return boxes


def _as_pair(value: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    first, second = value
    return float(first), float(second)


def _scale_edge(centre: float, edge: int, ratio: float) -> int:
    """Move ``edge`` away from ``centre`` by ``ratio``; Python's ``round`` rounds half to even, as ``torch.round``.

    For integer edges and a ratio of 1.4 the value is a multiple of 0.1 that is never an exact half, so computing
    it in double (the official code uses float32) cannot change the rounded result.
    """
    return round(centre - ratio * (centre - edge))


def expand_bbox(box: BBox, ratio: float | Sequence[float], size: tuple[int, int]) -> BBox:
    """Scale a box about its centre and clip it to the frame.

    ``box``: ``(left, up, right_excl, bottom_excl)``; ``ratio``: one ratio for both axes, or ``(height_ratio,
    width_ratio)``; ``size``: frame ``(height, width)``.

    Returns the expanded box; each edge is rounded half-to-even, then clipped to ``[0, width]`` / ``[0, height]``.
    """
    left, up, right, bottom = box
    if left >= right or up >= bottom:
        raise ValueError(f"degenerate box {box}")
    ratio_h, ratio_w = _as_pair(ratio)
    height, width = size
    centre_x = (left + right) / 2.0
    centre_y = (up + bottom) / 2.0
    return (
        max(_scale_edge(centre_x, left, ratio_w), 0),
        max(_scale_edge(centre_y, up, ratio_h), 0),
        min(_scale_edge(centre_x, right, ratio_w), width),
        min(_scale_edge(centre_y, bottom, ratio_h), height),
    )


def upsampled_foreground(coarse_logits: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """Coarse logits ``(B, 1, h, w)`` resized bilinearly (``align_corners=False``) to ``input_size``, thresholded > 0.

    Returns ``(B, H, W)`` boolean foreground.
    """
    if coarse_logits.ndim != 4 or coarse_logits.shape[1] != 1:
        raise ValueError(f"coarse_logits must be (B, 1, h, w), got shape {tuple(coarse_logits.shape)}")
    resized = F.interpolate(coarse_logits, size=tuple(input_size), mode="bilinear", align_corners=False)
    return resized[:, 0] > 0


def focus_bbox(
    coarse_logits: torch.Tensor,
    input_size: tuple[int, int] = (1024, 1024),
    expand_ratio: float | Sequence[float] = 1.4,
) -> list[BBox]:
    """The refiner's focus box for each sample, in ``input_size`` pixels.

    The coarse logits are resized to the model input frame and thresholded at 0; the tight box of the foreground (the
    whole frame when it is empty) is scaled by ``expand_ratio`` about its centre, rounded and clipped.

    ``coarse_logits``: ``(B, 1, h, w)`` raw decoder logits (any float dtype); ``input_size``: ``(height, width)`` of the
    padded model input, 1024x1024 for SAM; ``expand_ratio``: box scale, one value or ``(height_ratio, width_ratio)``.

    Returns one ``(left, up, right_excl, bottom_excl)`` box per sample.
    """
    size = (int(input_size[0]), int(input_size[1]))
    return [expand_bbox(box, expand_ratio, size) for box in mask_bbox(upsampled_foreground(coarse_logits, size))]


def _adaptive_bins(in_size: int, out_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Start (inclusive) and end (exclusive) input index of each adaptive-pooling bin."""
    index = torch.arange(out_size, device=device)
    start = torch.div(index * in_size, out_size, rounding_mode="floor")
    end = torch.div((index + 1) * in_size + out_size - 1, out_size, rounding_mode="floor")
    return start, end


def box_cell_mask(
    boxes: Sequence[BBox],
    input_size: tuple[int, int],
    grid_size: tuple[int, int],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Embedding cells touched by each box.

    Equal to ``adaptive_max_pool2d`` of the full-resolution 0/1 box mask down to ``grid_size``, computed from the box
    edges directly: a cell is on when the box overlaps its pooling bin.

    Returns ``(B, gh, gw)`` boolean tensor.
    """
    device = torch.device(device)
    row_start, row_end = _adaptive_bins(int(input_size[0]), int(grid_size[0]), device)
    col_start, col_end = _adaptive_bins(int(input_size[1]), int(grid_size[1]), device)
    edges = torch.tensor([list(box) for box in boxes], dtype=torch.long, device=device).view(-1, 4)
    left, up, right, bottom = (edges[:, k].view(-1, 1) for k in range(4))
    rows = (row_start < bottom) & (row_end > up)
    cols = (col_start < right) & (col_end > left)
    return rows[:, :, None] & cols[:, None, :]


@dataclass(frozen=True)
class WindowGrid:
    """One square-window partition of an ``height x width`` grid, optionally cyclically shifted.

    The grid is zero-padded at the bottom/right to a multiple of ``window_size`` (the padded "canvas"). With a shift
    ``s`` the partition is that of the canvas rolled by ``-s`` on both axes: window ``(r, c)`` holds canvas rows
    ``(r*S + i + s) mod Hp`` and columns ``(c*S + j + s) mod Wp``, so windows at the bottom/right border wrap around.
    Windows are numbered row-major (``id = r * cols + c``); tokens inside a window are row-major too.
    """

    height: int
    width: int
    window_size: int
    shift: int = 0

    @property
    def padded_height(self) -> int:
        return -(-self.height // self.window_size) * self.window_size

    @property
    def padded_width(self) -> int:
        return -(-self.width // self.window_size) * self.window_size

    @property
    def rows(self) -> int:
        return self.padded_height // self.window_size

    @property
    def cols(self) -> int:
        return self.padded_width // self.window_size

    @property
    def num_windows(self) -> int:
        return self.rows * self.cols

    @property
    def has_padding(self) -> bool:
        return self.padded_height != self.height or self.padded_width != self.width

    def token_index(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Flat canvas index (``row * padded_width + col``) of every token, shape ``(num_windows, window_size**2)``."""
        size = self.window_size
        local = torch.arange(size, device=device)
        canvas_rows = (torch.arange(self.rows, device=device)[:, None] * size + local + self.shift) % self.padded_height
        canvas_cols = (torch.arange(self.cols, device=device)[:, None] * size + local + self.shift) % self.padded_width
        flat = canvas_rows[:, None, :, None] * self.padded_width + canvas_cols[None, :, None, :]
        return flat.reshape(self.num_windows, size * size)

    def pad(self, cells: torch.Tensor) -> torch.Tensor:
        """Zero-pad a ``(B, height, width, ...)`` tensor to ``(B, padded_height, padded_width, ...)``."""
        if not self.has_padding:
            return cells
        extra = cells.ndim - 3
        return F.pad(cells, (0, 0) * extra + (0, self.padded_width - self.width, 0, self.padded_height - self.height))


def select_windows(cell_mask: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
    """Windows of ``grid`` that contain at least one marked cell.

    ``cell_mask``: ``(B, height, width)`` boolean, e.g. from :func:`box_cell_mask`; ``grid``: the partition (plain or
    shifted).

    Returns ``(B, num_windows)`` boolean, window ids row-major in the (shifted) partition.
    """
    if tuple(cell_mask.shape[-2:]) != (grid.height, grid.width):
        raise ValueError(f"cell mask {tuple(cell_mask.shape)} does not match grid {grid.height}x{grid.width}")
    flat = grid.pad(cell_mask).reshape(cell_mask.shape[0], -1)
    return flat[:, grid.token_index(cell_mask.device)].any(dim=-1)


@dataclass(frozen=True)
class WindowSelection:
    """The selected windows of a batch, as indices into a flattened ``(B * Hp * Wp, C)`` channel-last canvas."""

    selected: torch.Tensor  #: ``(B, num_windows)`` boolean selection
    batch_index: torch.Tensor  #: ``(n,)`` sample of each selected window, in ``(b, window)`` row-major order
    window_index: torch.Tensor  #: ``(n,)`` window id of each selected window
    token_index: torch.Tensor  #: ``(n * window_size**2,)`` flat canvas row of every token of the selected windows

    @property
    def count(self) -> int:
        """Number of selected windows over the whole batch."""
        return int(self.batch_index.numel())

    @classmethod
    def from_mask(cls, selected: torch.Tensor, grid: WindowGrid) -> WindowSelection:
        batch_index, window_index = torch.nonzero(selected, as_tuple=True)
        canvas_size = grid.padded_height * grid.padded_width
        tokens = grid.token_index(selected.device)[window_index] + batch_index[:, None] * canvas_size
        return cls(selected, batch_index, window_index, tokens.reshape(-1))


@dataclass(frozen=True)
class FocusPlan:
    """Everything the refiner needs to know about where to work, for one batch."""

    boxes: list[BBox]  #: the expanded focus box of each sample, in input-frame pixels
    cell_mask: torch.Tensor  #: ``(B, h, w)`` embedding cells touched by the boxes
    plain: WindowSelection  #: windows selected in the plain partition (even blocks)
    shifted: WindowSelection  #: windows selected in the half-window-shifted partition (odd blocks)
    plain_grid: WindowGrid  #: the plain partition
    shifted_grid: WindowGrid  #: the shifted partition


def plan_focus(
    boxes: Sequence[BBox],
    input_size: tuple[int, int],
    grid_size: tuple[int, int],
    window_size: int,
    device: torch.device | str = "cpu",
) -> FocusPlan:
    """Select the windows of both partitions (plain and shifted by ``window_size // 2``) that the boxes touch."""
    height, width = int(grid_size[0]), int(grid_size[1])
    cells = box_cell_mask(boxes, input_size, (height, width), device)
    plain_grid = WindowGrid(height, width, window_size, 0)
    shifted_grid = WindowGrid(height, width, window_size, window_size // 2)
    return FocusPlan(
        boxes=list(boxes),
        cell_mask=cells,
        plain=WindowSelection.from_mask(select_windows(cells, plain_grid), plain_grid),
        shifted=WindowSelection.from_mask(select_windows(cells, shifted_grid), shifted_grid),
        plain_grid=plain_grid,
        shifted_grid=shifted_grid,
    )
