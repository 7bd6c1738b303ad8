"""What the focus refiner's tests share: a small randomised refiner, random inputs, box logits, window sets
(``test_refiner.py``, ``test_focus_windows.py``)."""

from __future__ import annotations

import torch

from napari_focsam.models.focus import WindowGrid
from napari_focsam.models.refiner import FocusRefiner

INPUT = (1024, 1024)
GRID = (64, 64)


def small_refiner(dtype: torch.dtype = torch.float64, seed: int = 0, **config: object) -> FocusRefiner:
    """A small refiner (64 x 64 grid still gives 4 x 4 windows) with every parameter randomised, as in the golden
    scheme (norm weights ``1 + 0.05 t``, everything else ``0.05 t``)."""
    options = dict(embed_dim=32, depth=4, num_heads=4, window_size=16)
    options.update(config)
    model = FocusRefiner(**options).to(dtype).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = 0.05 * torch.randn(param.shape, generator=generator, dtype=torch.float64)
            is_norm_weight = name.endswith(".weight") and param.ndim == 1  # LayerNorm / GroupNorm scales
            param.copy_(noise + 1.0 if is_norm_weight else noise)
    return model


def random_inputs(
    batch: int, channels: int, dtype: torch.dtype = torch.float64, seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, channels, *GRID, generator=generator, dtype=torch.float64).to(dtype)
    token = torch.randn(batch, 1, channels, generator=generator, dtype=torch.float64).to(dtype)
    return embeds, token


def logits_from_box(box: tuple[int, int, int, int], size: tuple[int, int] = INPUT) -> torch.Tensor:
    """Logits at input resolution: +1 inside ``box`` (left, up, right_excl, bottom_excl), -1 elsewhere."""
    left, up, right, bottom = box
    logits = -torch.ones(1, 1, *size, dtype=torch.float64)
    logits[..., up:bottom, left:right] = 1.0
    return logits


def window_ids(selected: torch.Tensor) -> set[int]:
    return set(torch.nonzero(selected.flatten()).flatten().tolist())


def touched_cells(plan_windows: list[tuple[WindowGrid, torch.Tensor]], sample: int = 0) -> torch.Tensor:
    """``(h, w)`` cells inside any selected window of any of the given partitions."""
    grid = plan_windows[0][0]
    touched = torch.zeros(grid.padded_height * grid.padded_width, dtype=torch.bool)
    for part, selected in plan_windows:
        ids = torch.nonzero(selected[sample]).flatten()
        touched[part.token_index()[ids].flatten()] = True
    return touched.view(grid.padded_height, grid.padded_width)[: grid.height, : grid.width]
