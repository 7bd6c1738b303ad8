"""Shared fixtures: where ../shared is, the golden reference data, small models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a clear reason when it is absent (e.g. a user's clone)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available (the ../shared reference data sits beside the repository in CI)")
    return path


@pytest.fixture(scope="session")
def golden_keys() -> dict[str, dict[str, tuple[int, ...]]]:
    """The official key names and shapes (prefix stripped) of the refiner, decoder and prompt encoder."""
    data = json.loads(shared_path("reference", "golden", "weight_keys.json").read_text())
    return {
        section: {entry["key"]: tuple(entry["shape"]) for entry in data[section]}
        for section in ("refiner", "decoder", "prompt_encoder")
    }
