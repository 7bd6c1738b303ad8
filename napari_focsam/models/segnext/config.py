"""The architecture of a SegNext checkpoint, read from the ``config`` record the official training code stores.

An official SegNext file (``vitb_sa{1,2}_cocolvis_*.pth``) holds ``{"state_dict": ..., "config": ...}``; the config
is a serialised constructor call of the plain-ViT interactive model, ``{"class": "...PlainVitModel", "params":
{name: {"type", "value", "specified"}}}``. :func:`parse_config` turns it into a :class:`SegNextConfig` and refuses,
with a message that names the field, every value this implementation does not reproduce: nothing in the record is
executed or imported, it is read as plain data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..checkpoint import CheckpointError

#: the class name the official serialiser records for the plain-ViT model (the last dotted part is compared)
MODEL_CLASS = "PlainVitModel"


class SegNextConfigError(CheckpointError):
    """A SegNext config this implementation does not know; the message names the field and the supported values."""


@dataclass(frozen=True)
class SegNextConfig:
    """What differs between SegNext checkpoints. Everything else is fixed (see :mod:`.network`)."""

    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    global_atten_freq: int = 3
    fusion_depth: int = 2
    neck_dims: tuple[int, ...] = (128, 256, 512, 1024)
    head_channels: int = 256
    norm_radius: int = 5
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def grid(self) -> int:
        """Tokens per side of the image and prompt feature maps (64 at 1024 px)."""
        return self.img_size // self.patch_size

    @property
    def window(self) -> int:
        """Tokens per side of a windowed-attention window.

        The official split asks for 224-px windows: it divides the grid into ``grid // (224 // patch)`` windows per
        side and then makes each ``grid // that`` tokens wide, i.e. a 4 × 4 grid of 16 × 16-token windows at 1024.
        """
        per_side = max(1, self.grid // (224 // self.patch_size))
        return self.grid // per_side

    def is_global(self, index: int) -> bool:
        """Whether backbone block ``index`` (0-based) attends globally: 1-based multiples of the frequency, and the
        last block."""
        return (index + 1) % self.global_atten_freq == 0 or index + 1 == self.depth


SA2 = SegNextConfig(fusion_depth=2)
SA1 = SegNextConfig(fusion_depth=1)


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
