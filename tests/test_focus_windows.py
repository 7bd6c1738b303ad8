"""FocSAM focus box and window selection, derived by hand and against the official partition (the refiner's
network: ``test_refiner.py``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _refiner_support import GRID, INPUT, logits_from_box, random_inputs, small_refiner, window_ids

from napari_focsam.models.focus import (
    WindowGrid,
    box_cell_mask,
    expand_bbox,
    focus_bbox,
    mask_bbox,
    plan_focus,
    select_windows,
    upsampled_foreground,
)

# ------------------------------------------------------------------------------------- 3. focus box and windows


def test_empty_coarse_mask_focuses_on_whole_image() -> None:
    logits = -torch.ones(1, 1, 256, 256, dtype=torch.float64)
    assert focus_bbox(logits, INPUT, 1.4) == [(0, 0, 1024, 1024)]
    plan = plan_focus(focus_bbox(logits), INPUT, GRID, 16)
    assert bool(plan.cell_mask.all())
    assert plan.plain.count == 16 and plan.shifted.count == 16


def test_single_upsampled_pixel_gives_hand_derived_box() -> None:
    # One positive logit at (100, 100) of a 256 grid. Bilinear (align_corners=False) x4 maps output o to source
    # (o + 0.5) / 4 - 0.5, which is within 0.5 of 100 (value > 0) for o = 400..403.
    logits = -torch.ones(1, 1, 256, 256, dtype=torch.float64)
    logits[..., 100, 100] = 1.0
    assert mask_bbox(upsampled_foreground(logits, INPUT)) == [(400, 400, 404, 404)]
    # centre 402, half size 2 -> 402 -/+ 2.8 -> 399.2 / 404.8 -> 399 / 405.
    assert focus_bbox(logits, INPUT, 1.4) == [(399, 399, 405, 405)]


def test_expand_bbox_rounds_half_to_even_and_clips() -> None:
    assert expand_bbox((1, 1, 2, 2), 2.0, (10, 10)) == (0, 0, 2, 2)  # 0.5 -> 0, 2.5 -> 2
    assert expand_bbox((2, 2, 3, 3), 2.0, (10, 10)) == (2, 2, 4, 4)  # 1.5 -> 2, 3.5 -> 4
    assert expand_bbox((0, 5, 10, 10), 1.4, (10, 10)) == (0, 4, 10, 10)  # clipped; 7.5 - 3.5 = 4.0
    assert expand_bbox((2, 2, 4, 6), (1.0, 2.0), (10, 10)) == (1, 2, 5, 6)  # (height, width) ratios
    with pytest.raises(ValueError):
        expand_bbox((3, 0, 3, 4), 1.4, (10, 10))


def test_box_inside_one_window() -> None:
    # (420, 400, 460, 440) expands to (412, 392, 468, 448): cells rows 24..27, cols 25..29, all in plain window
    # (1, 1) and in shifted window (1, 1) (shifted window r covers cells 16 r + 8 .. 16 r + 23).
    boxes = focus_bbox(logits_from_box((420, 400, 460, 440)), INPUT, 1.4)
    assert boxes == [(412, 392, 468, 448)]
    plan = plan_focus(boxes, INPUT, GRID, 16)
    cells = torch.nonzero(plan.cell_mask[0])
    assert cells[:, 0].unique().tolist() == [24, 25, 26, 27]
    assert cells[:, 1].unique().tolist() == [25, 26, 27, 28, 29]
    assert window_ids(plan.plain.selected) == {5}
    assert window_ids(plan.shifted.selected) == {5}


def test_all_windows_selected_for_full_box() -> None:
    plan = plan_focus([(0, 0, 1024, 1024)], INPUT, GRID, 16)
    assert window_ids(plan.plain.selected) == set(range(16))
    assert window_ids(plan.shifted.selected) == set(range(16))
    # Every token appears exactly once per partition.
    for selection in (plan.plain, plan.shifted):
        assert torch.equal(selection.token_index.sort().values, torch.arange(64 * 64))


def test_shifted_windows_wrap_around_border() -> None:
    # Box touching the left border: cells cols 0..6, rows 25..27. Plain: window (1, 0) = 4. After the roll by -8,
    # cols 0..7 sit at the end of shifted column 3 (cells 56..63 then 0..7), so the shifted window is (1, 3) = 7.
    plan = plan_focus([(0, 400, 100, 440)], INPUT, GRID, 16)
    assert window_ids(plan.plain.selected) == {4}
    assert window_ids(plan.shifted.selected) == {7}
    window7 = plan.shifted_grid.token_index()[7]
    rows, cols = window7 // 64, window7 % 64
    assert rows.unique().tolist() == list(range(24, 40))
    assert set(cols.tolist()) == set(range(56, 64)) | set(range(0, 8))


def test_shifted_window_refines_the_opposite_border() -> None:
    model = small_refiner(depth=2)
    embeds, token = random_inputs(1, 32)
    plan = plan_focus([(0, 400, 100, 440)], INPUT, GRID, 16)
    with torch.no_grad():
        out = model.refine(embeds, token, plan)
        projected = model.embed_proj(embeds)
    changed = (out != projected).any(dim=1)[0]
    expected = torch.zeros(GRID, dtype=torch.bool)
    expected[16:32, 0:16] = True  # plain window 4
    expected[24:40, 56:64] = True  # shifted window 7, right-border half
    expected[24:40, 0:8] = True  # shifted window 7, left-border half
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("shift", [0, 8])
@pytest.mark.parametrize("size", [(64, 64), (40, 56)])
def test_select_windows_matches_pad_roll_partition(shift: int, size: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(shift + size[0])
    cells = torch.rand(3, *size, generator=generator) > 0.97
    grid = WindowGrid(size[0], size[1], 16, shift)
    padded = F.pad(cells.float(), (0, grid.padded_width - size[1], 0, grid.padded_height - size[0]))
    rolled = torch.roll(padded, shifts=(-shift, -shift), dims=(-2, -1))
    windows = rolled.view(3, grid.rows, 16, grid.cols, 16).amax(dim=(2, 4)).flatten(1) > 0
    assert torch.equal(select_windows(cells, grid), windows)


def test_box_cell_mask_equals_adaptive_max_pool() -> None:
    generator = torch.Generator().manual_seed(3)
    for size, grid in [((1024, 1024), (64, 64)), ((1000, 700), (64, 48)), ((300, 500), (37, 41))]:
        boxes = []
        for _ in range(20):
            left, right = sorted(torch.randint(0, size[1] + 1, (2,), generator=generator).tolist())
            up, bottom = sorted(torch.randint(0, size[0] + 1, (2,), generator=generator).tolist())
            boxes.append((left, up, max(right, left + 1), max(bottom, up + 1)))
        full = torch.zeros(len(boxes), 1, *size)
        for index, (left, up, right, bottom) in enumerate(boxes):
            full[index, 0, up:bottom, left:right] = 1.0
        pooled = F.adaptive_max_pool2d(full, grid)[:, 0] > 0
        assert torch.equal(box_cell_mask(boxes, size, grid), pooled)
