"""Sample images that work offline: scikit-image's bundled pictures, a synthetic 3D nuclei stack and a large
synthetic multi-channel image, both made by code.

Each ``*_sample`` function returns napari ``LayerData`` tuples ``[(array, {"name": ...}, "image")]`` and needs no
network and no napari (imports are lazy); :data:`SAMPLES` lists them with a description for the plugin manifest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

LayerData = tuple[np.ndarray, dict[str, Any], str]


def _skimage(name: str) -> np.ndarray:
    from skimage import data

    return np.asarray(getattr(data, name)())


def coins_sample() -> list[LayerData]:
    """Greek coins (303×384, uint8 gray): two dozen separate round objects on a textured background."""
    return [(_skimage("coins"), {"name": "coins"}, "image")]


def cell_sample() -> list[LayerData]:
    """A cell floating in saline, quantitative phase image (660×550, uint8 gray): a soft outline, banded background."""
    return [(_skimage("cell"), {"name": "cell (quantitative phase)"}, "image")]


def ihc_sample() -> list[LayerData]:
    """Immunohistochemistry of colonic glands (512×512×3, uint8 RGB): DAB + hematoxylin, many touching objects."""
    return [(_skimage("immunohistochemistry"), {"name": "immunohistochemistry", "rgb": True}, "image")]


def coffee_sample() -> list[LayerData]:
    """A cup of coffee (400×600×3, uint8 RGB): a natural photograph like those SAM and FocSAM were trained on."""
    return [(_skimage("coffee"), {"name": "coffee", "rgb": True}, "image")]


def synthetic_nuclei(
    shape: tuple[int, int, int] = (32, 128, 128),
    n_nuclei: int = 24,
    *,
    seed: int = 0,
    radius: tuple[float, float] = (7.0, 12.0),
    z_scale: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic fluorescence stack of nuclei and its ground-truth labels, generated deterministically.

    Ellipsoidal nuclei (random size, elongation and brightness, a slightly textured interior) are placed without
    overlap, blurred by an anisotropic point-spread function, and imaged with background, Poisson shot noise and
    camera read noise. ``z_scale`` is the z spacing in pixel units (planes are ``z_scale`` pixels apart).

    Returns ``(image, labels)``: ``uint16`` (Z, Y, X) intensities and ``int32`` labels (0 = background, 1..N).
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    extent = np.array([shape[0] * z_scale, shape[1], shape[2]], dtype=np.float64)
    labels = np.zeros(shape, np.int32)
    density = np.zeros(shape, np.float32)
    placed = 0
    for _ in range(n_nuclei * 20):
        if placed == n_nuclei:
            break
        r = rng.uniform(*radius)
        radii = r * np.array([rng.uniform(0.7, 0.9), rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15)])
        centre = rng.uniform(radii, extent - radii)
        # work in the nucleus' bounding box (2 pixels wider, to keep nuclei apart)
        lo = np.floor((centre - radii) / [z_scale, 1, 1]).astype(int) - 2
        hi = np.ceil((centre + radii) / [z_scale, 1, 1]).astype(int) + 3
        lo, hi = np.maximum(lo, 0), np.minimum(hi, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        steps = (z_scale, 1.0, 1.0)
        grid = np.meshgrid(*(np.arange(a, b) * s for a, b, s in zip(lo, hi, steps, strict=True)), indexing="ij")
        distance = sum(((g - c) / rr) ** 2 for g, c, rr in zip(grid, centre, radii, strict=True))
        inside = distance <= 1.0
        if not inside.any() or labels[box][ndimage.binary_dilation(inside, iterations=2)].any():
            continue
        placed += 1
        labels[box][inside] = placed
        density[box][inside] = rng.uniform(0.6, 1.0)
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape).astype(np.float32), 1.5)
    density *= 1.0 + 0.6 * texture / (np.abs(texture).max() + 1e-6)
    blurred = ndimage.gaussian_filter(density, sigma=(3.0 / z_scale, 1.2, 1.2))  # axial blur 2.5x the lateral
    photons = rng.poisson(np.clip(100.0 + 900.0 * blurred, 0.0, None))
    image = photons + rng.normal(0.0, 6.0, shape)
    return np.clip(image, 0, 65535).astype(np.uint16), labels


def nuclei_3d_sample() -> list[LayerData]:
    """A synthetic 3D fluorescence stack of nuclei (32×128×128, uint16), made by code: no download."""
    image, _ = synthetic_nuclei()
    return [(image, {"name": "nuclei 3D (synthetic)", "scale": (2.0, 1.0, 1.0), "colormap": "gray"}, "image")]


def tissue_sample() -> list[LayerData]:
    """A large synthetic fluorescence image (3 × 8,192², uint16): ~46,000 small nuclei, membranes, a marker; one
    layer per channel, made by code at load time (a few seconds; no download, nothing large stored)."""
    from .synthetic_tissue import CHANNEL_COLOURS, CHANNEL_NAMES, synthetic_tissue

    image, _ = synthetic_tissue()
    meta = {"name": [f"{n} (synthetic tissue)" for n in CHANNEL_NAMES], "channel_axis": 0,
            "colormap": list(CHANNEL_COLOURS), "blending": "additive", "scale": (0.325, 0.325)}
    return [(image, meta, "image")]



@dataclass(frozen=True)
class Sample:
    key: str
    display_name: str
    function: Callable[[], list[LayerData]]
    description: str


SAMPLES: dict[str, Sample] = {
    s.key: s
    for s in (
        Sample("coins", "Coins (2D, gray)", coins_sample,
               "scikit-image's Greek coins: many separate round objects, one click each."),
        Sample("cell", "Cell (2D, quantitative phase)", cell_sample,
               "scikit-image's cell in saline (quantitative phase, from a hologram): a soft outline on a banded "
               "background that needs a few corrective clicks."),
        Sample("ihc", "Immunohistochemistry (2D, RGB)", ihc_sample,
               "scikit-image's IHC image of colonic glands (DAB and hematoxylin): many touching objects."),
        Sample("coffee", "Coffee (2D, RGB photo)", coffee_sample,
               "scikit-image's coffee cup: a natural photograph, like the images SAM and FocSAM were trained on."),
        Sample("nuclei_3d", "Nuclei (3D, synthetic)", nuclei_3d_sample,
               "A synthetic fluorescence stack of 24 nuclei (z spacing 2), generated by code with fixed seed."),
        Sample("tissue_8k", "Tissue, 8,192² × 3 channels (synthetic)", tissue_sample,
               "A large synthetic fluorescence image of ~46,000 small nuclei (3-6 px semi-axes), membranes and a "
               "marker, pixel size 0.325 µm, generated at load time with a fixed seed: for tiles, zoom-in and the "
               "channel choice."),
    )
}

