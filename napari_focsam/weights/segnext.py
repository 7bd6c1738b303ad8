"""SegNext's checkpoints: the named models, safe and strict loading of the official layout, clear refusals.

An official file (``vitb_sa1_cocolvis_epoch_90.pth``, ``vitb_sa2_cocolvis_epoch_90.pth``,
``vitb_sa2_cocolvis_hq44k_epoch_0.pth``) is ``{"state_dict": {...}, "config": {...}}``: it is read without
executing anything (plain tensors and builtins; anything else goes through the restricted unpickler of
:mod:`.safe_pickle`), its ``config`` is parsed (:func:`parse_config`) and must describe the model that was
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
from typing import Any

import torch

from ..models.segnext.config import SA1, SA2, SegNextConfig
from ..models.segnext.network import SegNextNet
from .checkpoint import CheckpointError, UnsafeCheckpoint, weights_fingerprint

# ---------------------------------------------------------------------------------------------- the config record
# An official file holds ``{"state_dict": ..., "config": ...}``; the config is a serialised constructor call of the
# plain-ViT interactive model, ``{"class": "...PlainVitModel", "params": {name: {"type", "value", "specified"}}}``.
# It is read as plain data (nothing in it is executed or imported); every value this implementation does not
# reproduce is refused with a message that names the field.

#: the class name the official serialiser records for the plain-ViT model (the last dotted part is compared)
MODEL_CLASS = "PlainVitModel"


class SegNextConfigError(CheckpointError):
    """A SegNext config this implementation does not know; the message names the field and the supported values."""


def _value(params: Mapping[str, Any], name: str, default: Any = None) -> Any:
    item = params.get(name)
    if item is None:
        return default
    if isinstance(item, Mapping) and "value" in item:
        return item["value"]
    return item


def _expect(field: str, got: Any, allowed: Any) -> None:
    if got != allowed:
        raise SegNextConfigError(f"SegNext config: {field} = {got!r} is not supported (this implementation "
                                 f"reproduces {allowed!r}, as in the published ViT-B checkpoints)")


def parse_config(config: Any) -> SegNextConfig:
    """The :class:`SegNextConfig` of an official ``config`` record; :class:`SegNextConfigError` for anything else."""
    if not isinstance(config, Mapping) or "params" not in config or not isinstance(config["params"], Mapping):
        raise SegNextConfigError(f"not a SegNext config record (expected {{'class': ..., 'params': {{...}}}}, got "
                                 f"{type(config).__name__})")
    cls = str(config.get("class", ""))
    if cls.rsplit(".", 1)[-1] != MODEL_CLASS:
        raise SegNextConfigError(f"SegNext config names the model class {cls!r}; only {MODEL_CLASS} (the plain-ViT "
                                 "model of the published checkpoints) is supported")
    params = config["params"]
    known = {"backbone_params", "neck_params", "head_params", "fusion_params", "use_disks", "norm_radius",
             "cpu_dist_maps", "norm_mean_std", "with_prev_mask", "binary_prev_mask", "with_aux_output",
             "random_split"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise SegNextConfigError(f"SegNext config has parameters this implementation does not know: {unknown}")
    backbone = _value(params, "backbone_params", {}) or {}
    neck = _value(params, "neck_params", {}) or {}
    head = _value(params, "head_params", {}) or {}
    fusion = _value(params, "fusion_params", {}) or {}
    size = backbone.get("img_size", (1024, 1024))
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    patch = backbone.get("patch_size", (16, 16))
    patch = tuple(patch) if isinstance(patch, (list, tuple)) else (patch, patch)
    if size[0] != size[1] or patch[0] != patch[1]:
        raise SegNextConfigError(f"SegNext config: img_size {size} / patch_size {patch} must be square")
    _expect("backbone in_chans", backbone.get("in_chans", 3), 3)
    _expect("backbone qkv_bias", backbone.get("qkv_bias", True), True)
    _expect("use_disks", _value(params, "use_disks", True), True)
    _expect("with_prev_mask", _value(params, "with_prev_mask", True), True)
    _expect("binary_prev_mask", _value(params, "binary_prev_mask", False), False)
    _expect("fusion type", fusion.get("type"), "self_attention")
    fparams = fusion.get("params", {}) or {}
    embed = int(backbone.get("embed_dim", 768))
    _expect("fusion dim", fparams.get("dim", embed), embed)
    _expect("fusion num_heads", fparams.get("num_heads", backbone.get("num_heads", 12)),
            backbone.get("num_heads", 12))
    _expect("fusion mlp_ratio", float(fparams.get("mlp_ratio", 4)), float(backbone.get("mlp_ratio", 4)))
    _expect("fusion qkv_bias", fparams.get("qkv_bias", True), True)
    _expect("neck in_dim", neck.get("in_dim", embed), embed)
    dims = tuple(int(d) for d in neck.get("out_dims", (128, 256, 512, 1024)))
    _expect("neck out_dims count", len(dims), 4)
    _expect("head in_channels", tuple(head.get("in_channels", dims)), dims)
    _expect("head in_select_index", tuple(head.get("in_select_index", (0, 1, 2, 3))), (0, 1, 2, 3))
    _expect("head num_classes", head.get("num_classes", 1), 1)
    depth = int(fusion.get("depth", 2))
    if depth < 1:
        raise SegNextConfigError(f"SegNext config: fusion depth {depth} must be at least 1")
    mean_std = _value(params, "norm_mean_std", ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    mean, std = (tuple(float(v) for v in row) for row in mean_std)
    return SegNextConfig(
        img_size=int(size[0]), patch_size=int(patch[0]), embed_dim=embed, depth=int(backbone.get("depth", 12)),
        num_heads=int(backbone.get("num_heads", 12)), mlp_ratio=float(backbone.get("mlp_ratio", 4)),
        global_atten_freq=int(backbone.get("global_atten_freq", 3)), fusion_depth=depth, neck_dims=dims,
        head_channels=int(head.get("out_channels", 256)), norm_radius=int(_value(params, "norm_radius", 5)),
        mean=mean, std=std,  # type: ignore[arg-type]
    )


def official_config(cfg: SegNextConfig) -> dict[str, Any]:
    """The official ``config`` record of ``cfg`` (for writing checkpoints in the official layout, e.g. in tests)."""

    def item(value: Any, specified: bool = True) -> dict[str, Any]:
        return {"type": "builtin", "value": value, "specified": specified}

    return {"class": "isegm.model.is_plainvit_model.PlainVitModel", "params": {
        "backbone_params": item({"img_size": [cfg.img_size] * 2, "patch_size": [cfg.patch_size] * 2, "in_chans": 3,
                                 "embed_dim": cfg.embed_dim, "depth": cfg.depth,
                                 "global_atten_freq": cfg.global_atten_freq, "num_heads": cfg.num_heads,
                                 "mlp_ratio": int(cfg.mlp_ratio), "qkv_bias": True}),
        "neck_params": item({"in_dim": cfg.embed_dim, "out_dims": list(cfg.neck_dims)}),
        "head_params": item({"in_channels": list(cfg.neck_dims), "in_select_index": [0, 1, 2, 3],
                             "dropout_ratio": 0.1, "num_classes": 1, "out_channels": cfg.head_channels}),
        "fusion_params": item({"type": "self_attention", "depth": cfg.fusion_depth,
                               "params": {"dim": cfg.embed_dim, "num_heads": cfg.num_heads,
                                          "mlp_ratio": int(cfg.mlp_ratio), "qkv_bias": True}}),
        "use_disks": item(True), "norm_radius": item(cfg.norm_radius), "cpu_dist_maps": item(False, False),
        "norm_mean_std": item([list(cfg.mean), list(cfg.std)], False),
    }}


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
    from .checkpoint import _read_safetensors, _torch_load  # the one safe reader of the package
    from .safe_pickle import UnsafeCheckpointError

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
    from .checkpoint import describe_weights, to_model_keys

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
