"""The per-object results of ``segment`` (``--results``, ``--stability``): rows, files, options and errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from _stack_support import stardist_3d, threshold_manager

from napari_focsam.engine.stability import Jitter
from napari_focsam.stack.batch import segment_from_prompts
from napari_focsam.stack.cli import main as cli_main
from napari_focsam.stack.propagate_prompts import segment_with_propagation


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_rows_describe_the_written_labels(tmp_path) -> None:
    from napari_focsam.stack.propagate import deepest_point

    image, truth = stardist_3d()
    stack = image[10:14]
    y, x = deepest_point(truth[11] == int(np.bincount(truth[11][truth[11] > 0]).argmax()))
    prompts = tmp_path / "p.csv"
    prompts.write_text("slice,object_id,y,x,label\n"
                       f"1,7,{y},{x},positive\n1,3,{y},{x},positive\n1,3,{y},{x + 1},positive\n"  # 7 loses to 3
                       "2,5,30,30,negative\n")  # object 5 absent on slice 2
    results = tmp_path / "objects.csv"
    labels = segment_from_prompts(stack, prompts, threshold_manager(), results=results, stability=Jitter(copies=4))
    rows = _read_csv(results)
    assert [(r["slice"], r["object_id"]) for r in rows] == [("1", "3"), ("1", "7"), ("2", "5")]
    assert list(rows[0]) == ["object_id", "slice", "source", "prompts", "area", "y0", "x0", "y1", "x1",
                             "centroid_y", "centroid_x", "st"]  # no t, z for a (Z, Y, X) stack
    three, seven, five = rows
    ys, xs = np.nonzero(labels[1] == 3)
    assert int(three["area"]) == len(ys) > 0 and three["prompts"] == "2" and three["source"] == "prompted"
    assert (int(three["y0"]), int(three["x0"]), int(three["y1"]), int(three["x1"])) == (
        ys.min(), xs.min(), ys.max(), xs.max())
    assert float(three["centroid_y"]) == pytest.approx(ys.mean(), abs=1e-3)
    assert 0.0 < float(three["st"]) <= 1.0
    assert seven["area"] == "0" and seven["y0"] == "" and seven["prompts"] == "1"
    assert five["area"] == "0" and five["st"] == ""  # absent: nothing painted, no stability


def test_stability_is_one_for_a_prompt_invariant_object_and_drops_when_clicks_fall_off_it(tmp_path) -> None:
    """The threshold predictor segments the component under the click: jittered clicks deep inside a big component
    all give it (ST 1.0); at the corner of a tiny component many copies miss it (ST < 1)."""
    stack = np.zeros((1, 64, 64, 3), np.uint8)
    stack[0, 5:55, 5:55] = 200  # a big square
    stack[0, 58:61, 58:61] = 200  # a 3 x 3 speck
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps([{"slice": 0, "object_id": 1, "y": 30, "x": 30},
                                   {"slice": 0, "object_id": 2, "y": 58, "x": 58}]))
    results = tmp_path / "r.json"
    segment_from_prompts(stack, prompts, threshold_manager(), rgb=True, results=results,
                         stability=Jitter(copies=8, noise=0.2))
    data = json.loads(results.read_text())
    assert data["columns"][0] == "object_id"
    st = {r["object_id"]: r["st"] for r in data["rows"]}
    assert st[1] == 1.0 and st[2] < 0.9


def test_propagated_rows_and_keyframe_stability(tmp_path) -> None:
    image, truth = stardist_3d()
    stack = image[10:16]
    from napari_focsam.stack.propagate import deepest_point

    object_id = int(np.bincount(truth[12][truth[12] > 0]).argmax())
    y, x = deepest_point(truth[12] == object_id)
    prompts = tmp_path / "p.csv"
    prompts.write_text(f"slice,object_id,y,x,label\n2,{object_id},{y},{x},positive\n")
    results = tmp_path / "r.csv"
    labels = segment_with_propagation(stack, prompts, threshold_manager(), results=results,
                                      stability=Jitter(copies=4))
    rows = _read_csv(results)
    by_slice = {int(r["slice"]): r for r in rows}
    assert by_slice[2]["source"] == "prompted" and by_slice[2]["st"] != "" and by_slice[2]["prompts"] == "1"
    others = [r for z, r in by_slice.items() if z != 2]
    assert others and all(r["source"] == "propagated" and r["st"] == "" and r["prompts"] == "0" for r in others)
    for z, r in by_slice.items():
        assert int(r["area"]) == int((labels[z] == object_id).sum())


def test_cli_results_and_stability_with_sam(tmp_path, capsys) -> None:
    image, _ = stardist_3d()
    tifffile.imwrite(tmp_path / "stack.tif", image[14:16])
    (tmp_path / "p.csv").write_text("slice,object_id,y,x,label,y0,x0,y1,x1\n0,1,30,28,positive,,,,\n"
                                    "1,2,,,,10,10,40,40\n")
    common = ["segment", str(tmp_path / "stack.tif"), "--prompts", str(tmp_path / "p.csv"), "--model", "sam_tiny",
              "--allow-random-weights", "--device", "cpu", "--no-progress"]
    out, results = tmp_path / "labels.tif", tmp_path / "objects.csv"
    assert cli_main([*common, "--output", str(out), "--results", str(results), "--stability",
                     "--stability-copies", "3", "--stability-noise", "0.2"]) == 0
    assert "per-object results written to" in capsys.readouterr().out
    rows = _read_csv(results)
    labels = tifffile.imread(out)
    assert [(r["slice"], r["object_id"]) for r in rows] == [("0", "1"), ("1", "2")]
    for r in rows:
        assert int(r["area"]) == int((labels[int(r["slice"])] == int(r["object_id"])).sum())
        assert 0.0 <= float(r["st"]) <= 1.0
    # an existing results file is refused before anything is computed or written
    out2 = tmp_path / "labels2.tif"
    assert cli_main([*common, "--output", str(out2), "--results", str(results)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err and not out2.exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--stability"], "add --results"),
    (["--stability-copies", "4"], "need --stability"),
    (["--results", "{tmp}/r.txt"], "must end in .csv or .json"),
    (["--results", "{tmp}/missing/r.csv"], "does not exist"),
    (["--results", "{tmp}/p.csv", "--overwrite"], "is the prompts file"),
    (["--results", "{tmp}/r.csv", "--stability", "--stability-copies", "1"], "at least 2"),
    (["--results", "{tmp}/r.csv", "--stability", "--stability-noise", "1.5"], "in (0, 1]"),
])
def test_cli_result_errors(tmp_path, capsys, extra, message) -> None:
    stack = np.zeros((2, 32, 32), np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    (tmp_path / "p.csv").write_text("slice,object_id,y,x\n0,1,5,5\n")
    args = ["segment", str(tmp_path / "stack.tif"), "--prompts", str(tmp_path / "p.csv"), "--output",
            str(tmp_path / "labels.tif"), "--no-progress", *[a.format(tmp=tmp_path) for a in extra]]
    assert cli_main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "labels.tif").exists()
