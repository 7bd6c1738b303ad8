"""The weight-free fallback: marker-controlled watershed on a colour-gradient map, seeded from the clicks.

It sits behind the same :class:`~napari_focsam.engine.predictor.Predictor` protocol as SAM and FocSAM, so the
plugin, the stack tools and the evaluation run with no checkpoint at all. It is always labelled as the fallback.

* ``embed`` computes, once per image, a smoothed CIE-Lab gradient magnitude at a working resolution of at most
  ``max_side`` pixels (so a click costs the same on a 4000×3000 image as on a 1024² one).
* ``predict`` floods that gradient from markers: positive clicks are object markers; negative clicks, and the
  image border when no negative click lies outside the object, are background markers. The object is the
  watershed basin of the positive markers; the mask is brought back to full resolution by nearest-neighbour
  upsampling. No positive click gives an empty mask. The result depends on the clicks only (no state).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage import color, segmentation, transform

from .._cancel import CancelToken, check_cancel
from .types import ImageEmbedding, ImageGeometry, ObjectState, Prediction, Prompts

VERSION = 1


class FallbackPredictor:
    """Classical interactive segmentation (no model weights): watershed from the clicks on a colour gradient."""

    name = "fallback"
    display_name = "Fallback (no model: watershed)"
    is_fallback = True
    supports_boxes = True
    uses_refiner = False

    def __init__(self, max_side: int = 512, sigma: float = 1.0, marker_radius: int = 2) -> None:
        self.max_side = int(max_side)
        self.sigma = float(sigma)
        self.marker_radius = int(marker_radius)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def fingerprint(self) -> str:
        return f"fallback-watershed-v{VERSION}|max_side={self.max_side}|sigma={self.sigma}|r={self.marker_radius}"

    def embed(self, image: np.ndarray, *, cancel: CancelToken | None = None) -> tuple[torch.Tensor, ImageGeometry]:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"embed() takes an (H, W, 3) RGB image, got shape {image.shape}")
        h, w = image.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        work = (max(1, round(h * scale)), max(1, round(w * scale)))
        small = image if work == (h, w) else transform.resize(image, work, order=1, anti_aliasing=True,
                                                                preserve_range=True).astype(np.uint8)
        check_cancel(cancel)
        lab = color.rgb2lab(small)
        gradient = np.zeros(work, np.float32)
        for channel in range(3):
            smoothed = ndi.gaussian_filter(lab[..., channel], self.sigma) if self.sigma > 0 else lab[..., channel]
            gradient = np.maximum(gradient, np.hypot(ndi.sobel(smoothed, 0), ndi.sobel(smoothed, 1)))
        check_cancel(cancel)
        geometry = ImageGeometry((h, w), (h, w), work, max(h, w))
        return torch.from_numpy(np.ascontiguousarray(gradient)), geometry

    def predict(
        self,
        embedding: ImageEmbedding,
        prompts: Prompts,
        state: ObjectState | None,
        *,
        cancel: CancelToken | None = None,
    ) -> Prediction:
        state = state or ObjectState()
        shape = embedding.geometry.original_size
        next_state = ObjectState(step=state.step + 1)
        positive = prompts.labels == 1
        if not positive.any():
            return Prediction(np.zeros(shape, bool), next_state, timings={"decoder": 0.0})
        start = time.perf_counter()
        gradient = embedding.features.numpy()
        work = gradient.shape
        sy, sx = work[0] / shape[0], work[1] / shape[1]
        points = np.clip(np.round((prompts.points + 0.5) * (sy, sx) - 0.5).astype(int), 0, np.array(work) - 1)
        markers = np.zeros(work, np.int32)
        background = ~positive
        if prompts.box is not None:
            y0, x0, y1, x1 = prompts.box
            box = (int(np.floor(y0 * sy)), int(np.floor(x0 * sx)), int(np.ceil((y1 + 1) * sy)),
                   int(np.ceil((x1 + 1) * sx)))
            outside = np.ones(work, bool)
            outside[max(box[0], 0): box[2], max(box[1], 0): box[3]] = False
            markers[outside] = 2
        else:
            markers[0, :] = markers[-1, :] = markers[:, 0] = markers[:, -1] = 2
        for (y, x), is_background in zip(points, background):
            r = self.marker_radius
            markers[max(0, y - r): y + r + 1, max(0, x - r): x + r + 1] = 2 if is_background else 1
        for y, x in points[positive]:  # a positive click always wins over the border at its own pixel
            markers[y, x] = 1
        check_cancel(cancel)
        region = segmentation.watershed(gradient, markers) == 1
        decoder = time.perf_counter() - start
        start = time.perf_counter()
        if work != shape:
            rows = np.minimum((np.arange(shape[0]) + 0.5) * sy, work[0] - 1).astype(int)
            cols = np.minimum((np.arange(shape[1]) + 0.5) * sx, work[1] - 1).astype(int)
            region = region[rows[:, None], cols[None, :]]
        return Prediction(region, next_state, timings={"decoder": decoder, "postprocess": time.perf_counter() - start})
