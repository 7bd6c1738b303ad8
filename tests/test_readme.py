"""The code blocks of README.md, CONTRIBUTING.md and docs/*.md: every fenced ``python`` and ``bash`` block runs here,
unless the line before it is a ``<!-- not-run: reason -->`` marker (weights needed, opens a window, installs
packages). Bash blocks run their ``napari-focsam`` commands offline, with an empty model cache."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"(?:^(<!-- not-run: [^>]+-->)\n)?^```(python|bash)\n(.*?)^```", flags=re.S | re.M)
BLOCKS = [(page, n, marker, language, code)
          for page in PAGES
          for n, (marker, language, code) in enumerate(FENCE.findall(page.read_text()))]
IDS = [f"{page.relative_to(REPO)}#{n}-{language}" for page, n, _, language, _ in BLOCKS]


def _command() -> list[str]:
    script = Path(sys.executable).with_name("napari-focsam")
    return [str(script)] if script.exists() else [sys.executable, "-m", "napari_focsam.cli"]


@pytest.mark.parametrize("page, n, marker, language, code", BLOCKS, ids=IDS)
def test_code_block_runs_or_is_marked(page, n, marker, language, code, tmp_path, monkeypatch):
    if marker:
        pytest.skip(marker)
    if language == "python":
        monkeypatch.chdir(tmp_path)
        exec(compile(code, f"{page.name} python block {n}", "exec"), {})
        return
    lines = [line.split("#")[0].strip() for line in code.splitlines()]
    commands = [line for line in lines if line]
    assert commands and all(c.startswith("napari-focsam ") for c in commands), (
        f"{page.name} bash block {n}: only napari-focsam commands run here; mark it <!-- not-run: reason -->")
    env = {"NAPARI_FOCSAM_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for command in commands:
        done = subprocess.run([*_command(), *shlex.split(command)[1:]], capture_output=True, text=True,
                              timeout=600, cwd=tmp_path, env=env)
        assert done.returncode == 0, (command, done.stderr)


def test_blocks_are_found_and_some_run():
    assert len(PAGES) >= 8 and any(page.name == "stacks.md" for page in PAGES)
    ran = [(page.name, language) for page, _, marker, language, _ in BLOCKS if not marker]
    assert ("README.md", "python") in ran and ("README.md", "bash") in ran and ("stacks.md", "python") in ran


def test_readme_first_block_installs_runs_and_tests_as_ci_does():
    text = (REPO / "README.md").read_text()
    first = re.search(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    assert first is not None and text.index(first.group(0)) < text.index("\n## ")
    lines = first.group(1).splitlines()
    assert lines[0].startswith('pip install "napari-focsam[napari]"')
    assert lines[1].startswith("napari-focsam ")
    assert lines[2].startswith("xvfb-run -a python -m pytest ")
    assert (REPO / ".ci" / "run").read_text().splitlines()[-1] == "xvfb-run -a python -m pytest"


def test_readme_is_short_and_links_the_docs():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    for page in ("napari", "stacks", "evaluation", "performance", "architecture", "troubleshooting"):
        assert f"(docs/{page}.md)" in text and (REPO / "docs" / f"{page}.md").is_file(), page
    assert "(CONTRIBUTING.md)" in text and "downloads are coming" not in text


def test_images_exist():
    missing = []
    for page in PAGES:
        for target in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text()):
            if not (page.parent / target).is_file():
                missing.append(f"{page.name}: {target}")
    assert not missing, missing
