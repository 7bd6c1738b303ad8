"""SAM and FocSAM behind the :class:`~napari_focsam.engine.predictor.Predictor` protocol.

One interactive step follows the official FocSAM pipeline (``interact_test``/``intertest_predict``):

* every step decodes the prompts so far with the previous step's raw 256² logits as mask input (none at step 0),
  single-mask output (token 0);
* FocSAM, at step index 1 (the 2nd click) only: a coarse pass on the *original* embedding gives logits and the mask
  token, the focus refiner turns them into a refined embedding, and the decoder runs again on it with the same
  prompts and mask input; the refined embedding then replaces the original for this object, for every later step;
* logits are brought to the original resolution with the model's own post-processing and thresholded at 0.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..models.decoding import decode, dense_positional_encoding, encode_prompts
from ..models.loader import LoadedModel
from ..models.transforms import make_transform
from .types import CancelToken, ImageEmbedding, ImageGeometry, ObjectState, Prediction, Prompts, check_cancel

#: the official ``refine_start_step``: the refiner runs at step index 1, i.e. the second click
REFINE_STEP = 1


class SamFamilyPredictor:
    """A SAM or FocSAM model on one device, in one dtype; stateless between calls and safe to share by threads."""

    is_fallback = False

    def __init__(self, loaded: LoadedModel, *, encoder_autocast: torch.dtype | None = None) -> None:
        self._loaded = loaded
        self.model = loaded.model
        spec = loaded.spec
        self.spec = spec
        self.name = spec.name
        self.display_name = spec.display_name
        self.supports_boxes = not spec.refiner
        self.uses_refiner = spec.refiner
        self.transform = make_transform(spec.preprocessing, self.model.input_size)
        self.encoder_autocast = encoder_autocast
        param = next(self.model.parameters())
        self._device, self.dtype = param.device, param.dtype
        with torch.inference_mode():
            self._image_pe = dense_positional_encoding(self.model.prompt_encoder)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def source(self) -> str:
        return self._loaded.source

    @property
    def fingerprint(self) -> str:
        precision = str(self.encoder_autocast or self.dtype).replace("torch.", "")
        return f"{self.name}|weights={self._loaded.weights_id}|{self.transform.name}|encoder={precision}"

    # ------------------------------------------------------------------ embedding
    def embed(self, image: np.ndarray, *, cancel: CancelToken | None = None) -> tuple[torch.Tensor, ImageGeometry]:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"embed() takes an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        geometry = self.transform.geometry(image.shape[:2])
        with torch.inference_mode():
            x = self.transform.image_to_input(image, self.device, self.dtype)
            if self.encoder_autocast is not None:
                with torch.autocast(self.device.type, dtype=self.encoder_autocast):
                    features = self._encode(x, cancel)
            else:
                features = self._encode(x, cancel)
        return features.to(self.dtype), geometry

    def _encode(self, x: torch.Tensor, cancel: CancelToken | None) -> torch.Tensor:
        """segment-anything's ``ImageEncoderViT.forward``, with a cancellation point before every block."""
        encoder = self.model.image_encoder
        x = encoder.patch_embed(x)
        if encoder.pos_embed is not None:
            x = x + encoder.pos_embed
        for block in encoder.blocks:
            check_cancel(cancel)
            x = block(x)
        return encoder.neck(x.permute(0, 3, 1, 2))

    # ------------------------------------------------------------------ one step
    def predict(
        self,
        embedding: ImageEmbedding,
        prompts: Prompts,
        state: ObjectState | None,
        *,
        cancel: CancelToken | None = None,
    ) -> Prediction:
        state = state or ObjectState()
        geometry = embedding.geometry
        if prompts.box is not None and not self.supports_boxes:
            raise ValueError(f"{self.display_name} takes clicks only (it was never trained with boxes)")
        if prompts.is_empty:
            return Prediction(np.zeros(geometry.original_size, dtype=bool), state)
        check_cancel(cancel)
        timings: dict[str, float] = {}
        with torch.inference_mode():
            sparse, dense = self._encode_prompts(prompts, geometry, state.logits)
            refine_now = self.uses_refiner and state.features is None and state.step == REFINE_STEP
            features = state.features
            start = time.perf_counter()
            if refine_now:
                coarse = decode(self.model.mask_decoder, embedding.features, self._image_pe, sparse, dense)
                timings["decoder"] = time.perf_counter() - start
                check_cancel(cancel)
                start = time.perf_counter()
                size = self.model.input_size
                features = self.model.refiner(
                    embedding.features, coarse.logits, coarse.token, input_size=(size, size), cancel=cancel
                )
                timings["refiner"] = time.perf_counter() - start
                check_cancel(cancel)
                start = time.perf_counter()
            current = embedding.features if features is None else features
            out = decode(self.model.mask_decoder, current, self._image_pe, sparse, dense)
            timings["decoder"] = timings.get("decoder", 0.0) + time.perf_counter() - start
            check_cancel(cancel)
            start = time.perf_counter()
            mask = (self.transform.logits_to_original(out.logits, geometry) > 0)[0, 0].cpu().numpy()
            timings["postprocess"] = time.perf_counter() - start
        next_state = ObjectState(logits=out.logits, features=features, step=state.step + 1)
        return Prediction(mask=mask, state=next_state, score=float(out.iou[0, 0]), timings=timings)

    def _encode_prompts(
        self, prompts: Prompts, geometry: ImageGeometry, prev_logits: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        coords = labels = boxes = None
        if len(prompts):
            xy = self.transform.points_to_input(prompts.points, geometry)
            coords = torch.as_tensor(xy, dtype=torch.float32, device=self.device)[None]  # float32, as both official codes
            labels = torch.tensor(prompts.labels, device=self.device)[None]
        if prompts.box is not None:
            box = self.transform.box_to_input(prompts.box, geometry)
            boxes = torch.as_tensor(box, dtype=torch.float32, device=self.device)[None]
        return encode_prompts(self.model.prompt_encoder, coords, labels, boxes, prev_logits)
