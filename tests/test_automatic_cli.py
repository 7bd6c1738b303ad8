"""``napari-focsam automatic`` and the Python API on images and stacks (fallback and a random-weight SAM)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_focsam.cli import main
from napari_focsam.engine.automatic import AutomaticOptions
from napari_focsam.engine.everything import segment_everything
from napari_focsam.engine.manager import ModelManager
from napari_focsam.stack.everything import segment_everything_stack


def _discs(shape=(90, 120), centres=((30, 30), (60, 85))) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 20, np.uint8)
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 15**2] = 220
    return image


def test_api_fallback_2d_and_stack():
    manager = ModelManager.load("fallback")
    labels = segment_everything(manager, _discs())
    assert labels.shape == (90, 120) and labels.dtype == np.uint32
    assert set(np.unique(labels)) == {0, 1, 2}
    stack = np.stack([_discs(), _discs(centres=((45, 60),)), np.full((90, 120), 20, np.uint8)])
    seen = []
    out = segment_everything_stack(manager, stack, progress=lambda d, t: seen.append((d, t)))
    assert out.shape == stack.shape
    assert sorted(np.unique(out[0])) == [0, 1, 2] and sorted(np.unique(out[1])) == [0, 3]  # ids unique in the stack
    assert not out[2].any()
    assert seen[-1] == (3, 3)
    with pytest.raises(ValueError, match="stack"):
        segment_everything_stack(manager, _discs())


def test_api_sam_random_weights():
    manager = ModelManager.load("sam_tiny", allow_random_weights=True)
    options = AutomaticOptions(points_per_side=4, pred_iou_thresh=-1.0, stability_score_thresh=0.0)
    labels = segment_everything(manager, _discs(), options=options)
    assert labels.shape == (90, 120) and labels.max() >= 1


def test_cli_image_and_stack(tmp_path, capsys):
    image = tmp_path / "discs.tif"
    tifffile.imwrite(image, _discs())
    out = tmp_path / "labels.tif"
    assert main(["automatic", str(image), "--out", str(out)]) == 0
    assert "2 objects written" in capsys.readouterr().out
    assert set(np.unique(tifffile.imread(out))) == {0, 1, 2}
    # an existing output is kept unless --overwrite
    assert main(["automatic", str(image), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["automatic", str(image), "--out", str(image), "--overwrite"]) == 2
    assert "input" in capsys.readouterr().err
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([_discs(), _discs()]))
    assert main(["automatic", str(stack), "--out", str(out), "--overwrite"]) == 2  # a stack without --stack
    assert "--stack" in capsys.readouterr().err
    assert main(["automatic", str(stack), "--stack", "--out", str(out), "--overwrite"]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == (2, 90, 120) and sorted(np.unique(labels)) == [0, 1, 2, 3, 4]
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image")
    assert main(["automatic", str(garbage), "--out", str(tmp_path / "g.tif")]) == 2
    assert "not an image" in capsys.readouterr().err
    assert not (tmp_path / "g.tif").exists()


@pytest.mark.parametrize("model", ["sam_hq_tiny", "focsam_tiny"])
def test_every_sam_family_model_has_an_automatic_mode(model):
    manager = ModelManager.load(model, allow_random_weights=True, device="cpu")
    options = AutomaticOptions(points_per_side=3, pred_iou_thresh=-1.0, stability_score_thresh=0.0,
                               box_nms_thresh=1.0)
    seen = []
    labels = segment_everything(manager, _discs(), options=options, progress=lambda d, t: seen.append((d, t)))
    assert labels.shape == (90, 120) and labels.max() >= 1
    assert seen[-1] == (9, 9)


def test_pa_sam_is_refused_with_a_reason():
    from napari_focsam.engine.automatic import check_supported

    class _PA:
        head, display_name, is_fallback = "pa", "PA-SAM ViT-L", False

    with pytest.raises(ValueError, match="one prompt set at a time"):
        check_supported(_PA())


def test_stack_on_dask_equals_serial():
    pytest.importorskip("distributed")
    stack = np.stack([_discs(), _discs(centres=((45, 60),))])
    serial = segment_everything_stack("fallback", stack)
    np.testing.assert_array_equal(segment_everything_stack("fallback", stack, workers=1), serial)


def test_stacks_are_read_slice_by_slice_from_zarr_and_written_to_zarr(tmp_path, monkeypatch):
    zarr = pytest.importorskip("zarr")
    from napari_focsam.stack import reader as reader_module
    from napari_focsam.stack.everything import LIMIT_SAMPLES

    stack = np.stack([_discs(centres=((30, 30 + 2 * z), (60, 85))) for z in range(20)])
    source = zarr.open(str(tmp_path / "stack.zarr"), mode="w", shape=stack.shape, chunks=(1, 90, 120), dtype="u1")
    source[:] = stack
    reads = []
    original = reader_module.StackReader.read
    monkeypatch.setattr(reader_module.StackReader, "read", lambda self, flat: reads.append(flat) or
                        original(self, flat))
    out = zarr.open(str(tmp_path / "labels.zarr"), mode="w", shape=stack.shape, chunks=(1, 90, 120), dtype="u4")
    manager = ModelManager.load("fallback")
    assert segment_everything_stack(manager, source, out=out) is out
    assert len(reads) == LIMIT_SAMPLES + len(stack)  # the contrast sample, then each slice once
    np.testing.assert_array_equal(out[:], segment_everything_stack(manager, stack))
    assert sorted(np.unique(out[:]))[-1] == 2 * len(stack)  # two objects per slice, ids unique in the stack
    with pytest.raises(ValueError, match=r"out has shape \(3, 3\)"):
        segment_everything_stack(manager, stack, out=np.zeros((3, 3), np.uint32))


def test_a_stack_with_two_leading_axes_keeps_them():
    stack = np.stack([np.stack([_discs(), _discs(centres=((45, 60),))])] * 2)  # (T, Z, Y, X)
    labels = segment_everything_stack(ModelManager.load("fallback"), stack)
    assert labels.shape == stack.shape and labels.max() == 6
    assert sorted(np.unique(labels[1, 1])) == [0, 6]
