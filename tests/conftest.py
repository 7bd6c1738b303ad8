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


@pytest.fixture(scope="session", autouse=True)
def fixed_interactive_threads():
    """One interactive thread, never adapted to the load, in every test: tests that compare the widget's masks with
    the engine's, computed under ``threads_for("interactive")``, need the same thread count (the same float
    rounding) on both sides. The adaptive count itself is tested with a fake machine (tests/test_threads.py)."""
    from napari_focsam.engine import threads

    old = threads.thread_policy()
    threads.set_thread_policy(interactive=1)
    yield
    threads.set_thread_policy(interactive=old.interactive, bulk=old.bulk, adaptive=old.adaptive)


@pytest.fixture(scope="session")
def golden_keys() -> dict[str, dict[str, tuple[int, ...]]]:
    """The official key names and shapes (prefix stripped) of the refiner, decoder and prompt encoder."""
    data = json.loads(shared_path("reference", "golden", "weight_keys.json").read_text())
    return {
        section: {entry["key"]: tuple(entry["shape"]) for entry in data[section]}
        for section in ("refiner", "decoder", "prompt_encoder")
    }
