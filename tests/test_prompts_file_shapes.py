"""Prompts files with polygons, scribbles and masks from a label image, and ``napari-focsam segment`` with them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from _stack_support import stardist_3d

from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.prompt_shapes import fill_polygon
from napari_focsam.engine.types import Prompts
from napari_focsam.stack.cli import main as cli_main
from napari_focsam.stack.prompt_set import build_prompt_set
from napari_focsam.stack.prompts_file import PromptsFileError, read_prompts

CSV = """slice,object_id,kind,shape,y,x,label,mask,mask_value
0,1,polygon,1,10,10,,,
0,2,scribble,1,40,20,negative,,
0,1,polygon,1,10,60,,,
0,2,scribble,1,45,40,negative,,
0,1,polygon,1,50,35,,,
0,2,,,30,30,1,,
0,1,polygon,2,55,70,,,
0,1,polygon,2,55,78,,,
0,1,polygon,2,62,74,,,
1,3,mask,,,,,labels.tif,7
2,7,mask,,,,,labels.tif,
"""


@pytest.fixture
def labels_file(tmp_path):
    labels = np.zeros((3, 64, 80), np.uint16)
    labels[1, 10:30, 20:50] = 7
    labels[2, 5:15, 5:15] = 7
    tifffile.imwrite(tmp_path / "labels.tif", labels, photometric="minisblack")
    return labels


def test_csv_polygons_scribbles_and_label_masks(tmp_path, labels_file) -> None:
    (tmp_path / "p.csv").write_text(CSV)
    prompt_set = build_prompt_set(read_prompts(tmp_path / "p.csv"), (3,), (64, 80))
    one = prompt_set.prompts[0][1]
    expected = fill_polygon([[10, 10], [10, 60], [50, 35]], (64, 80)) | fill_polygon(
        [[55, 70], [55, 78], [62, 74]], (64, 80))
    np.testing.assert_array_equal(one.mask, expected)  # the vertex rows grouped by shape, the polygons united
    two = prompt_set.prompts[0][2]
    assert len(two.scribbles) == 1 and not two.scribbles[0].positive and two.labels.tolist() == [1]
    np.testing.assert_array_equal(two.scribbles[0].points, [[40, 20], [45, 40]])
    np.testing.assert_array_equal(prompt_set.prompts[1][3].mask, labels_file[1] == 7)
    np.testing.assert_array_equal(prompt_set.prompts[2][7].mask, labels_file[2] == 7)  # value: the object id


def test_json_polygons_scribbles_and_masks(tmp_path, labels_file) -> None:
    data = [{"slice": 0, "object_id": 1, "polygons": [[[10, 10], [10, 60], [50, 35]]],
             "scribbles": [{"points": [[40, 20], [45, 40]], "positive": False}, [[5, 5], [5, 9]]],
             "points": [[30, 30]]},
            {"slice": 1, "object_id": 2, "mask": "labels.tif", "mask_value": 7}]
    (tmp_path / "p.json").write_text(json.dumps(data))
    prompt_set = build_prompt_set(read_prompts(tmp_path / "p.json"), (3,), (64, 80))
    one = prompt_set.prompts[0][1]
    assert one.mask.sum() == fill_polygon([[10, 10], [10, 60], [50, 35]], (64, 80)).sum()
    assert [s.positive for s in one.scribbles] == [False, True] and len(one) == 1
    np.testing.assert_array_equal(prompt_set.prompts[1][2].mask, labels_file[1] == 7)


@pytest.mark.parametrize("rows, match", [
    ("0,1,polygon,1,10,10,,,\n0,1,polygon,1,10,60,,,\n", r"p.csv:2: a polygon needs at least 3 distinct"),
    ("0,1,polygon,1,10,10,,,\n0,1,polygon,1,20,20,,,\n0,1,polygon,1,30,30,,,\n", "zero area"),
    ("0,1,scribble,1,10,10,,,\n", "use a click"),
    ("0,1,scribble,1,10,10,pos,,\n0,1,scribble,1,20,10,neg,,\n", "label differs from its first row"),
    ("0,1,polygon,1,10,10,,,\n0,1,polygon,1,10,600,,,\n0,1,polygon,1,50,35,,,\n", "outside the image of 64×80"),
    ("0,1,mask,,,,,labels.tif,\n", "label 1 does not occur in labels.tif on slice 0"),
    ("0,1,mask,,,,,missing.tif,\n", "cannot read the label image"),
    ("0,1,mask,,,,,,\n", "needs a mask column"),
    ("0,1,lasso,,1,1,,,\n", "unknown kind 'lasso'"),
    ("1,7,mask,,,,,labels.tif,\n1,7,mask,,,,,labels.tif,\n", "already has a mask"),
])
def test_bad_shapes_in_files_name_the_row(tmp_path, labels_file, rows, match) -> None:
    (tmp_path / "p.csv").write_text(CSV.splitlines()[0] + "\n" + rows)
    with pytest.raises(PromptsFileError, match=match):
        build_prompt_set(read_prompts(tmp_path / "p.csv"), (3,), (64, 80))


def test_label_image_of_the_wrong_shape(tmp_path) -> None:
    tifffile.imwrite(tmp_path / "labels.tif", np.ones((10, 10), np.uint8))
    (tmp_path / "p.csv").write_text("slice,object_id,kind,mask\n0,1,mask,labels.tif\n")
    with pytest.raises(PromptsFileError, match=r"is \(10, 10\); it must be one slice \(64, 80\)"):
        build_prompt_set(read_prompts(tmp_path / "p.csv"), (3,), (64, 80))


def test_cli_segment_refines_labels_and_draws_polygons(tmp_path) -> None:
    """``napari-focsam segment`` with a mask prompt from a label image, a polygon and a scribble: the labels equal
    what the Python API gives for the same prompts."""
    image, truth = stardist_3d()
    stack = image[14:16]
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    ids = [i for i in np.unique(truth[14]) if i][:3]
    rough = np.zeros_like(truth[14:16])
    rough[0][np.isin(truth[14], ids[:1])] = 5  # an existing label, to refine
    tifffile.imwrite(tmp_path / "rough.tif", rough)
    ys, xs = np.nonzero(truth[14] == ids[1])
    polygon = [[ys.min() - 0.5, xs.min() - 0.5], [ys.min() - 0.5, xs.max() + 0.5], [ys.max() + 0.5, xs.max() + 0.5],
               [ys.max() + 0.5, xs.min() - 0.5]]
    ys2, xs2 = np.nonzero(truth[14] == ids[2])
    stroke = [[ys2.min() + 1, xs2.mean()], [ys2.max() - 1, xs2.mean()]]
    rows = ["slice,object_id,kind,shape,y,x,mask,mask_value", "0,1,mask,,,,rough.tif,5"]
    rows += [f"0,2,polygon,1,{y},{x},," for y, x in polygon]
    rows += [f"0,3,scribble,1,{y},{x},," for y, x in stroke]
    (tmp_path / "prompts.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "labels.tif"
    assert cli_main(["segment", str(tmp_path / "stack.tif"), "--prompts", str(tmp_path / "prompts.csv"),
                     "--output", str(out), "--model", "fallback", "--no-progress"]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == (2, 61, 57) and not labels[1].any()
    manager = ModelManager.load("fallback")
    from napari_focsam.stack.common import prepare
    from napari_focsam.stack.reader import open_stack

    plane = prepare(open_stack(stack), 0, None)
    expected = [
        manager.segment_prompts(plane, Prompts().with_mask(rough[0] == 5)),
        manager.segment_prompts(plane, Prompts().with_polygon(polygon, (61, 57))),
        manager.segment_prompts(plane, Prompts().with_scribble(stroke)),
    ]
    for object_id, mask in enumerate(expected, start=1):
        assert mask.any()
        np.testing.assert_array_equal(labels[0] == object_id, mask & ~np.isin(labels[0], range(1, object_id)))
    for object_id, truth_id in enumerate(ids, start=1):
        got, want = labels[0] == object_id, truth[14] == truth_id
        assert (got & want).sum() / (got | want).sum() > 0.5
