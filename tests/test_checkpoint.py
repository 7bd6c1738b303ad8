"""Checkpoint files: official layouts written by the tests, safe unpickling, clear errors."""

from __future__ import annotations

import os
import pickle
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import sam_model_registry

from napari_focsam.models.sam import InteractiveModel, build_model
from napari_focsam.models.specs import get_spec
from napari_focsam.weights.checkpoint import (
    CheckpointError,
    UnsafeCheckpoint,
    best_matching_spec,
    check_compatible,
    read_checkpoint,
    save_lean,
    to_model_keys,
    weights_fingerprint,
)
from napari_focsam.weights.loader import load_model

OURS_TO_OFFICIAL = {"image_encoder.": "backbone.", "prompt_encoder.": "neck.", "mask_decoder.": "decode_head.",
                    "refiner.": "refine_head."}


def official_focsam_keys(state_dict: dict[str, torch.Tensor]) -> OrderedDict:
    """Our keys → the official FocSAM (mmseg) names, written independently of the loader's mapping."""
    out = OrderedDict()
    for key, value in state_dict.items():
        for ours, official in OURS_TO_OFFICIAL.items():
            if key.startswith(ours):
                rest = key[len(ours):]
                if ours == "prompt_encoder.":
                    rest = rest.replace("pe_layer.", "pos_embed_layer.").replace("point_embeddings.", "point_embeds.")
                out[official + rest] = value
    return out


def _meta_state_dict(name: str) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return InteractiveModel(get_spec(name)).state_dict()


@pytest.mark.parametrize("name,registry", [("sam_vit_b", "vit_b"), ("sam_vit_l", "vit_l"), ("sam_vit_h", "vit_h")])
def test_real_sam_architectures_have_the_official_keys(name, registry):
    with torch.device("meta"):
        reference = sam_model_registry[registry]().state_dict()
    ours = _meta_state_dict(name)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in reference.items()}


def test_focsam_vit_h_has_the_official_key_layout(golden_keys):
    official = official_focsam_keys(_meta_state_dict("focsam_vit_h"))
    counts = {p: sum(k.startswith(p) for k in official) for p in ("backbone.", "neck.", "decode_head.", "refine_head.")}
    assert counts == {"backbone.": 457, "neck.": 17, "decode_head.": 120, "refine_head.": 662}
    for section, prefix in (("refiner", "refine_head."), ("decoder", "decode_head."), ("prompt_encoder", "neck.")):
        expected = {prefix + k: tuple(v) for k, v in golden_keys[section].items()}
        ours = {k: tuple(v.shape) for k, v in official.items() if k.startswith(prefix)}
        assert ours == expected
    assert tuple(official["backbone.blocks.0.attn.rel_pos_h"].shape) == (27, 80)
    assert tuple(official["backbone.blocks.7.attn.rel_pos_h"].shape) == (127, 80)
    assert best_matching_spec(to_model_keys(official)).name == "focsam_vit_h"


def test_focsam_encoder_uses_layer_norm_eps_1e5_and_sam_1e6():
    focsam = InteractiveModel(get_spec("focsam_tiny"))
    sam = InteractiveModel(get_spec("sam_tiny"))
    assert focsam.image_encoder.blocks[0].norm1.eps == 1e-5
    assert sam.image_encoder.blocks[0].norm1.eps == 1e-6


def _assert_same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_official_sam_layout_loads_strictly(tmp_path):
    state = build_model(get_spec("sam_tiny"), seed=3).state_dict()
    path = tmp_path / "sam_tiny.pth"
    torch.save(state, path)  # the official SAM files are exactly this: torch.save(sam.state_dict())
    loaded = load_model("sam_tiny", path)
    _assert_same_weights(loaded.model, state)
    assert loaded.source == str(path)


class HistoryBuffer:
    """Stands for mmengine.logging.HistoryBuffer while the test writes an mmengine-style file."""

    def __init__(self) -> None:
        self._log_history = np.arange(5, dtype=np.float64)
        self._count_history = np.ones(5)
        self.max_length = 1000000


def _write_mmengine_checkpoint(path: Path, state: dict[str, torch.Tensor], extra: dict | None = None) -> None:
    """Write a checkpoint the way mmengine's CheckpointHook does (meta, state_dict, message_hub, optimizer)."""
    module = types.ModuleType("mmengine.logging.history_buffer")
    HistoryBuffer.__module__ = module.__name__
    module.HistoryBuffer = HistoryBuffer
    saved = {name: sys.modules.get(name) for name in ("mmengine", "mmengine.logging", module.__name__)}
    sys.modules.update({"mmengine": types.ModuleType("mmengine"),
                        "mmengine.logging": types.ModuleType("mmengine.logging"), module.__name__: module})
    try:
        checkpoint = {
            "meta": {"epoch": 0, "iter": 160000, "seed": 42, "mmengine_version": "0.9.0",
                     "dataset_meta": None, "cfg": "model = dict(type='ClickMixSegmentorRefine')"},
            "state_dict": official_focsam_keys(state),
            "message_hub": {"log_scalars": {"train/loss": HistoryBuffer()}, "runtime_info": {"iter": 160000},
                            "resumed_keys": {"iter": True}},
            "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-4}]},
            "param_schedulers": [{"last_step": 160000}],
            **(extra or {}),
        }
        torch.save(checkpoint, path)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    assert "mmengine.logging.history_buffer" not in sys.modules


def test_official_focsam_mmengine_file_loads_strictly_without_mmengine(tmp_path):
    state = build_model(get_spec("focsam_tiny"), seed=4).state_dict()
    path = tmp_path / "iter_160000.pth"
    _write_mmengine_checkpoint(path, state)
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only loading refuses the logging objects
        torch.load(path, weights_only=True)
    loaded = load_model("focsam_tiny", path)
    _assert_same_weights(loaded.model, state)


class _Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


@pytest.mark.parametrize("payload", ["system", "eval", "raw-pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    state = official_focsam_keys(build_model(get_spec("focsam_tiny"), seed=0).state_dict())
    if payload == "system":
        torch.save({"state_dict": state, "meta": _Evil(f"touch {marker}")}, path)
    elif payload == "eval":
        torch.save({"state_dict": state, "meta": _EvalEvil()}, path)
    else:
        path.write_bytes(pickle.dumps({"state_dict": {}, "x": _Evil(f"touch {marker}")}))
    with pytest.raises(UnsafeCheckpoint, match="refus"):
        load_model("focsam_tiny", path)
    assert not marker.exists()


def test_missing_truncated_and_empty_files_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="directory"):
        read_checkpoint(tmp_path)
    path = tmp_path / "sam.pth"
    torch.save(build_model(get_spec("sam_tiny"), seed=0).state_dict(), path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(truncated)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(empty)
    no_tensors = tmp_path / "dict.pth"
    torch.save({"a": 1}, no_tensors)
    with pytest.raises(CheckpointError, match="no tensors"):
        read_checkpoint(no_tensors)


def test_wrong_architecture_names_keys_and_what_the_file_looks_like(tmp_path):
    path = tmp_path / "sam_tiny.pth"
    torch.save(build_model(get_spec("sam_tiny"), seed=0).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_model("focsam_tiny", path)
    message = str(info.value)
    assert "looks like SAM tiny" in message and "Load it as 'sam_tiny'" in message
    assert "missing keys: refiner." in message

    vit_b = _meta_state_dict("sam_vit_b")
    with pytest.raises(CheckpointError) as info:
        check_compatible(get_spec("sam_vit_l"), vit_b, "sam_vit_b_01ec64.pth")
    message = str(info.value)
    assert "SAM ViT-B (sam_vit_b)" in message and "shape mismatches" in message
    assert "image_encoder.pos_embed: file (1, 64, 64, 768) vs model (1, 64, 64, 1024)" in message


def test_lean_safetensors_round_trip(tmp_path):
    state = build_model(get_spec("focsam_tiny"), seed=5).state_dict()
    official = tmp_path / "iter_160000.pth"
    _write_mmengine_checkpoint(official, state)
    lean = save_lean(read_checkpoint(official), tmp_path / "focsam_tiny.safetensors", "focsam_tiny")
    assert not (tmp_path / "focsam_tiny.safetensors.partial").exists()
    a, b = load_model("focsam_tiny", official), load_model("focsam_tiny", lean)
    _assert_same_weights(b.model, state)
    assert a.weights_id == b.weights_id
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(lean.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(corrupt)


def test_weights_fingerprint_sees_one_changed_weight():
    state = build_model(get_spec("sam_tiny"), seed=0).state_dict()
    before = weights_fingerprint(state)
    changed = dict(state)
    changed["mask_decoder.iou_token.weight"] = state["mask_decoder.iou_token.weight"] + 1e-3
    assert weights_fingerprint(changed) != before
    assert weights_fingerprint(dict(state)) == before
