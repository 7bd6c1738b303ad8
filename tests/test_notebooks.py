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
nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                        resources={"metadata": {"path": sys.argv[2]}}).execute()
"""


def test_notebooks_have_no_committed_outputs():
    assert NOTEBOOKS
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "QT_", "NAPARI", "PYQT"))}
    result = subprocess.run([sys.executable, "-c", RUNNER, str(path), str(tmp_path)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
