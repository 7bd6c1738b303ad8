"""Checkpoint files: safe reading, layout detection, key mapping and clear errors.

These layouts are understood, all mapped onto :class:`~napari_focsam.models.sam.InteractiveModel`'s keys
(``image_encoder.``, ``prompt_encoder.``, ``mask_decoder.``, ``refiner.``):

* **SAM** (``sam_vit_{b,l,h}_*.pth``): a plain state dict with segment-anything's own keys.
* **FocSAM / mmseg** (``iter_160000.pth``): an mmengine checkpoint whose ``state_dict`` holds ``backbone.``,
  ``neck.`` (``pos_embed_layer``/``point_embeds`` for SAM's ``pe_layer``/``point_embeddings``), ``decode_head.``
  (the fine-tuned decoder) and ``refine_head.``; SAM files converted by FocSAM's converter have the same layout
  without ``refine_head.``.
* **napari-focsam** (``*.safetensors``): tensors only, already in our key layout (see :func:`save_lean`).
* **PA-SAM decoder** (``epoch_20.pth``): the mask decoder's state dict without any prefix (mapped under
  ``mask_decoder.``); its image and prompt encoder come from the SAM ViT-L file (see :func:`merge_base`). HQ-SAM's
  ``sam_hq_vit_*.pth`` are plain SAM-layout state dicts with the HQ decoder's extra keys.
* **micro-sam** (``vit_b.pt`` / ``vit_l.pt`` of the bioimage.io model zoo, and torch_em training checkpoints):
  either a plain SAM state dict, or ``{"model_state": <SAM state dict>, "decoder_state": <its UNETR decoder>}``
  whose SAM keys may carry the ``sam.`` prefix of micro-sam's trainable wrapper (stripped). The instance
  segmentation decoder (``decoder_state``) and training bookkeeping are not part of the interactive model and are
  left out; every SAM key must still fit exactly.
* **MedSAM** (``medsam_vit_b.pth``): a plain SAM ViT-B state dict (MedSAM's converter writes its weights under
  SAM's keys); its training checkpoints (``{"model": ...}``, ``module.``-prefixed with several GPUs) load too.

Nothing in a file is ever executed: see :mod:`.safe_pickle`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..models.specs import SPECS, ModelSpec
from .safe_pickle import UnsafeCheckpointError, load_restricted


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with a message that says why and what to do."""


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint that tries to run code; it was refused and nothing from it was executed."""


_OFFICIAL_PREFIXES = {
    "backbone.": "image_encoder.",
    "neck.": "prompt_encoder.",
    "decode_head.": "mask_decoder.",
    "refine_head.": "refiner.",
}
_NECK_RENAMES = (("pos_embed_layer.", "pe_layer."), ("point_embeds.", "point_embeddings."))
#: the prefix of the SAM keys in micro-sam's training checkpoints (its ``TrainableSAM`` wrapper's ``sam`` member)
_MICROSAM_PREFIX = "sam."
_OUR_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.", "refiner.")
LEAN_FORMAT = "napari-focsam"


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the tensors of a checkpoint file (any supported layout, keys as stored), safely."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        return _read_safetensors(path, size)
    try:
        obj = _torch_load(path)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpoint(f"{path} is UNSAFE: it tries to run code when loaded; refused ({exc})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as exc:
        raise CheckpointError(
            f"{path} ({size:,} bytes) is not a readable PyTorch checkpoint: it may be truncated or corrupt "
            f"(re-download it, or check it with `napari-focsam models verify`). Details: {exc}"
        ) from None
    return _extract_state_dict(obj, path)


def _torch_load(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError:
        # Not plain tensors: an mmengine training checkpoint (logging objects) or something hostile.
        return load_restricted(path)


def _read_safetensors(path: Path, size: int) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} ({size:,} bytes) is not a readable safetensors file: {exc}") from None


def _extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and isinstance(obj.get("model_state"), Mapping):  # micro-sam / torch_em
        obj = {k[len(_MICROSAM_PREFIX):] if k.startswith(_MICROSAM_PREFIX) else k: v
               for k, v in obj["model_state"].items()}
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a model state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors: it is not a model checkpoint")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def to_model_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map any supported layout onto :class:`InteractiveModel`'s keys (unknown keys are kept as they are)."""
    if _is_bare_decoder(state_dict):  # PA-SAM's epoch_N.pth: the mask decoder's state dict, no prefix
        return {"mask_decoder." + k: v for k, v in state_dict.items()}
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(_PA_MERGED_OLD_DECODER):  # PA-SAM's merged sam_pa_epoch_N.pth keeps SAM's old decoder
            continue
        new = key
        for official, ours in _OFFICIAL_PREFIXES.items():
            if key.startswith(official):
                new = ours + key[len(official):]
                if official == "neck.":
                    for old, replacement in _NECK_RENAMES:
                        if new.startswith("prompt_encoder." + old):
                            new = "prompt_encoder." + replacement + new[len("prompt_encoder." + old):]
                break
        mapped[new] = value
    return mapped


# ---- HQ-SAM and PA-SAM files (see docs/models.md) ----
#: the keys only HQ-SAM's / PA-SAM's decoders have (under ``mask_decoder.``)
HQ_DECODER_PARTS = ("hf_token.", "hf_mlp.", "compress_vit_feat.", "embedding_encoder.", "embedding_maskfeature.")
PA_DECODER_PARTS = ("guiding_conv.", "prompt_adapter.")
_DECODER_ROOTS = ("transformer.", "iou_token.", "mask_tokens.", "output_upscaling.", "output_hypernetworks_mlps.",
                  "iou_prediction_head.", *HQ_DECODER_PARTS, *PA_DECODER_PARTS)
_PA_MERGED_OLD_DECODER = "mask_decoder_ori."


def _is_bare_decoder(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether every key is a mask-decoder key without prefix (PA-SAM's ``epoch_N.pth`` layout)."""
    return bool(state_dict) and all(k.startswith(_DECODER_ROOTS) for k in state_dict)


def decoder_kind(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Which decoder a (mapped) state dict holds: "hq", "pa", "sam" or "" (none)."""
    decoder = [k[len("mask_decoder."):] for k in state_dict if k.startswith("mask_decoder.")]
    if any(k.startswith(HQ_DECODER_PARTS) for k in decoder):
        return "hq"
    if any(k.startswith(PA_DECODER_PARTS) for k in decoder):
        return "pa"
    return "sam" if decoder else ""


def is_decoder_only(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether a (mapped) state dict holds a mask decoder and nothing else (no image or prompt encoder)."""
    return bool(state_dict) and all(k.startswith("mask_decoder.") for k in state_dict)


def _describe_partial(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """A description of HQ/PA/decoder-only files that match no spec exactly (e.g. with keys missing)."""
    kind = decoder_kind(state_dict)
    names = {"hq": "an HQ-SAM", "pa": "a PA-SAM", "sam": "a SAM"}
    if is_decoder_only(state_dict):
        what = f"{names.get(kind, 'a')} mask decoder alone (no image encoder, no prompt encoder"
        return what + ("; PA-SAM's epoch_N.pth layout)" if kind == "pa" else ")")
    if kind in ("hq", "pa"):
        pos = state_dict.get("image_encoder.pos_embed")
        width = f" with an encoder of width {pos.shape[-1]}" if pos is not None else ""
        return f"{names[kind]} model{width}, but not a complete one of any known size"
    return None


def _missing_parts(spec: ModelSpec, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """HQ-SAM's / PA-SAM's decoder parts that are absent or incomplete in a (mapped) state dict."""
    parts = HQ_DECODER_PARTS if spec.decoder == "hq" else PA_DECODER_PARTS if spec.decoder == "pa" else ()
    expected = _expected_shapes(spec)
    return [p.rstrip(".") for p in parts
            if any(k.startswith("mask_decoder." + p) and k not in state_dict for k in expected)]


def _decoder_hint(spec: ModelSpec, state_dict: Mapping[str, torch.Tensor], decoder_only: bool) -> str | None:
    """What to do when the decoder in a file is not the one ``spec`` needs (HQ/PA/SAM mix-ups, missing parts)."""
    kind = decoder_kind(state_dict)
    if kind and kind != spec.decoder:
        names = {"hq": "HQ-SAM (sam_hq_vit_b/l/h)", "pa": "PA-SAM (pa_sam_vit_l)", "sam": "SAM or FocSAM"}
        return (f"Its mask decoder is {names[kind]}'s, but {spec.name} needs "
                f"{names.get(spec.decoder, spec.decoder)}'s: pick the model that matches the file.")
    missing = _missing_parts(spec, state_dict) if kind == spec.decoder else []
    if missing:
        return (f"Its {spec.display_name} decoder is incomplete ({', '.join(missing)} missing or partial): the file "
                "is truncated, from another version, or a training snapshot; download the official file again.")
    if spec.decoder == "pa" and kind == "pa" and is_decoder_only(state_dict) and not decoder_only:
        return ("This is PA-SAM's decoder file on its own: PA-SAM also needs SAM ViT-L's image and prompt encoder. "
                "Load it with its SAM checkpoint: ModelManager.load('pa_sam_vit_l', checkpoint=<epoch_20.pth>, "
                "base_checkpoint=<sam_vit_l_0b3195.pth>), or put epoch_20.pth in the models folder (the SAM ViT-L "
                "file is downloaded or found there).")
    return None


def describe_weights(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A short human description of what a (mapped) state dict looks like, e.g. ``'SAM ViT-L (sam_vit_l)'``."""
    match = best_matching_spec(state_dict)
    if match is not None:
        return f"{match.display_name} ({match.name})"
    if any(k.startswith("visual_prompts_encoder.") for k in state_dict):
        return "a SegNext checkpoint (segnext_vitb_sa1 / segnext_vitb_sa2 / segnext_vitb_sa2_hq)"
    partial = _describe_partial(state_dict)
    if partial is not None:
        return partial
    parts = sorted({k.split(".")[0] for k in state_dict})
    pos = state_dict.get("image_encoder.pos_embed")
    width = f", encoder width {pos.shape[-1]}" if pos is not None else ""
    depth = len({m.group(1) for k in state_dict if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))})
    blocks = f", {depth} encoder blocks" if depth else ""
    return f"an unknown model (parts: {', '.join(parts)}{width}{blocks})"


def best_matching_spec(state_dict: Mapping[str, torch.Tensor]) -> ModelSpec | None:
    """The registered spec whose architecture exactly fits the (mapped) keys and shapes, if any."""
    for spec in SPECS.values():
        expected = _expected_shapes(spec)
        if set(expected) == set(state_dict) and all(
            tuple(state_dict[k].shape) == shape for k, shape in expected.items()
        ):
            return spec
    return None


_SHAPE_CACHE: dict[str, dict[str, tuple[int, ...]]] = {}


def _expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    if spec.name not in _SHAPE_CACHE:
        from ..models.sam import InteractiveModel

        with torch.device("meta"):
            model = InteractiveModel(spec)
        _SHAPE_CACHE[spec.name] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _SHAPE_CACHE[spec.name]


def check_compatible(spec: ModelSpec, state_dict: Mapping[str, torch.Tensor], source: str, *,
                     decoder_only: bool = False) -> None:
    """Raise a :class:`CheckpointError` naming missing/unexpected keys and shape mismatches, and what the file
    looks like, unless ``state_dict`` (mapped) fits ``spec`` exactly.

    ``decoder_only``: a file holding only the mask decoder (PA-SAM's ``epoch_20.pth``) is accepted when its decoder
    fits ``spec`` exactly (its encoder comes from another file).
    """
    expected = _expected_shapes(spec)
    if decoder_only and is_decoder_only(state_dict):
        expected = {k: v for k, v in expected.items() if k.startswith("mask_decoder.")}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {expected[k]}"
        for k in sorted(set(expected) & set(state_dict), key=lambda k: (k.count("."), k))  # top-level keys first
        if tuple(state_dict[k].shape) != expected[k]
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{source} does not fit {spec.display_name} ({spec.name}); the file looks like "
             f"{describe_weights(state_dict)}."]
    match = best_matching_spec(state_dict)
    if match is not None and match.name != spec.name:
        lines.append(f"Load it as {match.name!r} instead.")
    elif any(k.startswith("visual_prompts_encoder.") for k in state_dict):
        lines.append("SegNext is its own model, not a SAM: load it as 'segnext_vitb_sa2' ('segnext_vitb_sa1' for "
                     "the one-fusion-block file, 'segnext_vitb_sa2_hq' for the HQSeg-44K one).")
    else:
        hint = _decoder_hint(spec, state_dict, decoder_only)
        if hint:
            lines.append(hint)
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            shown = ", ".join(items[:5]) + (f", … ({len(items) - 5} more)" if len(items) > 5 else "")
            lines.append(f"{len(items)} {title}: {shown}")
    raise CheckpointError("\n".join(lines))


def weights_fingerprint(state_dict: Mapping[str, torch.Tensor], sample: int = 4096) -> str:
    """A fast identifier of a set of weights: names, shapes, dtypes and an evenly spaced sample of each tensor.

    Used in embedding cache keys; reading every byte of a 2.5 GB model would cost seconds for no practical gain.
    """
    digest = hashlib.blake2b(digest_size=16)
    for key in sorted(state_dict):
        tensor = state_dict[key].detach()
        digest.update(f"{key}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        flat = tensor.reshape(-1)
        if flat.numel() > sample:
            flat = flat[:: max(1, flat.numel() // sample)][:sample]
        values = flat.to("cpu", torch.float64).numpy()
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def save_lean(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, model_name: str) -> Path:
    """Write weights as a tensors-only safetensors file in our key layout (loads fast, nothing to unpickle)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in to_model_keys(state_dict).items()}
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata={"format": LEAN_FORMAT, "model": model_name})
    os.replace(tmp, path)
    return path


def merge_base(decoder_state: Mapping[str, torch.Tensor], base_state: Mapping[str, torch.Tensor]
               ) -> dict[str, torch.Tensor]:
    """A decoder-only state (PA-SAM) completed with the image and prompt encoder of a SAM checkpoint (both mapped).

    The base file's own mask decoder is dropped: the decoder file holds the whole decoder.
    """
    merged = {k: v for k, v in base_state.items() if k.startswith(("image_encoder.", "prompt_encoder."))}
    merged.update(decoder_state)
    return merged
