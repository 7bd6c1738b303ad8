"""What SAM and FocSAM take for the prompts of one step: clicks, a box and a mask input, in the model's frame.

Prompts that are not clicks become what SAM takes (:meth:`SamInputs.model_inputs`):

* a **region** (mask, label, filled polygons): at the step that sets or changes it, its low-resolution logits
  (:func:`~.prompt_shapes.mask_to_low_res`, ``±mask_logit_scale``) replace the previous step's logits as the mask
  input; at every step it adds a positive click at its deepest interior point and, for SAM (not FocSAM, which
  never saw boxes), its bounding box unless the user gave a box;
* a **scribble**: points sampled along it (:func:`~.prompt_shapes.sample_stroke`: one per
  ``scribble_spacing`` × the image's longest side, at most ``scribble_points``), with the scribble's label.

FocSAM thus always sees what it was fine-tuned on: clicks and a previous-logits mask input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from ..models.decoding import encode_prompts
from ..models.transforms import FocsamTransform, MedsamTransform, SamTransform, StretchTransform
from .prompt_shapes import bounding_box, deepest_point, mask_to_low_res, sample_stroke
from .types import ImageGeometry, ObjectState, Prompts

__all__ = ["MASK_LOGIT_SCALE", "SCRIBBLE_POINTS", "SCRIBBLE_SPACING", "ModelInputs", "Region", "SamInputs"]

#: a region prompt's logits: ±logit(0.999), the magnitude micro-sam gives its mask prompts
MASK_LOGIT_SCALE = 6.9068
#: scribble sampling: one point per this fraction of the image's longest side, at most SCRIBBLE_POINTS per stroke
SCRIBBLE_SPACING = 1 / 16
SCRIBBLE_POINTS = 6


@dataclass(frozen=True, eq=False)
class Region:
    """A region prompt as an object's state remembers it: the mask and what was derived from it once."""

    mask: np.ndarray
    point: tuple[float, float]
    box: np.ndarray

    def same(self, mask: np.ndarray) -> bool:
        return self.mask is mask or (self.mask.shape == mask.shape and np.array_equal(self.mask, mask))


class ModelInputs(NamedTuple):
    """The prompts of one step as the model takes them, in the original image's pixels."""

    points: np.ndarray  #: (N, 2) clicks, (y, x)
    labels: np.ndarray  #: (N,) 1 positive, 0 negative
    box: np.ndarray | None  #: (y0, x0, y1, x1)
    mask_input: torch.Tensor | None  #: (1, 1, 256, 256) logits
    region: Region | None  #: the region prompt, for the next step's state


@dataclass(frozen=True)
class SamInputs:
    """The conversion of a predictor's prompts into model inputs (see the module docstring)."""

    transform: SamTransform | FocsamTransform | StretchTransform | MedsamTransform
    device: torch.device
    dtype: torch.dtype
    supports_boxes: bool
    mask_logit_scale: float = MASK_LOGIT_SCALE
    scribble_spacing: float = SCRIBBLE_SPACING
    scribble_points: int = SCRIBBLE_POINTS

    def model_inputs(self, prompts: Prompts, geometry: ImageGeometry, state: ObjectState) -> ModelInputs:
        """The clicks, labels, box and mask input for ``prompts`` after ``state``, and the region to remember."""
        points, labels = [], []
        box = prompts.box
        mask_input = state.logits
        region = None
        if prompts.mask is not None:
            mask = prompts.mask
            if tuple(mask.shape) != tuple(geometry.original_size):
                raise ValueError(f"the mask prompt is {mask.shape}, the image {tuple(geometry.original_size)}")
            region = state.extra if isinstance(state.extra, Region) and state.extra.same(mask) else None
            if region is None:  # set or changed at this step: its logits replace the previous ones
                region = Region(mask, deepest_point(mask), bounding_box(mask))
                mask_input = mask_to_low_res(mask, geometry, self.mask_logit_scale, device=self.device,
                                             dtype=self.dtype)
            points.append(np.array([region.point]))
            labels.append(np.ones(1, np.int64))
            if box is None and self.supports_boxes:
                box = region.box
        spacing = self.scribble_spacing * max(geometry.original_size)
        for scribble in prompts.scribbles:
            sampled = sample_stroke(scribble.points, spacing, self.scribble_points)
            points.append(sampled)
            labels.append(np.full(len(sampled), int(scribble.positive), np.int64))
        points.append(prompts.points)
        labels.append(prompts.labels)
        return ModelInputs(np.concatenate(points).reshape(-1, 2), np.concatenate(labels), box, mask_input, region)

    def encode(
        self, prompt_encoder: Any, inputs: Sequence[ModelInputs], geometry: ImageGeometry
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The sparse and dense prompt embeddings of a batch of prompt sets with as many clicks each and all or
        no box, on the mask input of the first (the sets of one batch share their state)."""
        coords = labels = boxes = None
        if len(inputs[0].points):
            xy = np.stack([self.transform.points_to_input(i.points, geometry) for i in inputs])
            coords = torch.as_tensor(xy, dtype=torch.float32, device=self.device)  # float32, as both official codes
            labels = torch.as_tensor(np.stack([i.labels for i in inputs]), device=self.device)
        if inputs[0].box is not None:
            corners = np.stack([self.transform.box_to_input(i.box, geometry) for i in inputs if i.box is not None])
            boxes = torch.as_tensor(corners, dtype=torch.float32, device=self.device)
        return encode_prompts(prompt_encoder, coords, labels, boxes, inputs[0].mask_input)
