"""SAM and FocSAM behind the :class:`~napari_focsam.engine.predictor.Predictor` protocol.

One interactive step follows the official FocSAM pipeline (``interact_test``/``intertest_predict``):

* every step decodes the prompts so far with the previous step's raw 256² logits as mask input (none at step 0),
  single-mask output (token 0);
* FocSAM, at step index 1 (the 2nd click) only: a coarse pass on the *original* embedding gives logits and the mask
  token, the focus refiner turns them into a refined embedding, and the decoder runs again on it with the same
  prompts and mask input; the refined embedding then replaces the original for this object, for every later step;
* logits are brought to the original resolution with the model's own post-processing and thresholded at 0.

Prompts that are not clicks (regions, scribbles) become clicks, a box and a mask input (:mod:`.sam_inputs`,
:meth:`SamFamilyPredictor.model_inputs`). The refiner runs once, at step index 1 (the object's second step, whatever
its kind), with the coarse logits and mask token of a pass on the original embedding with that step's prompts and
mask input. HQ-SAM's and PA-SAM's decoders and their per-image extras: :mod:`.sam_heads`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..models.decoding import DecoderOutput, decode, dense_positional_encoding
from ..models.fast_decoder import FastDecoder, default_decoder_dtype
from ..models.fast_encoder import ATTENTION_MODES, FAST_ENCODER_VERSION, FastImageEncoder, default_encoder_dtype
from ..models.transforms import make_transform
from ..models.variant_decoder import VariantDecoder
from ..weights.loader import LoadedModel
from .predictor import LoadedWeightsPredictor, as_dtype
from .sam_heads import EXTRAS, decode_head, extras_payload, image_extras
from .sam_inputs import MASK_LOGIT_SCALE, SCRIBBLE_POINTS, SCRIBBLE_SPACING, ModelInputs, SamInputs
from .types import CancelToken, ImageEmbedding, ImageGeometry, ObjectState, Prediction, Prompts, check_cancel

if TYPE_CHECKING:
    from .stability import Variants

#: the official ``refine_start_step``: the refiner runs at step index 1, i.e. the second click
REFINE_STEP = 1
__all__ = ["MASK_LOGIT_SCALE", "REFINE_STEP", "SCRIBBLE_POINTS", "SCRIBBLE_SPACING", "SamFamilyPredictor",
           "extras_payload"]
class SamFamilyPredictor(LoadedWeightsPredictor[LoadedModel]):
    """A SAM or FocSAM model on one device, in one dtype; stateless between calls and safe to share by threads.

    The image encoder runs one of two ways (the rest of the pipeline is the same):

    ``encoder_attention="reference"`` (the default here)
        segment-anything's own ``ImageEncoderViT`` blocks, in the model's dtype, optionally under
        ``torch.autocast(encoder_autocast)``; in float32 the embedding is bit-identical to ``SamPredictor``'s.
    ``encoder_attention="fast"``
        :class:`~napari_focsam.models.fast_encoder.FastImageEncoder`: the same function of the same weights, with
        fused attention and compute in ``encoder_dtype`` (``None``/``"auto"``: the device's fast dtype, see
        :func:`~napari_focsam.models.fast_encoder.default_encoder_dtype`). In float32 it equals the reference
        within 1e-6 (relative); in bfloat16 within about 0.5 % (relative L2 of the embedding).
        :meth:`ModelManager.load <napari_focsam.engine.manager.ModelManager.load>` uses this by default.

    The decoder: ``decoder="fast"`` (default) is :class:`~napari_focsam.models.fast_decoder.FastDecoder` (the same
    function with fused image-side projections; logits within float rounding of ``decoder="reference"``,
    segment-anything's forward as written). Two options move its products with the 4096 image tokens, most of its
    arithmetic, to a lower precision while the tokens themselves, their norms and residuals and everything on the
    prompt tokens' side stay in the model's dtype: ``decoder_upscale_dtype=torch.bfloat16`` for the output upscaling
    (two GEMMs whose outputs feed nothing but the logits) and ``decoder_attention_dtype=torch.bfloat16`` for the
    folded attention's four products per layer (up to 18 clicks; above that the decoder runs in the model's dtype).
    ``"auto"`` is :func:`~napari_focsam.models.fast_decoder.default_decoder_dtype` (bfloat16 on CPUs with native
    bfloat16), the default of :meth:`ModelManager.load <napari_focsam.engine.manager.ModelManager.load>`.
    ``decoder_autocast=torch.bfloat16`` runs all of it under autocast instead (further from float32). All are off
    here (None: the model's dtype throughout); ``benchmarks/bench_engine.py`` measures speed and mask agreement.

    Passing ``encoder_autocast`` without ``encoder_attention`` selects the reference path. The choice is part of
    :attr:`fingerprint`, so embeddings of different numerics never share a cache key.
    """

    is_fallback = False

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        encoder_attention: str | None = None,
        encoder_dtype: torch.dtype | str | None = None,
        encoder_autocast: torch.dtype | None = None,
        decoder: str = "fast",
        decoder_autocast: torch.dtype | None = None,
        decoder_upscale_dtype: torch.dtype | str | None = None,
        decoder_attention_dtype: torch.dtype | str | None = None,
        mask_logit_scale: float = MASK_LOGIT_SCALE,
        scribble_spacing: float = SCRIBBLE_SPACING,
        scribble_points: int = SCRIBBLE_POINTS,
        hq_token_only: bool = False,
        preprocessing: str | None = None,
    ) -> None:
        self._loaded = loaded
        self.model = loaded.model
        spec = loaded.spec
        self.spec = spec
        self.name = spec.name
        self.display_name = spec.display_name
        self.supports_boxes = not spec.refiner
        self.uses_refiner = spec.refiner
        #: ``preprocessing`` overrides the spec's frame, e.g. "stretch" for PA-SAM's official evaluation frame
        self.transform = make_transform(preprocessing or spec.preprocessing, self.model.input_size)
        param = next(self.model.parameters())
        self._device, self.dtype = param.device, param.dtype
        #: the prompts' conversion into model inputs (regions, scribbles: see :mod:`.sam_inputs`)
        self.inputs = SamInputs(self.transform, self._device, self.dtype, self.supports_boxes,
                                float(mask_logit_scale), float(scribble_spacing), int(scribble_points))
        attention = encoder_attention or "reference"
        if attention not in ATTENTION_MODES:
            raise ValueError(f"encoder_attention must be one of {ATTENTION_MODES}, got {encoder_attention!r}")
        dtype = as_dtype(encoder_dtype)
        self.fast_encoder: FastImageEncoder | None = None
        if attention == "fast":
            if encoder_autocast is not None:
                raise ValueError("encoder_autocast applies to encoder_attention='reference'; the fast path takes "
                                 "encoder_dtype (e.g. torch.bfloat16)")
            dtype = dtype or default_encoder_dtype(self._device, self.dtype)
            self.fast_encoder = FastImageEncoder(self.model.image_encoder, dtype)
        elif dtype is not None and dtype != self.dtype:
            raise ValueError(f"the reference encoder runs in the model's dtype ({self.dtype}); use encoder_autocast "
                             f"or encoder_attention='fast' for {dtype}")
        self.encoder_attention = attention
        self.encoder_dtype = dtype or self.dtype  # the encoder's compute dtype (autocast aside)
        self.encoder_autocast = encoder_autocast
        with torch.inference_mode():
            self._image_pe = dense_positional_encoding(self.model.prompt_encoder)
        if decoder not in ("fast", "reference"):
            raise ValueError(f"decoder must be 'fast' or 'reference', got {decoder!r}")
        self.decoder = decoder
        self.decoder_autocast = decoder_autocast
        upscale = self._decoder_dtype("decoder_upscale_dtype", decoder_upscale_dtype)
        attend = self._decoder_dtype("decoder_attention_dtype", decoder_attention_dtype)
        self.decoder_upscale_dtype = upscale or self.dtype
        self.decoder_attention_dtype = attend or self.dtype
        #: HQ-SAM / PA-SAM run their own decoder (:mod:`..models.hq_decoder`, :mod:`..models.pa_decoder`)
        self.head = spec.decoder
        #: HQ-SAM: the HQ token's mask alone (True) or summed with SAM's token-0 mask (False, the official default)
        self.hq_token_only = bool(hq_token_only)
        self._fast_decoder = (
            FastDecoder(self.model.mask_decoder, self._image_pe, upscale_dtype=upscale, attention_dtype=attend)
            if decoder == "fast" and self.head in ("sam", "hq") else None
        )
        #: the jittered copies of a stability or robust step (SAM's own decoder only)
        self._variant_decoder = (
            VariantDecoder(self.model.mask_decoder, self._image_pe)
            if self._fast_decoder is not None and self.head == "sam" else None
        )

    def _decoder_dtype(self, option: str, value: torch.dtype | str | None) -> torch.dtype | None:
        """The dtype asked for by one of the fast decoder's precision options (None: the model's)."""
        if value == "auto":
            return default_decoder_dtype(self._device, self.dtype) if self.decoder == "fast" else None
        dtype = as_dtype(value)
        if dtype is not None and self.decoder != "fast":
            raise ValueError(f"{option} applies to decoder='fast'")
        return dtype

    @property
    def mask_logit_scale(self) -> float:
        """The magnitude of a region prompt's logits."""
        return self.inputs.mask_logit_scale

    @property
    def scribble_spacing(self) -> float:
        """One point sampled per this fraction of the image's longest side along a scribble."""
        return self.inputs.scribble_spacing

    @property
    def scribble_points(self) -> int:
        """At most this many points sampled along one scribble."""
        return self.inputs.scribble_points

    @property
    def encoder_numerics(self) -> str:
        """The encoder's numerics, as they appear in :attr:`fingerprint`.

        ``float32`` / ``bfloat16`` (reference path: the model's dtype or the autocast dtype, no version) or
        ``fast1-bfloat16`` (the fast path, its version and dtype).
        """
        if self.fast_encoder is not None:
            return f"fast{FAST_ENCODER_VERSION}-{str(self.fast_encoder.dtype).replace('torch.', '')}"
        return str(self.encoder_autocast or self.dtype).replace("torch.", "")

    @property
    def fingerprint(self) -> str:
        base = f"{self.name}|weights={self._loaded.weights_id}|{self.transform.name}|encoder={self.encoder_numerics}"
        if self.head not in EXTRAS:
            return base
        name, version = EXTRAS[self.head]
        return f"{base}|extras={name}-v{version}"

    # ------------------------------------------------------------------ embedding
    def embed(
        self, image: np.ndarray, *, cancel: CancelToken | None = None
    ) -> tuple[torch.Tensor, ImageGeometry] | tuple[torch.Tensor, ImageGeometry, dict[str, torch.Tensor]]:
        """The embedding of an (H, W, 3) uint8 RGB image; HQ-SAM and PA-SAM add their per-image extras (see
        :func:`extras_payload`), computed from the same encoder pass and the same preprocessed input."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"embed() takes an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
        geometry = self.transform.geometry(image.shape[:2])
        early_wanted = self.head == "hq"
        early = None
        with torch.inference_mode():
            x = self.transform.image_to_input(image, self.device, self.dtype)
            if self.fast_encoder is not None:
                result = self.fast_encoder(x, cancel_check=lambda: check_cancel(cancel), early=early_wanted)
                features, early = result if isinstance(result, tuple) else (result, None)  # a pair when early_wanted
            elif self.encoder_autocast is not None:
                with torch.autocast(self.device.type, dtype=self.encoder_autocast):
                    features, early = self._encode(x, cancel)
            else:
                features, early = self._encode(x, cancel)
            features = features.to(self.dtype)
            if self.head in EXTRAS:
                check_cancel(cancel)
                extras = image_extras(self.head, self.model.mask_decoder, features, early, x)
                assert extras is not None  # a head with extras
                return features, geometry, extras
        return features, geometry

    def _encode(self, x: torch.Tensor, cancel: CancelToken | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """segment-anything's ``ImageEncoderViT.forward`` (the reference path), with a cancellation point before every
        block; also the tokens after the first global-attention block (HQ-SAM's early features; None for others)."""
        encoder = self.model.image_encoder
        x = encoder.patch_embed(x)
        if encoder.pos_embed is not None:
            x = x + encoder.pos_embed
        early = None
        for block in encoder.blocks:
            check_cancel(cancel)
            x = block(x)
            if early is None and self.head == "hq" and block.window_size == 0:
                early = x
        return encoder.neck(x.permute(0, 3, 1, 2)), early

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
            inputs = self._model_inputs(prompts, geometry, state)
            sparse, dense = self.inputs.encode(self.model.prompt_encoder, [inputs], geometry)
            refine_now = self.uses_refiner and state.features is None and state.step == REFINE_STEP
            features = state.features
            start = time.perf_counter()
            if refine_now:
                coarse = self._decode(embedding.features, sparse, dense, embedding.extras)
                timings["decoder"] = time.perf_counter() - start
                check_cancel(cancel)
                start = time.perf_counter()
                size = self.model.input_size
                assert self.model.refiner is not None  # refine_now: a FocSAM model
                features = self.model.refiner(
                    embedding.features, coarse.logits, coarse.token, input_size=(size, size), cancel=cancel
                )
                timings["refiner"] = time.perf_counter() - start
                check_cancel(cancel)
                start = time.perf_counter()
            current = embedding.features if features is None else features
            out = self._decode(current, sparse, dense, embedding.extras)
            timings["decoder"] = timings.get("decoder", 0.0) + time.perf_counter() - start
            check_cancel(cancel)
            start = time.perf_counter()
            mask = (self.transform.logits_to_original(out.logits, geometry) > 0)[0, 0].cpu().numpy()
            timings["postprocess"] = time.perf_counter() - start
        next_state = ObjectState(logits=out.logits, features=features, step=state.step + 1, extra=inputs.region)
        return Prediction(mask=mask, state=next_state, score=float(out.iou[0, 0]), timings=timings)

    def predict_variants(
        self,
        embedding: ImageEmbedding,
        variants: Sequence[Prompts],
        state: ObjectState | None,
        *,
        cancel: CancelToken | None = None,
        image_only: bool = False,
    ) -> Variants:
        """Decode several prompt sets that differ only in their click positions and box (as
        :func:`~napari_focsam.engine.stability.jitter_prompts` makes them) in one batched decoder call, with
        ``state``'s mask input on its features (the refiner never runs here). The low-resolution logits come back
        with the part of their frame that covers the image (see :mod:`.stability`); with ``image_only`` only that
        part (and one row and column of margin) is computed by SAM's decoder, the rest reads 0. SAM's decoder runs
        as :class:`~napari_focsam.models.variant_decoder.VariantDecoder` in the precision of the fast decoder's
        attention."""
        from .stability import Variants

        state = state or ObjectState()
        geometry = embedding.geometry
        first = variants[0]
        if first.box is not None and not self.supports_boxes:
            raise ValueError(f"{self.display_name} takes clicks only (it was never trained with boxes)")
        inputs = [self._model_inputs(p, geometry, state) for p in variants]
        if any(len(i.points) != len(inputs[0].points) or (i.box is None) != (inputs[0].box is None) for i in inputs):
            raise ValueError("the prompt sets of one batch must give as many clicks and all or no box")
        check_cancel(cancel)
        with torch.inference_mode():
            sparse, dense = self.inputs.encode(self.model.prompt_encoder, inputs, geometry)
            features = embedding.features if state.features is None else state.features
            low, size = self.model.prompt_encoder.mask_input_size[0], self.model.input_size
            rh, rw = geometry.resized_size
            valid = (-(-rh * low // size), -(-rw * low // size))
            fast = self._fast_decoder
            if self._variant_decoder is not None and fast is not None and self.decoder_autocast is None:
                upscale, attention = fast.precisions(self.device)
                region = (-(-(valid[0] + 1) // 4), -(-(valid[1] + 1) // 4)) if image_only else None
                logits = self._variant_decoder(features, sparse, dense[:1], attention, upscale_dtype=upscale,
                                               region=region)
            elif self.head == "pa":  # PA-SAM's decoder takes one prompt set at a time, as the official one
                logits = torch.cat([self._decode(features, sparse[i : i + 1], dense, embedding.extras).logits
                                    for i in range(len(variants))])
            else:
                logits = self._decode(features, sparse, dense, embedding.extras).logits
        check_cancel(cancel)
        return Variants(logits, valid, lambda x: self.transform.logits_to_original(x, geometry))

    def _decode(self, features: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                extras: Mapping[str, torch.Tensor] = MappingProxyType({})) -> DecoderOutput:
        """The single-mask decoder pass: :class:`FastDecoder` (default; equal to the reference within float
        rounding, 1e-9 against the official golden data in float64) or segment-anything's forward as written; HQ-SAM's
        and PA-SAM's decoders with their per-image extras."""
        if self.decoder_autocast is not None:
            with torch.autocast(self.device.type, dtype=self.decoder_autocast):
                out = self._decode_plain(features, sparse, dense, extras)
            return DecoderOutput(out.logits.to(self.dtype), out.iou.to(self.dtype), out.token.to(self.dtype))
        return self._decode_plain(features, sparse, dense, extras)

    def _decode_plain(self, features: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                      extras: Mapping[str, torch.Tensor]) -> DecoderOutput:
        if self.head != "sam":
            return self._decode_head(features, sparse, dense, extras)
        if self._fast_decoder is not None:
            return self._fast_decoder(features, sparse, dense)
        return decode(self.model.mask_decoder, features, self._image_pe, sparse, dense)

    def model_inputs(
        self, prompts: Prompts, geometry: ImageGeometry, state: ObjectState
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, torch.Tensor | None]:
        """The clicks (y, x), labels, box and mask input that the model gets for ``prompts`` (see the module)."""
        return self._model_inputs(prompts, geometry, state)[:4]

    def _model_inputs(self, prompts: Prompts, geometry: ImageGeometry, state: ObjectState) -> ModelInputs:
        return self.inputs.model_inputs(prompts, geometry, state)

    def _decode_head(self, features: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                     extras: Mapping[str, torch.Tensor]) -> DecoderOutput:
        """HQ-SAM's or PA-SAM's decoder, single-mask output (:func:`~.sam_heads.decode_head`)."""
        upscale = self.decoder_upscale_dtype if self.decoder_upscale_dtype != self.dtype else None
        return decode_head(self.head, self.model, self._image_pe, features, sparse, dense, extras,
                           display_name=self.display_name, hq_token_only=self.hq_token_only, upscale_dtype=upscale,
                           fast=self._fast_decoder)

    def _encode_prompts(
        self, points: np.ndarray, labels: np.ndarray, box: np.ndarray | None, geometry: ImageGeometry,
        mask_input: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The sparse and dense prompt embeddings of one prompt set (:meth:`~.sam_inputs.SamInputs.encode`)."""
        inputs = ModelInputs(points, labels, box, mask_input, None)
        return self.inputs.encode(self.model.prompt_encoder, [inputs], geometry)
