"""SegNext's checkpoints: the named models, safe and strict loading of the official layout, clear refusals.

An official file (``vitb_sa1_cocolvis_epoch_90.pth``, ``vitb_sa2_cocolvis_epoch_90.pth``,
``vitb_sa2_cocolvis_hq44k_epoch_0.pth``) is ``{"state_dict": {...}, "config": {...}}``: it is read without
executing anything (plain tensors and builtins; anything else goes through the restricted unpickler of
:mod:`..safe_pickle`), its ``config`` is parsed (:func:`.config.parse_config`) and must describe the model that was
asked for, and its tensors must match that model's keys and shapes exactly before they are loaded (``strict``).
A lean safetensors copy (tensors only) is accepted too; its architecture is then read from its keys.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import CheckpointError, UnsafeCheckpoint, weights_fingerprint
from .config import SA1, SA2, SegNextConfig, SegNextConfigError, parse_config
from .network import SegNextNet


@dataclass(frozen=True)
class SegNextModelInfo:
    name: str
    display_name: str
    config: SegNextConfig
    file_name: str | None


#: the named SegNext models (the tiny one has random weights only, for tests)
SEGNEXT_MODELS: dict[str, SegNextModelInfo] = {
    info.name: info for info in (
        SegNextModelInfo("segnext_vitb_sa1", "SegNext ViT-B SA×1 (COCO+LVIS)", SA1, "vitb_sa1_cocolvis_epoch_90.pth"),
        SegNextModelInfo("segnext_vitb_sa2", "SegNext ViT-B SA×2 (COCO+LVIS)", SA2, "vitb_sa2_cocolvis_epoch_90.pth"),
        SegNextModelInfo("segnext_vitb_sa2_hq", "SegNext ViT-B SA×2 (HQSeg-44K)", SA2,
                         "vitb_sa2_cocolvis_hq44k_epoch_0.pth"),
        SegNextModelInfo("segnext_tiny", "SegNext tiny (random weights, for tests)",
                         SegNextConfig(embed_dim=64, depth=3, num_heads=2, fusion_depth=1,
                                       neck_dims=(16, 32, 64, 128), head_channels=32), None),
    )
}

#: a key only SegNext checkpoints have
MARKER_KEY = "visual_prompts_encoder.proj.weight"


def describe_config(cfg: SegNextConfig) -> str:
    return (f"width {cfg.embed_dim}, {cfg.depth} encoder blocks, fusion depth {cfg.fusion_depth}, "
            f"input {cfg.img_size}")


def _wrong_kind(path: Path, cfg: SegNextConfig, name: str) -> CheckpointError:
    other = [n for n, i in SEGNEXT_MODELS.items() if i.config == cfg and i.file_name]
    hint = f" Load it as {' or '.join(repr(n) for n in other)} instead." if other else ""
    return CheckpointError(f"{path} is a SegNext checkpoint ({describe_config(cfg)}), but {name} is "
                           f"{describe_config(get_info(name).config)}.{hint}")


def is_segnext(name: str) -> bool:
    return name in SEGNEXT_MODELS


def looks_like_segnext(state: Mapping[str, object]) -> bool:
    """Whether a state dict (keys as stored) is SegNext's."""
    keys = set(state)
    return MARKER_KEY in keys or any(k.startswith("module." + MARKER_KEY) for k in keys)


def get_info(name: str) -> SegNextModelInfo:
    try:
        return SEGNEXT_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown SegNext model {name!r}; known: {', '.join(SEGNEXT_MODELS)}") from None


def read_segnext(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], object | None]:
    """The tensors and the ``config`` record (None for a tensors-only file) of a checkpoint file, read safely."""
    from ..checkpoint import _read_safetensors, _torch_load  # the one safe reader of the package
    from ..safe_pickle import UnsafeCheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    size = path.stat().st_size
    if path.suffix == ".safetensors":
        return _read_safetensors(path, size), None
    try:
        obj = _torch_load(path)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpoint(f"{path} is UNSAFE: it tries to run code when loaded; refused ({exc})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{path} ({size:,} bytes) is not a readable PyTorch checkpoint: it may be truncated "
                              f"or corrupt (download it again). Details: {exc}") from None
    config = None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        config = obj.get("config")
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a model state dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, config


def config_from_keys(state: Mapping[str, torch.Tensor]) -> SegNextConfig:
    """The architecture of a tensors-only SegNext state dict (ViT-B layouts)."""
    fusion = {m.group(1) for k in state if (m := re.match(r"fusion_blocks\.(\d+)\.", k))}
    return SA1 if len(fusion) == 1 else SA2


def _expected(cfg: SegNextConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        net = SegNextNet(cfg)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def check_segnext_state(cfg: SegNextConfig, state: Mapping[str, torch.Tensor], source: str, name: str) -> None:
    """Raise a :class:`CheckpointError` listing missing / unexpected keys and shape mismatches."""
    expected = _expected(cfg)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {expected[k]}"
                  for k in sorted(set(expected) & set(state)) if tuple(state[k].shape) != expected[k]]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{source} does not fit {name}: it is not a complete SegNext ViT-B checkpoint of this kind."]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if items:
            shown = ", ".join(items[:5]) + (f", … ({len(items) - 5} more)" if len(items) > 5 else "")
            lines.append(f"{len(items)} {title}: {shown}")
    raise CheckpointError("\n".join(lines))


@dataclass
class LoadedSegNext:
    model: SegNextNet
    info: SegNextModelInfo
    weights_id: str
    source: str


def _not_segnext(path: Path, state: Mapping[str, torch.Tensor], name: str) -> CheckpointError:
    from ..checkpoint import describe_weights, to_model_keys

    try:
        what = describe_weights(to_model_keys(state))
    except Exception:  # noqa: BLE001 - only for the message
        what = "an unknown model"
    return CheckpointError(f"{path} is not a SegNext checkpoint (it looks like {what}), so it cannot be loaded as "
                           f"{name}. Load a SAM-family file with its own model name (e.g. 'sam_vit_b'), and give "
                           f"{name} its official file {get_info(name).file_name or ''}".rstrip() + ".")


def load_segnext(name: str, checkpoint: str | os.PathLike | None = None, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> LoadedSegNext:
    """Build SegNext model ``name`` and load ``checkpoint`` into it strictly (None: seeded random weights)."""
    info = get_info(name)
    device = torch.device(device)
    if checkpoint is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SegNextNet(info.config)
        state = model.state_dict()
        source = f"random weights (seed {seed})"
    else:
        path = Path(checkpoint)
        state, record = read_segnext(path)
        if not looks_like_segnext(state):
            raise _not_segnext(path, state, name)
        if record is not None:
            try:
                cfg = parse_config(record)
            except SegNextConfigError as exc:
                raise SegNextConfigError(f"{path}: {exc}") from None
        else:
            cfg = config_from_keys(state)
        if cfg != info.config:
            raise _wrong_kind(path, cfg, name)
        source = str(path)
        check_segnext_state(cfg, state, source, name)
        with torch.device("meta"):
            model = SegNextNet(cfg)
        model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    weights_id = weights_fingerprint(state)
    model = model.to(device=device, dtype=dtype)
    for param in model.parameters():
        param.requires_grad_(False)
    return LoadedSegNext(model=model, info=info, weights_id=weights_id, source=source)


def check_segnext_file(path: str | os.PathLike, name: str) -> str:
    """Raise :class:`CheckpointError` unless the file is a complete checkpoint of SegNext model ``name`` (its config
    and every key and shape); return what it is."""
    info = get_info(name)
    path = Path(path)
    state, record = read_segnext(path)
    if not looks_like_segnext(state):
        raise _not_segnext(path, state, name)
    cfg = parse_config(record) if record is not None else config_from_keys(state)
    if cfg != info.config:
        raise _wrong_kind(path, cfg, name)
    check_segnext_state(cfg, state, str(path), name)
    return f"SegNext ViT-B SA×{cfg.fusion_depth} ({name})"
