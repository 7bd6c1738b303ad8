"""A backend that knows the answer: the oracle, for testing the evaluation pipeline end to end.

It implements the engine's :class:`~napari_focsam.engine.predictor.Predictor` protocol plus ``set_target``, which
the runner calls with each object's ground truth before its first step (see :class:`TargetAware`). It returns the
ground-truth object as soon as there is a positive click, so a correct pipeline reports NoC = 1 and mIoU = 100 %
at every click, and the simulator finds no error from the second step on.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..engine.types import CancelToken, ImageEmbedding, ImageGeometry, ObjectState, Prediction, Prompts


@runtime_checkable
class TargetAware(Protocol):
    """A test backend that is told the ground truth (uint8 0/1/255) of the object about to be evaluated."""

    def set_target(self, gt: np.ndarray) -> None: ...


class OracleBackend:
    """Predicts the ground-truth object once a positive click exists (an empty mask before)."""

    name = "oracle"
    display_name = "Oracle (returns the ground truth)"
    is_fallback = False
    supports_boxes = False
    uses_refiner = False

    def __init__(self) -> None:
        self._target: np.ndarray | None = None

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def fingerprint(self) -> str:
        return "oracle"

    def set_target(self, gt: np.ndarray) -> None:
        self._target = np.asarray(gt) == 1

    def embed(self, image: np.ndarray, *, cancel: CancelToken | None = None) -> tuple[torch.Tensor, ImageGeometry]:
        height, width = image.shape[:2]
        size = (int(height), int(width))
        return torch.zeros(1), ImageGeometry(size, size, size, max(size))

    def predict(
        self,
        embedding: ImageEmbedding,
        prompts: Prompts,
        state: ObjectState | None,
        *,
        cancel: CancelToken | None = None,
    ) -> Prediction:
        if self._target is None:
            raise RuntimeError("OracleBackend.set_target() must be called before predict()")
        if self._target.shape != tuple(embedding.geometry.original_size):
            raise ValueError(f"target {self._target.shape} does not match the image {embedding.geometry.original_size}")
        step = 0 if state is None else state.step
        mask = self._target.copy() if prompts.has_object else np.zeros_like(self._target)
        return Prediction(mask=mask, state=ObjectState(step=step + 1), timings={"decoder": 0.0})
