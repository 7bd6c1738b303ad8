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
nbclient.NotebookClient(notebook, timeout=240, kernel_name="python3",
                        resources={"metadata": {"path": sys.argv[2]}}).execute()
"""


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
    try:
        result = subprocess.run([sys.executable, "-c", RUNNER, str(path), str(folder)], env=env, cwd=folder,
                                capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return None
    return None if "CellTimeoutError" in result.stderr else result


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    """Every cell runs without an error. A cell that *hangs* (seen once in about a dozen CI runs: the widget
    notebook's kernel sat idle for minutes under Xvfb, with the fallback model, which runs no torch code) is retried
    once in a fresh process, with a warning; an error is never retried."""
    result = _execute(path, tmp_path)
    if result is None:
        import warnings

        warnings.warn(f"{path.name}: a cell hung; running the notebook again", RuntimeWarning, stacklevel=1)
        (tmp_path / "retry").mkdir()
        result = _execute(path, tmp_path / "retry")
    assert result is not None, f"{path.name}: a cell hung twice"
    assert result.returncode == 0, result.stderr[-4000:]
