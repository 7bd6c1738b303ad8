"""``napari-focsam models verify`` on files no model can load, on the tiny models, and on hostile legacy pickles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from napari_focsam.cli import main
from napari_focsam.models.sam import build_model
from napari_focsam.models.specs import get_spec
from napari_focsam.weights.checkpoint import UnsafeCheckpoint, read_checkpoint

SENTINEL = Path("/tmp") / f"napari-focsam-verify-sentinel-{os.getpid()}"


class _Hostile:
    def __reduce__(self):
        return os.system, (f"touch {SENTINEL}",)


def test_a_resnet18_checkpoint_fails(tmp_path, capsys):
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    assert main(["models", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "no model napari-focsam knows can load this file" in out and "FAILED" in out


def test_a_safetensors_file_with_wrong_keys_fails(tmp_path, capsys):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"encoder.weight": torch.zeros(4, 4), "head.bias": torch.zeros(4)}, str(path))
    assert main(["models", "verify", str(path)]) == 1
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["sam_tiny", "focsam_tiny"])
def test_model_checks_the_tiny_models(tmp_path, capsys, name):
    path = tmp_path / f"{name}.pth"
    torch.save(build_model(get_spec(name), seed=0).state_dict(), path)
    assert main(["models", "verify", str(path), "--model", name]) == 0
    assert f"fits {name}" in capsys.readouterr().out
    other = "focsam_tiny" if name == "sam_tiny" else "sam_tiny"
    assert main(["models", "verify", str(path), "--model", other]) == 1
    assert f"does NOT fit {other}" in capsys.readouterr().out


def test_a_legacy_pickle_that_runs_code_is_unsafe_and_never_run(tmp_path, capsys):
    SENTINEL.unlink(missing_ok=True)
    path = tmp_path / "legacy.pth"
    torch.save({"model": _Hostile()}, path, _use_new_zipfile_serialization=False)
    assert not SENTINEL.exists()
    with pytest.raises(UnsafeCheckpoint, match="UNSAFE"):
        read_checkpoint(path)
    assert main(["models", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "UNSAFE" in out and "corrupt" not in out
    assert not SENTINEL.exists()
