"""The README's Python examples run as written (blocks marked '# requires:' need real weights and are skipped)."""

from __future__ import annotations

import re

import pytest

from conftest import REPO

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index):
    code = BLOCKS[index]
    if code.startswith("# requires:"):
        pytest.skip(code.splitlines()[0][2:])
    exec(compile(code, f"README.md python block {index}", "exec"), {})


def test_readme_starts_with_the_two_setup_commands():
    lines = (REPO / "README.md").read_text().splitlines()
    block = lines[lines.index("```bash") + 1: lines.index("```bash") + 3]
    assert block[0].startswith('pip install -e ".[testing]"')
    assert block[1].startswith("xvfb-run -a python -m pytest")
    assert "xvfb-run -a python -m pytest" in (REPO / ".ci" / "run").read_text().splitlines()[-1]


def test_readme_images_exist():
    images = re.findall(r"\]\((docs/images/[^)]+)\)", (REPO / "README.md").read_text())
    assert images, "the README shows its screenshot and figures"
    missing = [path for path in images if not (REPO / path).is_file()]
    assert not missing, missing
