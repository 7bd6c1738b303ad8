"""Locate the golden reference data of the official FocSAM code and regenerate its deterministic weights.

The data lives outside the repository, in ``<repo>/../shared/reference/golden`` (see its README). Tests that need it
call :func:`golden_dir`, which skips them with a clear reason when the folder is absent. The weights are not stored:
:func:`golden_weights` rebuilds them from the crc32-seeded scheme and checks them against ``weight_keys.json``.
"""

from __future__ import annotations

import functools
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"
GOLDEN_DIR = SHARED_DIR / "reference" / "golden"
SECTIONS = ("refiner", "decoder", "prompt_encoder")


def golden_dir() -> Path:
    """The golden data folder; skips the calling test when it (or its key list) is missing."""
    if not (GOLDEN_DIR / "weight_keys.json").is_file():
        pytest.skip(f"golden reference data not found at {GOLDEN_DIR} (the shared/ folder next to the repository)")
    return GOLDEN_DIR


def load_npz(name: str) -> dict[str, np.ndarray]:
    """All arrays of one golden ``.npz`` file (skips when the file is absent)."""
    path = golden_dir() / name
    if not path.is_file():
        pytest.skip(f"golden file {path} not found")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


@functools.lru_cache(maxsize=1)
def _weight_table() -> dict[str, Any]:
    with open(golden_dir() / "weight_keys.json", encoding="utf-8") as handle:
        return json.load(handle)


def weight_specs(section: str) -> list[dict[str, Any]]:
    """The ``weight_keys.json`` entries (key, shape, norm_weight, crc32_seed, sum, first) of one section, in order."""
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}; expected one of {SECTIONS}")
    return _weight_table()[section]


def _regenerate(key: str, shape: list[int], norm_weight: bool) -> torch.Tensor:
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    noise = torch.randn(shape, generator=generator, dtype=torch.float64)
    return 1.0 + 0.05 * noise if norm_weight else 0.05 * noise


@functools.lru_cache(maxsize=len(SECTIONS))
def _cached_weights(section: str) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for spec in weight_specs(section):
        key = spec["key"]
        tensor = _regenerate(key, spec["shape"], spec["norm_weight"])
        if spec["crc32_seed"] != zlib.crc32(key.encode()):
            raise AssertionError(f"{section}:{key}: crc32 seed differs from weight_keys.json")
        total = tensor.sum().item()
        if abs(total - spec["sum"]) > 1e-10 * max(1.0, abs(spec["sum"])):
            raise AssertionError(f"{section}:{key}: regenerated sum {total!r} != recorded {spec['sum']!r}")
        if abs(tensor.flatten()[0].item() - spec["first"]) > 1e-15:
            raise AssertionError(f"{section}:{key}: regenerated first element differs from weight_keys.json")
        weights[key] = tensor
    return weights


def golden_weights(section: str) -> dict[str, torch.Tensor]:
    """The deterministic float64 weights of one section (``refiner``, ``decoder`` or ``prompt_encoder``).

    Keys carry no prefix. Every tensor is checked against the recorded seed, sum and first element; a mismatch raises
    (it would mean the regeneration scheme or torch's generator changed). The result is cached: do not modify the
    tensors in place (``load_state_dict`` copies them).
    """
    return dict(_cached_weights(section))
