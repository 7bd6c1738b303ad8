"""Prompts files: CSV and JSON, and clear errors for everything that cannot be used."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_focsam.stack.prompt_set import build_prompt_set
from napari_focsam.stack.prompts_file import PromptsFileError, read_prompts

SHAPE3 = ((5,), (40, 30))


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_clicks_boxes_and_labels(tmp_path) -> None:
    path = _write(tmp_path, "p.csv", "# a comment\nSlice,Object_ID,y,x,label,y0,x0,y1,x1\n"
                                     "1,2,10,5,positive,,,,\n1,2,12,6,neg,,,,\n1,2,,,,3,2,20,15\n4,1,0,0,,,,,\n")
    prompts = build_prompt_set(read_prompts(path), *SHAPE3)
    assert prompts.slices == [1, 4] and prompts.object_ids == [1, 2] and prompts.has_boxes
    p = prompts.prompts[1][2]
    assert p.points.tolist() == [[10, 5], [12, 6]] and p.labels.tolist() == [1, 0]
    assert p.box.tolist() == [3, 2, 20, 15]
    assert prompts.prompts[4][1].labels.tolist() == [1]  # label column empty: positive


def test_json_flat_and_grouped_forms(tmp_path) -> None:
    data = {"prompts": [
        {"slice": 0, "object_id": 3, "y": 1, "x": 2, "label": "positive"},
        {"z": 2, "id": 4, "points": [[5, 6], [7, 8]], "labels": [1, 0], "box": [1, 1, 9, 9]},
    ]}
    prompts = build_prompt_set(read_prompts(_write(tmp_path, "p.json", json.dumps(data))), *SHAPE3)
    assert prompts.prompts[0][3].points.tolist() == [[1, 2]]
    grouped = prompts.prompts[2][4]
    assert grouped.labels.tolist() == [1, 0] and grouped.box is not None


def test_time_column_indexes_a_4d_stack(tmp_path) -> None:
    path = _write(tmp_path, "p.csv", "t,z,object_id,y,x\n1,2,1,3,3\n")
    assert build_prompt_set(read_prompts(path), (2, 5), (10, 10)).slices == [7]
    with pytest.raises(PromptsFileError, match=r"needs a .T, Z, Y, X. stack"):
        build_prompt_set(read_prompts(path), (5,), (10, 10))


@pytest.mark.parametrize(("text", "match"), [
    ("slice,object_id,y,x,colour\n1,1,2,2,red\n", "unknown column 'colour'"),
    ("object_id,y,x\n1,2,2\n", "missing column.*slice"),
    ("slice,object_id,label\n1,1,1\n", "needs y and x columns"),
    ("slice,object_id,y,x\n1,1,2,two\n", r"p.csv:2: x must be a number, got 'two'"),
    ("slice,object_id,y,x,label\n1,1,2,2,maybe\n", "label must be positive/negative"),
    ("slice,object_id,y,x\n1,0,2,2\n", "object_id must be a positive integer"),
    ("slice,object_id,y,x\n1.5,1,2,2\n", "slice must be a whole number"),
    ("slice,object_id,y,x\n1,1,2,\n", "needs both y and x"),
    ("slice,object_id,y,x\n1,1,2,2,9\n", "more values than columns"),
    ("slice,object_id,y,x\n", "no prompts after the header"),
    ("", "empty"),
])
def test_bad_csv_files_say_what_is_wrong(tmp_path, text: str, match: str) -> None:
    with pytest.raises(PromptsFileError, match=match):
        read_prompts(_write(tmp_path, "p.csv", text))


@pytest.mark.parametrize(("text", "match"), [
    ("{not json", "not valid JSON"),
    ('{"objects": 1}', "expected a list"),
    ('[1]', r"p.json\[0\]: each prompt must be an object"),
    ('[{"slice": 1, "object_id": 1, "points": [[1, 2, 3]]}]', "a point is"),
    ('[{"slice": 1, "object_id": 1, "points": [[1, 2]], "labels": [1, 0]}]', "as long"),
    ('[{"slice": 1, "object_id": 1, "box": [1, 2]}]', "box"),
])
def test_bad_json_files_say_what_is_wrong(tmp_path, text: str, match: str) -> None:
    with pytest.raises(PromptsFileError, match=match):
        read_prompts(_write(tmp_path, "p.json", text))


def test_unreadable_files(tmp_path) -> None:
    with pytest.raises(PromptsFileError, match="no such prompts file"):
        read_prompts(tmp_path / "missing.csv")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage\x81")
    with pytest.raises(PromptsFileError, match="cannot read"):
        read_prompts(tmp_path / "bin.csv")


@pytest.mark.parametrize(("row", "match"), [
    ("5,1,2,2", "slice 5 is outside the stack of 5 slices"),
    ("-1,1,2,2", "slice -1 is outside"),
    ("1,1,40,2", r"\(y=40, x=2\) is outside the 40x30 slice"),
    ("1,1,2,-3", r"\(y=2, x=-3\) is outside"),
])
def test_prompts_outside_the_stack(tmp_path, row: str, match: str) -> None:
    records = read_prompts(_write(tmp_path, "p.csv", f"slice,object_id,y,x\n{row}\n"))
    with pytest.raises(PromptsFileError, match=f"p.csv:2: {match}"):
        build_prompt_set(records, *SHAPE3)


def test_negative_only_object_has_no_positive_label(tmp_path) -> None:
    path = _write(tmp_path, "p.csv", "slice,object_id,y,x,label\n2,1,3,3,0\n")
    prompts = build_prompt_set(read_prompts(path), *SHAPE3).prompts[2][1]
    assert not np.any(prompts.labels) and prompts.box is None
