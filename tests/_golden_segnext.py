"""The golden reference data of the official SegNext code (``../shared/reference/golden/segnext``, see its README)
and its deterministic weights, written as a checkpoint in the official layout."""

from __future__ import annotations

import functools
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from tests._golden import GOLDEN_DIR

SEGNEXT_DIR = GOLDEN_DIR / "segnext"


def segnext_dir() -> Path:
    if not (SEGNEXT_DIR / "weight_keys.json").is_file():
        pytest.skip(f"SegNext golden data not found at {SEGNEXT_DIR} (the shared/ folder next to the repository)")
    return SEGNEXT_DIR


@functools.lru_cache(maxsize=1)
def table() -> dict:
    with open(segnext_dir() / "weight_keys.json", encoding="utf-8") as handle:
        return json.load(handle)


@functools.lru_cache(maxsize=1)
def case_a() -> dict[str, np.ndarray]:
    path = segnext_dir() / "case_a.npz"
    if not path.is_file():
        pytest.skip(f"golden file {path} not found")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def golden_state(sa1: bool = False) -> dict[str, torch.Tensor]:
    """The deterministic float64 weights in state-dict order, checked against the recorded sums."""
    state = {}
    absent = set(table()["sa1_keys_absent"]) if sa1 else set()
    for spec in table()["keys"]:
        key = spec["key"]
        if key in absent or (sa1 and key.startswith("fusion_blocks.1.")):
            continue
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        t = torch.randn(spec["shape"], generator=g, dtype=torch.float64)
        value = 1.0 + 0.05 * t if spec["norm_weight"] else 0.05 * t
        assert abs(value.sum().item() - spec["sum"]) <= 1e-10 * max(1.0, abs(spec["sum"])), key
        state[key] = value
    return state


def write_official(path: Path, state: dict[str, torch.Tensor], config: dict) -> Path:
    """A checkpoint in the official layout: exactly ``{"state_dict", "config"}``."""
    from collections import OrderedDict

    torch.save({"state_dict": OrderedDict(state), "config": config}, path)
    return path
