"""SegNext behind the :class:`~napari_focsam.engine.predictor.Predictor` protocol.

The image half of the network (:meth:`~napari_focsam.models.segnext.network.SegNextNet.image_features`) is the
embedding: (1, 768, 64, 64) per image or slice, cached like SAM's in the memory LRU and the zarr store. Every step
runs the prompt half only: the dense prompt map (:mod:`napari_focsam.models.segnext.prompt_map`: clicks, box corners
and scribbles as disks, the previous probability or a region in the mask channel) through the prompt patch
embedding, the fusion blocks, the pyramid and the head, then the official post-processing: the 256² logits are
upsampled to 1024² (``align_corners=True``) and resized to the image (``align_corners=False``). The image is
stretched to 1024² (no padding), as the official predictor does.

An object's state holds the logits at the image's size; the next step feeds ``sigmoid(logits)`` back as the
previous mask, so undo/redo, which restore a step's state, restore its probability map exactly. The mask is
``sigmoid(logits) > threshold`` (0.5, the official demo's; the official evaluation uses 0.49).

Numerics: ``lowp`` (default ``"auto"``: bfloat16 on CPUs with native bfloat16 and on CUDA) runs the per-click half as
:class:`~napari_focsam.models.segnext.fast.FastPromptPath` (products in that dtype, split by rows between as many
single-threaded workers as the click's thread count, the fusion blocks' residual stream and norms in float32);
``encoder_lowp`` runs the image encoder's products in that dtype. ``None`` keeps everything in the
model's dtype (float64 reproduces the official float64 run within 1e-11).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..models.fast_encoder import default_encoder_dtype
from ..models.geometry import ImageGeometry, as_size
from ..models.segnext import prompt_map as pm
from ..models.segnext.fast import FastPromptPath
from ..weights.segnext import LoadedSegNext
from .predictor import LoadedWeightsPredictor
from .threads import threads_for
from .types import CancelToken, ImageEmbedding, ObjectState, Prediction, Prompts, check_cancel

#: the official demo's threshold (strict ``>``); the official evaluation uses 0.49
THRESHOLD = 0.5
#: version of this predictor's embedding computation, part of the fingerprint
EMBED_VERSION = 1


@dataclass(frozen=True, eq=False)
class _Region:
    mask: np.ndarray

    def same(self, mask: np.ndarray) -> bool:
        return self.mask is mask or (self.mask.shape == mask.shape and np.array_equal(self.mask, mask))


def _lowp(value: torch.dtype | str | None, device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    if value == "auto":
        chosen = default_encoder_dtype(device, dtype)
        return None if chosen == dtype else chosen
    if value is None or value == dtype:
        return None
    if isinstance(value, str):
        value = getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}.get(value, value), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"unknown dtype {value!r}; use e.g. 'bfloat16', None or 'auto'")
    return value


class SegNextPredictor(LoadedWeightsPredictor[LoadedSegNext]):
    """A SegNext model on one device, in one dtype; stateless between calls and safe to share by threads."""

    is_fallback = False
    supports_boxes = True
    uses_refiner = False
    #: the slow, dense-prompt model on a CPU (the widget says so)
    cost_note = ("SegNext runs a large network (≈0.29 TFLOP) at every click: 0.7–3 seconds per click on a CPU "
                 "(0.7 s on 2 idle cores with bfloat16, about 1 s with one core busy elsewhere, up to 3 s on a busy "
                 "machine), fast on a GPU (docs/models.md)")

    def __init__(self, loaded: LoadedSegNext, *, lowp: torch.dtype | str | None = "auto",
                 encoder_lowp: torch.dtype | str | None = "auto", attention: str = "sdpa",
                 threshold: float = THRESHOLD, folded_head: bool = True) -> None:
        self._loaded = loaded
        self.model = loaded.model
        self.cfg = loaded.model.cfg
        self.name = loaded.info.name
        self.display_name = loaded.info.display_name
        param = next(self.model.parameters())
        self._device, self.dtype = param.device, param.dtype
        self.lowp = _lowp(lowp, self._device, self.dtype)
        self.encoder_lowp = _lowp(encoder_lowp, self._device, self.dtype)
        if attention not in ("sdpa", "explicit"):
            raise ValueError(f"attention must be 'sdpa' or 'explicit', got {attention!r}")
        self.attention = attention
        self.threshold = float(threshold)
        self.folded_head = bool(folded_head)
        self._fast = FastPromptPath(self.model, self.lowp) if self.lowp is not None else None

    @property
    def fingerprint(self) -> str:
        enc = str(self.encoder_lowp or self.dtype).replace("torch.", "")
        return f"{self.name}|weights={self._loaded.weights_id}|segnext-stretch-v{EMBED_VERSION}|encoder={enc}"

    def geometry(self, shape: tuple[int, int]) -> ImageGeometry:
        size = self.cfg.img_size
        shape = (int(shape[0]), int(shape[1]))
        return ImageGeometry(original_size=shape, padded_size=shape, resized_size=(size, size), input_size=size)

    # ------------------------------------------------------------------ embedding
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 → the normalised (1, 3, 1024, 1024) input in the model's dtype."""
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None]
        return self.model.normalize_resize(x.to(self.dtype) / 255)

    def embed(self, image: np.ndarray, *, cancel: CancelToken | None = None) -> tuple[torch.Tensor, ImageGeometry]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"embed() takes an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        with torch.inference_mode():
            x = self.preprocess(image)
            features = self.model.image_features(x, attention=self.attention, lowp=self.encoder_lowp,
                                                 before_block=lambda _: check_cancel(cancel))
        return features.to(self.dtype), self.geometry(image.shape[:2])

    # ------------------------------------------------------------------ one step
    def disks(self, prompts: Prompts, shape: tuple[int, int]) -> np.ndarray:
        """The (2, S, S) [positive, negative] disk maps of ``prompts`` (see :mod:`..models.segnext.prompt_map`)."""
        size = self.cfg.img_size
        positive: list[np.ndarray] = []
        negative: list[np.ndarray] = []
        if len(prompts):
            pixels = pm.scale_pixels(pm.round_pixels(prompts.points, shape), shape, size)
            positive.append(pixels[prompts.labels == 1])
            negative.append(pixels[prompts.labels == 0])
        if prompts.box is not None:
            negative.append(pm.scale_pixels(pm.box_points(prompts.box, shape), shape, size))
        for scribble in prompts.scribbles:
            centres = pm.stroke_centres(scribble.points, shape, size)
            (positive if scribble.positive else negative).append(centres)
        empty = np.zeros((0, 2), np.int64)
        return pm.disk_channels(np.vstack([empty, *positive]), np.vstack([empty, *negative]), size,
                                self.cfg.norm_radius)

    def previous(self, prompts: Prompts, state: ObjectState) -> tuple[torch.Tensor | None, _Region | None]:
        """The previous-mask input: a region set or changed at this step, else the previous probability."""
        region = None
        if prompts.mask is not None:
            old = state.extra if isinstance(state.extra, _Region) else None
            if old is not None and old.same(prompts.mask):
                region = old
            else:
                region = _Region(prompts.mask)
                mask = torch.from_numpy(np.array(prompts.mask)).to(device=self.device, dtype=self.dtype)[None, None]
                return mask, region
        if state.logits is None:
            return None, region
        return torch.sigmoid(state.logits.to(self.dtype)), region

    def predict(self, embedding: ImageEmbedding, prompts: Prompts, state: ObjectState | None, *,
                cancel: CancelToken | None = None) -> Prediction:
        state = state or ObjectState()
        shape = as_size(embedding.geometry.original_size)
        if prompts.is_empty:
            return Prediction(np.zeros(shape, dtype=bool), state)
        if prompts.mask is not None and tuple(prompts.mask.shape) != shape:
            raise ValueError(f"the mask prompt is {prompts.mask.shape}, the image {shape}")
        check_cancel(cancel)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        with torch.inference_mode():
            disks = self.disks(prompts, shape)
            previous, region = self.previous(prompts, state)
            prompt = pm.prompt_map(disks, previous, dtype=self.dtype, device=self.device)
            timings["prompt_map"] = time.perf_counter() - start
            check_cancel(cancel)
            start = time.perf_counter()
            with threads_for("bulk"):  # a click here is a large network: every core, as an embedding
                logits = self.logits(embedding.features.to(self.dtype), prompt, shape)
            timings["network"] = time.perf_counter() - start
            mask = (torch.sigmoid(logits) > self.threshold)[0, 0].cpu().numpy()
        next_state = ObjectState(logits=logits, step=state.step + 1, extra=region)
        return Prediction(mask=mask, state=next_state, timings=timings)

    def logits(self, features: torch.Tensor, prompt: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """The (1, 1, H, W) logits of one prompt map: the network's 256² output, upsampled as the official code."""
        if self._fast is not None:
            low = self._fast(features, prompt)
        else:
            low = self.model.prompt_logits(features, prompt, attention=self.attention, folded=self.folded_head)
        size = self.cfg.img_size
        up = F.interpolate(low.to(self.dtype), (size, size), mode="bilinear", align_corners=True)
        return F.interpolate(up, shape, mode="bilinear", align_corners=False)
