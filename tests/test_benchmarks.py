"""The benchmark scripts run end to end on small settings and print their tables (their figures are not checked
here: speed is judged by running them, see the README's *Benchmarks*)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, timeout: float = 300) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_bench_engine_prints_every_ratio() -> None:
    out = _run("bench_engine.py", "--model", "sam_tiny", "--embed-repeats", "1", "--clicks", "3",
               "--refiner-repeats", "1")
    table = out[out.index("measure (peer"):].splitlines()[1:]
    rows = {line.split(" (s)")[0].split(" [")[0]: line for line in table if line.strip()}
    ratios = {name: float(line.split()[-1]) for name, line in rows.items()}
    assert all(ratio > 0 for ratio in ratios.values()), ratios
    assert any(name.startswith("embedding") for name in ratios)
    assert any(name.startswith("refiner per object") for name in ratios)
    clicks = [line for line in table if line.startswith("click → mask")]
    assert clicks and "(default here)" in clicks[0]
    for line in clicks:  # every decoder variant stays within the tolerance the README states (≥ 99 %)
        assert float(re.search(r"masks ≥([\d.]+)%", line).group(1)) >= 99.0, line
    for line in table:
        if line.startswith("refiner"):  # ours equals the official algorithm
            assert float(re.search(r"max \|diff\| ([\d.e+-]+)\]", line).group(1)) < 1e-4, line


def test_bench_widget_prints_click_to_visible_mask_per_load() -> None:
    pytest.importorskip("napari")
    out = _run("bench_widget.py", "--clicks", "3", "--size", "256", "--loads", "idle,busy", "--backends",
               "fallback,sam_tiny", "--no-embedding", "--micro-sam", "none", "--engine-model", "sam_tiny",
               "--clicks-as", "mouse:0,points:30")
    rows = [line.split() for line in out.splitlines()
            if line.startswith(("idle ", "busy ")) and "/ idle" not in line and "api" not in line]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (load, backend, mode) for backend in ("fallback", "sam_tiny") for load in ("idle", "busy")
        for mode in ("mouse:0", "points:30")]
    for row in rows:
        p50, p95, r50, r95 = (float(v) for v in row[3:7])
        assert 0 < p50 <= p95 and 0 < r50 <= r95 and r50 <= p50
        parts = [float(v) for v in row[7:] if v != "/"]  # prep / model / hand-off / write / draw
        assert len(parts) == 5 and parts[1] > 0 and sum(parts) <= p95 + 5
    assert "window shown" in out and "p95 / idle p50" in out
    engine = [line for line in out.splitlines() if line.startswith(("idle ", "busy ")) and "api" in line]
    assert len(engine) == 2 and all("widget" in line and "widget threads" in line for line in engine)


def test_bench_hq_prints_the_extra_cost_of_hq_and_pa() -> None:
    pytest.importorskip("cv2")
    out = _run("bench_hq.py", "--hq", "sam_hq_tiny", "--base", "sam_tiny", "--pa", "pa_sam_tiny", "--pa-base",
               "sam_tiny", "--clicks", "2", "--click-repeats", "1")
    rows = [line for line in out.splitlines() if line.startswith(("HQ-SAM:", "PA-SAM:"))]
    assert len(rows) == 7
    for line in rows:
        base, other, ratio = (float(v) for v in line.split()[-3:])
        assert base > 0 and other > 0 and abs(ratio - other / base) < 0.01 + 1e-3 * ratio, line
    agreement = re.search(r"masks ≥([\d.]+)% equal", out)
    assert agreement and float(agreement.group(1)) >= 99.0, out  # the bf16 tolerance the docs state


def test_bench_stability_prints_the_cost_ratios() -> None:
    out = _run("bench_stability.py", "--quick")
    row = next(line for line in out.splitlines() if line.startswith("sam_tiny"))
    ratios = [float(v) for v in row.split()[1:] if not v.endswith("ms")]
    # ST / decoder call, ST / click, ST through the ordinary batched decoder / decoder call, robust / click
    assert len(ratios) == 4 and all(r > 0 for r in ratios), row
    assert re.search(r"load average before [\d.]+", out) and re.search(r"load average after [\d.]+", out), out


def test_bench_tiles_prints_tiled_vs_resized() -> None:
    out = _run("bench_tiles.py", "--model", "sam_tiny", "--side", "2560", "--micro-sam", "none", "--clicks", "2")
    assert "ours, tiled" in out and re.search(r"1 of 16 tiles embedded", out), out
    assert re.search(r"ratio ours tiled / ours, resized: first mask \d+\.\d\d, working memory \d+\.\d\d", out), out


def test_bench_tiles_prefetch_prints_each_background_against_idle() -> None:
    out = _run("bench_tiles_prefetch.py", "--model", "fallback", "--side", "2048", "--clicks", "2")
    for variant in ("idle", "runner background", "plain thread"):
        assert re.search(rf"\| {variant} \| \d+ \| \d+ \| \d+\.\d\d \|", out), out
    assert re.search(r"load \d+\.\d", out), out


def test_bench_tiles_memory_prints_the_peak_per_click() -> None:
    pytest.importorskip("napari")
    out = _run("bench_tiles_memory.py", "--side", "2048", "--clicks", "1", "--hidden")
    rows = re.findall(r"\| hidden \(the annotator's own\) \| (first of an object|next) \| ([\d.]+) \| ([\d.]+) \|", out)
    assert len(rows) == 2 and all(float(mib) > 0 for _, mib, _ in rows), out  # (the bound: test_widget_tiles.py)
