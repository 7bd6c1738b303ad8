"""Build a named model and fill it with weights: an official checkpoint, a lean file, or seeded random weights."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.sam import InteractiveModel, build_model
from ..models.specs import ModelSpec, get_spec
from .checkpoint import (
    CheckpointError,
    check_compatible,
    is_decoder_only,
    merge_base,
    read_checkpoint,
    to_model_keys,
    weights_fingerprint,
)


@dataclass
class LoadedModel:
    model: InteractiveModel
    spec: ModelSpec
    #: identifies the weights (see :func:`weights_fingerprint`); part of every embedding cache key
    weights_id: str
    #: where the weights came from: a file path, or "random weights (seed N)"
    source: str


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) picks cuda, then mps, then cpu; anything else must be available or it is an error."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but CUDA is not available here (use 'cpu' or 'auto')")
    if resolved.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r} was asked for, but MPS is not available here (use 'cpu' or 'auto')")
    return resolved


def load_model(
    spec: ModelSpec | str,
    checkpoint: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    base_checkpoint: str | os.PathLike | Callable[[], str | os.PathLike | None] | None = None,
) -> LoadedModel:
    """Build ``spec`` and load ``checkpoint`` into it strictly; without a checkpoint, seeded random weights.

    ``base_checkpoint``: for a decoder-only file (PA-SAM's ``epoch_20.pth``), the SAM checkpoint whose image and
    prompt encoder complete it (a path, or a callable returning one, called only when it is needed).
    Raises :class:`~napari_focsam.weights.checkpoint.CheckpointError` with a message naming the problem.
    """
    spec = get_spec(spec) if isinstance(spec, str) else spec
    device = resolve_device(device)
    if checkpoint is None:
        model = build_model(spec, seed=seed)
        source = f"random weights (seed {seed})"
        state = model.state_dict()
    else:
        path = Path(checkpoint)
        state = to_model_keys(read_checkpoint(path))
        source = str(path)
        if spec.decoder == "pa" and is_decoder_only(state):
            check_compatible(spec, state, source, decoder_only=True)
            base = base_checkpoint() if callable(base_checkpoint) else base_checkpoint
            if base is None:
                check_compatible(spec, state, source)  # raises, saying what the file is and what to do
                raise CheckpointError(f"{source} holds a mask decoder only: it needs its base model's checkpoint")
            base_state = to_model_keys(read_checkpoint(Path(base)))
            if is_decoder_only(base_state):
                raise CheckpointError(f"{base} holds a mask decoder only: the base checkpoint must be SAM ViT-L's "
                                      "full file (sam_vit_l_0b3195.pth), which has the image and prompt encoder")
            state = merge_base(state, base_state)
            source = f"{path} + encoders of {base}"
        check_compatible(spec, state, source)
        with torch.device("meta"):
            model = InteractiveModel(spec)
        model.load_state_dict(state, strict=True, assign=True)
        model.eval()
        unset = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
        if unset:
            raise RuntimeError(f"internal error: {len(unset)} tensors were not loaded, e.g. {unset[:3]}")
    weights_id = weights_fingerprint(state)
    model = model.to(device=device, dtype=dtype)
    for param in model.parameters():
        param.requires_grad_(False)
    return LoadedModel(model=model, spec=spec, weights_id=weights_id, source=source)
