"""Shared by the stack tests: data under ../shared, small stacks, and a transparent test predictor.

``ThresholdPredictor`` implements the engine's Predictor protocol with plain image processing (a threshold of the
smoothed slice, the connected component under the positive clicks, minus those under negative clicks, inside the box
if any). It is *not* a segmentation model: it lets the propagation and batch logic be tested exactly, independently of
what a model does. Model behaviour is tested with the fallback and random-weight SAM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.types import ImageEmbedding, ImageGeometry, ObjectState, Prediction, Prompts

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
STARDIST = SHARED / "datasets" / "stardist_fixture"
DSB = SHARED / "datasets" / "dsb2018"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available (the ../shared datasets sit beside the repository in CI)")
    return path


def stardist_3d() -> tuple[np.ndarray, np.ndarray]:
    """The stardist 3D fixture: (31, 61, 57) uint16 image and instance labels."""
    import tifffile

    image = tifffile.imread(need(STARDIST / "images" / "nuclei3d.tif"))
    labels = tifffile.imread(need(STARDIST / "masks" / "nuclei3d.tif"))
    return image, labels


def dsb_stack(n: int = 3, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A (n, size, size, 3) uint8 RGB stack of DSB2018 fluorescence images of that size, and their labels."""
    from PIL import Image

    rows = [line.split("\t") for line in need(DSB / "subset.tsv").read_text().splitlines()[1:]]
    ids = [r[0] for r in rows if r[1] == "fluorescence_gray" and r[2] == f"{size}x{size}"][:n]
    if len(ids) < n:
        pytest.skip(f"fewer than {n} {size}x{size} fluorescence images in {DSB}")
    images = [np.asarray(Image.open(next((DSB / "images").glob(f"{i}.*"))).convert("RGB")) for i in ids]
    masks = [np.asarray(Image.open(DSB / "masks" / f"{i}.png")) for i in ids]
    return np.stack(images), np.stack(masks)


class ThresholdPredictor:
    """See the module docstring. Embedding: the smoothed slice and its Otsu threshold."""

    name = "threshold_test"
    display_name = "threshold (test predictor)"
    is_fallback = False
    supports_boxes = True
    uses_refiner = False
    fingerprint = "threshold-test-v1"

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def embed(self, image: np.ndarray, *, cancel=None) -> tuple[torch.Tensor, ImageGeometry]:
        from skimage.filters import threshold_otsu

        gray = ndi.gaussian_filter(image[..., 0].astype(np.float32), 1.0)
        features = torch.from_numpy(np.stack([gray, np.full_like(gray, threshold_otsu(gray))])[None])
        h, w = gray.shape
        return features, ImageGeometry((h, w), (h, w), (h, w), max(h, w))

    def predict(self, embedding: ImageEmbedding, prompts: Prompts, state: ObjectState | None, *,
                cancel=None) -> Prediction:
        gray, threshold = embedding.features[0, 0].numpy(), float(embedding.features[0, 1, 0, 0])
        components, _ = ndi.label(gray > threshold)
        mask = np.zeros(gray.shape, bool)
        for (y, x), label in zip(prompts.points, prompts.labels):
            c = components[int(round(y)), int(round(x))]
            if c:
                mask = mask | (components == c) if label else mask & (components != c)
        if prompts.box is not None:
            y0, x0, y1, x1 = (int(round(v)) for v in prompts.box)
            inside = np.zeros_like(mask)
            inside[y0:y1 + 1, x0:x1 + 1] = True
            if not len(prompts):
                mask = np.isin(components, np.unique(components[inside & (components > 0)]))
            mask &= inside
        return Prediction(mask, ObjectState(step=(state.step if state else 0) + 1))


def threshold_manager() -> ModelManager:
    return ModelManager(ThresholdPredictor())


def fallback_manager() -> ModelManager:
    """The weight-free fallback, or skip when this checkout does not have it yet."""
    try:
        import napari_focsam.engine.fallback  # noqa: F401
    except ImportError:
        pytest.skip("the weight-free fallback (napari_focsam.engine.fallback) is not in this checkout yet")
    return ModelManager.load("fallback")
