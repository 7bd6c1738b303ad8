"""The ``napari-focsam`` command: with no arguments napari opens with the annotator docked (a sample open, the
fallback loaded when nothing is cached); ``--help`` lists the commands and opens nothing. More in test_cli_launch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_focsam import cli  # noqa: E402
from napari_focsam.plugin.widget import FocsamWidget  # noqa: E402


@pytest.mark.gui
def test_no_arguments_opens_napari_with_the_annotator_docked(qtbot, monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_FOCSAM_CACHE", str(tmp_path))  # nothing cached
    ran, created = [], []
    real_viewer = napari.Viewer

    def viewer(*args, **kwargs):
        created.append(real_viewer(*args, **kwargs))
        return created[-1]

    monkeypatch.setattr(napari, "Viewer", viewer)
    monkeypatch.setattr(napari, "run", lambda *args, **kwargs: ran.append(True))  # no event loop in the test
    try:
        assert cli.main([]) == 0
        assert ran == [True] and len(created) == 1
        docked = dict(created[0].window.dock_widgets)
        annotators = [w for w in docked.values() if isinstance(w, FocsamWidget)]
        assert len(annotators) == 1, docked
        assert any("FocSAM annotator" in name for name in docked)
        created[0].add_image(np.zeros((8, 8), np.uint8), name="opened image")  # the widget follows this viewer
        assert annotators[0].image_combo.findText("opened image") >= 0
        qtbot.waitUntil(lambda: annotators[0].controller.manager is not None, timeout=60_000)
        annotators[0].controller.wait()
        assert annotators[0].controller.manager.name == "fallback"
    finally:
        for v in created:
            v.close()


def _command() -> list[str]:
    script = Path(sys.executable).with_name("napari-focsam")
    return [str(script)] if script.exists() else [sys.executable, "-m", "napari_focsam.cli"]


def test_help_lists_the_commands():
    done = subprocess.run([*_command(), "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: napari-focsam")
    for command in ("info", "evaluate", "models", "embed", "segment"):
        assert command in done.stdout, command
