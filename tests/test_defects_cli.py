"""The command line with bad inputs: one ``error:`` line and a non-zero exit, never a traceback; ``--overwrite``
replaces only files this tool wrote."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import tifffile

from napari_focsam.cli import main


def _stack(tmp_path):
    stack = np.zeros((2, 40, 50), np.uint8)
    stack[:, 10:30, 15:35] = 200
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack)
    prompts = tmp_path / "clicks.csv"
    prompts.write_text("slice,object_id,y,x,label\n0,1,20,25,positive\n1,1,20,25,positive\n")
    return path, prompts


def _segment(stack, prompts, output, *extra):
    return main(["segment", str(stack), "--prompts", str(prompts), "--output", str(output), "--no-progress", *extra])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def test_overwrite_replaces_only_our_own_outputs(tmp_path, capsys):
    stack, prompts = _stack(tmp_path)
    before = stack.read_bytes()
    assert _segment(stack, prompts, stack, "--overwrite") == 2
    assert "input stack" in _one_error_line(capsys)
    assert stack.read_bytes() == before

    notes = tmp_path / "notes.tif"
    notes.write_text("my notes")
    assert _segment(stack, prompts, notes, "--overwrite") == 2
    assert "not a label stack written by napari-focsam" in _one_error_line(capsys)
    assert notes.read_text() == "my notes"

    foreign = tmp_path / "other.tif"
    tifffile.imwrite(foreign, np.ones((2, 40, 50), np.uint16))
    data = foreign.read_bytes()
    assert _segment(stack, prompts, foreign, "--overwrite") == 2
    assert foreign.read_bytes() == data

    ours = tmp_path / "labels.tif"
    assert _segment(stack, prompts, ours) == 0
    assert _segment(stack, prompts, ours, "--overwrite") == 0
    assert tifffile.imread(ours).max() == 1


def test_an_output_in_a_missing_folder_is_one_line(tmp_path, capsys):
    stack, prompts = _stack(tmp_path)
    assert _segment(stack, prompts, tmp_path / "missing" / "labels.tif") == 2
    assert "does not exist" in _one_error_line(capsys)


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    stack, prompts = _stack(tmp_path)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.filehandle.path))

    monkeypatch.setattr(tifffile.TiffWriter, "write", full)
    assert _segment(stack, prompts, tmp_path / "out.tif") == 1
    assert "no space left" in _one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clicks.csv", "stack.tif"]


def test_bad_inputs_of_every_command_are_one_line(tmp_path, capsys):
    stack, prompts = _stack(tmp_path)
    folder = tmp_path / "folder.tif"
    folder.mkdir()
    garbage = tmp_path / "garbage.tif"
    garbage.write_text("not an image")
    strings = tmp_path / "strings.npy"
    np.save(strings, np.array([["a", "b"], ["c", "d"]]))
    calls = [
        ["embed", str(garbage), "--store", str(tmp_path / "s.zarr")],
        ["embed", str(strings), "--store", str(tmp_path / "s2.zarr")],
        ["segment", str(garbage), "--prompts", str(prompts), "--output", str(tmp_path / "o.tif")],
        ["models", "verify", str(folder)],
        ["embed", str(tmp_path / "missing.tif"), "--store", str(tmp_path / "s.zarr")],
        ["embed", str(folder), "--store", str(tmp_path / "s.zarr")],
        ["segment", str(stack), "--prompts", str(tmp_path / "missing.csv"), "--output", str(tmp_path / "o.tif")],
        ["segment", str(stack), "--prompts", str(folder), "--output", str(tmp_path / "o.tif")],
        ["evaluate", "--dataset", str(tmp_path / "no-dataset"), "--model", "fallback", "--no-progress",
         "--no-plots"],
        ["models", "verify", str(tmp_path / "missing.pth")],
    ]
    for argv in calls:
        code = main(argv)
        assert code in (1, 2), argv
        _one_error_line(capsys)
    assert main(["models", "verify", str(garbage)]) == 1  # a report saying why, no traceback
    captured = capsys.readouterr()
    assert "FAILED" in captured.out and "Traceback" not in captured.err


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_FOCSAM_DEBUG", "1")
    with pytest.raises(FileNotFoundError):  # the exception itself, not the one-line message
        main(["evaluate", "--dataset", str(tmp_path / "no-dataset"), "--model", "fallback", "--no-progress",
              "--no-plots"])


def test_evaluate_with_rgb_masks_exits_1(tmp_path, capsys):
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "masks").mkdir()
    tifffile.imwrite(tmp_path / "ds" / "images" / "a.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(tmp_path / "ds" / "masks" / "a.tif", np.ones((32, 32, 3), np.uint8))
    code = main(["evaluate", "--dataset", str(tmp_path / "ds"), "--model", "fallback", "--no-progress", "--no-plots",
                 "--out", str(tmp_path / "out")])
    assert code == 1
    assert "no object" in capsys.readouterr().err
