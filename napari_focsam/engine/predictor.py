"""The one protocol every backend implements: SAM, FocSAM and the weight-free fallback.

The widget, the stack tools and the evaluation runner talk to a :class:`Predictor` only, so they treat all
backends alike. A predictor is stateless between calls: what an object carries from click to click travels in the
immutable :class:`~napari_focsam.engine.types.ObjectState` that :meth:`Predictor.predict` returns.

An optional attribute ``stateless = True`` says that a mask depends on the prompts alone, never on the previous
state (the fallback): a session then computes the latest prompts in one step instead of replaying every click.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch

from .types import CancelToken, EmbedResult, ImageEmbedding, ObjectState, Prediction, Prompts


@runtime_checkable
class Predictor(Protocol):
    #: short registry name, e.g. ``"sam_vit_b"``, ``"focsam_vit_h"``, ``"fallback"``
    name: str
    #: what the user sees, e.g. ``"FocSAM ViT-H"``; the fallback always says it is the fallback
    display_name: str
    #: True only for the weight-free fallback, which must never be presented as SAM
    is_fallback: bool
    #: whether box prompts are accepted (SAM models); FocSAM and the fallback are click-only
    supports_boxes: bool
    #: whether the FocSAM focus refiner runs from the 2nd click on
    uses_refiner: bool

    @property
    def device(self) -> torch.device: ...

    @property
    def fingerprint(self) -> str:
        """Identifies the weights, the architecture and the preprocessing: part of every embedding's cache key."""
        ...

    def embed(
        self, image: np.ndarray, *, cancel: CancelToken | None = None
    ) -> EmbedResult:
        """Compute the image embedding of an (H, W, 3) uint8 RGB image: ``(features, geometry)``, or with a third
        item, the backend's further per-image tensors by name (:attr:`ImageEmbedding.extras
        <napari_focsam.engine.types.ImageEmbedding.extras>`; HQ-SAM and PA-SAM). Read it with
        :func:`~napari_focsam.engine.types.unpack_embedding`."""
        ...

    def predict(
        self,
        embedding: ImageEmbedding,
        prompts: Prompts,
        state: ObjectState | None,
        *,
        cancel: CancelToken | None = None,
    ) -> Prediction:
        """One interactive step: the prompts so far plus the previous step's state give the next mask and state."""
        ...


class _Weights(Protocol):
    @property
    def source(self) -> str: ...


W = TypeVar("W", bound=_Weights)


class LoadedWeightsPredictor(Generic[W]):
    """The properties shared by the predictors of loaded weights (the SAM family, SegNext): the device the model is
    on (``_device``) and where its weights came from (``_loaded.source``: a file, or random weights)."""

    _device: torch.device
    _loaded: W

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def source(self) -> str:
        return self._loaded.source


def as_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """A dtype option's value: ``torch.bfloat16``, ``"bfloat16"``/``"bf16"`` (also ``fp16``, ``half``, ``fp32``,
    ``float``, ``fp64``, ``double``), or None/``"auto"`` (None); a name of no floating-point dtype is refused."""
    if value is None or isinstance(value, torch.dtype):
        return value
    name = {"auto": None, "bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
            "float": "float32", "fp64": "float64", "double": "float64"}.get(str(value), str(value))
    if name is None:
        return None
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"unknown dtype {value!r}; use e.g. 'float32', 'bfloat16', 'float16' or 'auto'")
    return dtype
