"""A large synthetic multi-channel fluorescence image made by code at load time (nothing large is stored): small
nuclei on a jittered grid, their cell membranes and a marker in some cells.

The image is built strip by strip with vectorised arithmetic (no per-nucleus loop), so an 8,192² three-channel image
takes a few seconds and the memory of the result plus one strip. Every nucleus lives in its own square cell of the
grid (``cell`` px): a random centre inside the cell, an elliptic outline with random radii and orientation, and a
random brightness. Channels: 0 nuclei (DNA stain), 1 membranes (a ring around each nucleus), 2 a marker filling the
cytoplasm of about a third of the cells. Background, a smooth illumination gradient and Gaussian noise make the
contrast realistic; the values are uint16. The ground-truth nucleus labels come with it (1..N, row-major cells).
"""

from __future__ import annotations

import numpy as np

CHANNEL_NAMES = ("nuclei", "membranes", "marker")
CHANNEL_COLOURS = ("blue", "magenta", "green")


def synthetic_tissue(size: int = 8192, *, channels: int = 3, cell: int = 32, radius: tuple[float, float] = (3.0, 6.0),
                     fill: float = 0.7, seed: int = 0, strip: int = 512,
                     labels: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """The (channels, size, size) uint16 image and, with ``labels``, the (size, size) int32 nucleus labels (else
    None). ``fill``: the fraction of grid cells that hold a nucleus; ``radius``: the range of the nuclei's semi-axes
    in pixels (at most a fifth of ``cell``, so that a membrane stays in its cell). Deterministic for a ``seed``."""
    if size < cell or size % cell:
        raise ValueError(f"size must be a positive multiple of the cell side {cell}, got {size}")
    if not 1 <= channels <= len(CHANNEL_NAMES):
        raise ValueError(f"channels must be 1..{len(CHANNEL_NAMES)}, got {channels}")
    if not 0 < radius[0] <= radius[1] <= cell / 5:
        raise ValueError(f"radius must be 0 < low <= high <= cell / 5 = {cell / 5:g}, got {radius}")
    rng = np.random.default_rng(seed)
    n = size // cell
    present = rng.random((n, n)) < fill
    margin = min(radius[1] * 1.9, cell / 2)
    cy = rng.uniform(margin, cell - margin, (n, n)).astype(np.float32)
    cx = rng.uniform(margin, cell - margin, (n, n)).astype(np.float32)
    a = rng.uniform(*radius, (n, n)).astype(np.float32)
    b = (a * rng.uniform(0.6, 1.0, (n, n))).astype(np.float32)
    angle = rng.uniform(0, np.pi, (n, n)).astype(np.float32)
    bright = rng.uniform(0.5, 1.0, (n, n)).astype(np.float32)
    marked = rng.random((n, n)) < 0.35
    ids = np.where(present, np.cumsum(present.reshape(-1)).reshape(n, n), 0).astype(np.int32)

    cos, sin = np.cos(angle)[:, None, :, None], np.sin(angle)[:, None, :, None]
    a, b = a[:, None, :, None], b[:, None, :, None]
    # radial profiles, looked up by the elliptic radius r (1 on the nucleus' outline) in steps of 1/64
    r_table = np.arange(0, 4 * 64 + 1, dtype=np.float32) / 64
    profiles = [1.0 / (1.0 + np.exp((r_table - 1.0) * 8.0)),          # nucleus: a soft-edged disc
                np.exp(-((r_table - 1.5) ** 2) * 12.0),                # membrane: a ring around it
                0.7 / (1.0 + np.exp((r_table - 1.4) * 10.0))]          # marker: the cytoplasm
    weights = [bright * present, present.astype(np.float32), 0.8 * (present & marked)]
    noise_tile = np.random.default_rng(seed + 1).normal(0.0, 60.0, (cell * 16, size)).astype(np.float32)
    light_y = 1.0 + 0.15 * np.cos(np.arange(size) * (2 * np.pi / size)).astype(np.float32)
    light_x = 1.0 + 0.15 * np.sin(np.arange(size) * (2 * np.pi / size)).astype(np.float32)

    image = np.empty((channels, size, size), np.uint16)
    truth = np.zeros((size, size), np.int32) if labels else None
    local = np.arange(cell, dtype=np.float32) + 0.5
    band = max(1, strip // cell)                                       # grid rows per strip
    for g0 in range(0, n, band):
        g = slice(g0, min(g0 + band, n))
        k = g.stop - g.start
        dy = local[None, :, None, None] - cy[g][:, None, :, None]      # (k, cell, n, 1): blocks of the grid
        dx = local[None, None, None, :] - cx[g][:, None, :, None]      # (k, 1, n, cell)
        u, v = (dy * cos[g] + dx * sin[g]) / a[g], (dx * cos[g] - dy * sin[g]) / b[g]
        r = np.sqrt(u * u + v * v)
        index = np.minimum(r * 64, len(r_table) - 1).astype(np.int16).reshape(k * cell, size)
        rows = slice(g.start * cell, g.stop * cell)
        light = light_y[rows, None] * light_x[None, :]
        for c in range(channels):
            weight = np.repeat(np.repeat(weights[c][g], cell, axis=0), cell, axis=1)
            values = profiles[c].astype(np.float32)[index] * weight
            shift = (g0 * 7 + c * 131) % noise_tile.shape[0]
            noise = np.roll(noise_tile, -shift, axis=0)[: k * cell] if k * cell <= noise_tile.shape[0] else 0.0
            values = 300.0 + 3000.0 * values * light + noise
            image[c, rows] = np.clip(values, 0, 65535).astype(np.uint16)
        if truth is not None:
            cells = np.repeat(np.repeat(ids[g], cell, axis=0), cell, axis=1)
            truth[rows] = np.where(r.reshape(k * cell, size) <= 1.0, cells, 0)
    return image, truth
