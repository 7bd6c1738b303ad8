"""Every notebook runs top to bottom on a fresh install (fallback / tiny models; no weights, no network).

Each notebook is executed by nbclient in its own process with the environment a user would have: the variables
pytest, pytest-qt and napari's test plugin set for this process are not passed on to the kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
RUNNER = """
import sys, nbformat, nbclient
notebook = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(notebook, timeout=int(sys.argv[3]), kernel_name="python3",
                        resources={"metadata": {"path": sys.argv[2]}}).execute()
"""
#: seconds a cell may take before it counts as hung: the widget notebook's cells take a few seconds each, so a hang
#: there (see test_notebook_runs) is given up on sooner
CELL_TIMEOUT = {"02_napari_widget_from_python": 90}
RETRIES = 2


def test_notebooks_have_no_committed_outputs():
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


def _execute(path, folder) -> subprocess.CompletedProcess | None:
    """Run one notebook in a new process; None when a cell hung (no reply within nbclient's timeout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "QT_", "NAPARI", "PYQT"))}
    # the kernel imports this checkout (not whichever one an editable install points at)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    cell_timeout = CELL_TIMEOUT.get(path.stem, 240)
    try:
        result = subprocess.run([sys.executable, "-c", RUNNER, str(path), str(folder), str(cell_timeout)], env=env,
                                cwd=folder, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return None
    return None if "CellTimeoutError" in result.stderr else result


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    """Every cell runs without an error. A cell that *hangs* is retried in a fresh process (up to twice), with a
    warning; an error is never retried. The hang, seen twice in about fifteen CI runs, always in the widget
    notebook: the kernel sits idle in ipykernel's Qt event loop (``loop_qt``, entered because napari enables
    IPython's Qt integration) and never notices the next execute request, so the cell never starts (py-spy: main
    thread idle in ``loop_qt``); most likely the race of that loop's edge-triggered socket notifier which
    ipykernel's own comments describe, outside this project."""
    import warnings

    result = _execute(path, tmp_path)
    for attempt in range(1, RETRIES + 1):
        if result is not None:
            break
        warnings.warn(f"{path.name}: a cell hung; running the notebook again", RuntimeWarning, stacklevel=1)
        (tmp_path / f"retry{attempt}").mkdir()
        result = _execute(path, tmp_path / f"retry{attempt}")
    assert result is not None, f"{path.name}: a cell hung {RETRIES + 1} times"
    assert result.returncode == 0, result.stderr[-4000:]
