"""The core packages never import napari, Qt or Jupyter (house rule): checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

CORE = ("napari_focsam", "napari_focsam.cli", "napari_focsam.sample_data")
# every module of these packages is imported, so a new module is covered without editing this list
CORE_PACKAGES = ("napari_focsam.engine", "napari_focsam.models", "napari_focsam.weights", "napari_focsam.stack",
                 "napari_focsam.evaluation")
GUI_ROOTS = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy",
             "ipywidgets", "ipykernel", "anywidget", "jupyterlab")


def test_core_packages_load_neither_napari_nor_qt():
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"for name in {CORE!r}: importlib.import_module(name)\n"
        f"for name in {CORE_PACKAGES!r}:\n"
        "    package = importlib.import_module(name)\n"
        "    for info in pkgutil.iter_modules(package.__path__): importlib.import_module(f'{name}.{info.name}')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('napari_focsam.'))))\n"
        "import napari_focsam.cli as cli; cli.build_parser(); cli.viewer_parser()\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {GUI_ROOTS!r} "
        f"or m.startswith('napari_focsam.notebook'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    *_, imported, gui = done.stdout.strip().splitlines()
    assert {"napari_focsam.weights.download", "napari_focsam.weights.cli", "napari_focsam.engine.cache"} <= set(
        json.loads(imported))
    assert json.loads(gui) == []


def test_the_check_sees_a_gui_import():
    """The same check on the plugin package does find napari (the test can fail)."""
    code = ("import json, sys, napari_focsam.plugin\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {GUI_ROOTS!r})))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "napari" in json.loads(done.stdout.strip().splitlines()[-1])


def test_the_notebook_annotator_needs_no_napari_or_qt():
    """The notebook package imports anywidget (Jupyter) but neither napari nor Qt."""
    code = ("import json, sys, napari_focsam.notebook\n"
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({GUI_ROOTS!r}))))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert "anywidget" in found and "ipywidgets" in found
    assert not {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "magicgui"} & set(found), found
