"""The fallback's automatic mode (seeded watershed) and the instance matching it is measured with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_focsam.engine.fallback_automatic import WatershedOptions, instance_scores, watershed_instances

DSB = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "dsb2018"


def test_instance_scores_by_hand():
    truth = np.zeros((4, 8), int)
    truth[:, :4] = 1  # 16 px
    truth[:, 6:] = 2  # 8 px
    pred = np.zeros((4, 8), int)
    pred[:, 1:4] = 5  # IoU 12/16 with object 1
    pred[0, 6] = 7  # IoU 1/8 with object 2
    pred[3, 5] = 9  # touches nothing
    scores = instance_scores(pred, truth)
    assert scores["mean_iou"] == pytest.approx((12 / 16 + 1 / 8) / 2)
    assert scores["tp"] == 1 and scores["n_pred"] == 3 and scores["n_truth"] == 2
    assert scores["f1"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))
    with pytest.raises(ValueError, match="shape"):
        instance_scores(pred[:3], truth)


def test_touching_discs_are_split():
    yy, xx = np.mgrid[:80, :120]
    image = np.zeros((80, 120), np.uint8)
    image[(yy - 40) ** 2 + (xx - 40) ** 2 < 20**2] = 200
    image[(yy - 40) ** 2 + (xx - 75) ** 2 < 20**2] = 200  # overlaps the first: one blob with a waist
    image[(yy - 10) ** 2 + (xx - 110) ** 2 < 4**2] = 200  # 49 px
    labels = watershed_instances(image)
    assert labels.dtype == np.uint32
    assert len(np.unique(labels)) == 4  # background + two discs + the small one
    assert labels[40, 40] != labels[40, 75]
    assert 0 not in (labels[40, 40], labels[40, 75], labels[10, 110])
    # dark objects on a bright field work the same way
    np.testing.assert_array_equal(watershed_instances(255 - image) > 0, labels > 0)
    assert not watershed_instances(np.full((20, 20), 7, np.uint8)).any()
    with pytest.raises(ValueError, match="2D"):
        watershed_instances(np.zeros((3, 4, 5, 6)))


@pytest.mark.skipif(not DSB.is_dir(), reason="needs ../shared/datasets/dsb2018")
def test_quality_floor_on_dsb2018():
    """The measured figures (all 60 images, docs/automatic.md): mean matched IoU 0.471, F1@0.5 0.571 (pooled
    over the 2,949 nuclei). Floors on the first 20 images, a little below what they give."""
    ids = (DSB / "ids.txt").read_text().split()[:20]
    weighted_iou, tp, n_pred, n_truth = 0.0, 0, 0, 0
    for i in ids:
        image = np.asarray(Image.open(next(DSB.glob(f"images/{i}.*"))).convert("RGB"))
        truth = np.asarray(Image.open(DSB / "masks" / f"{i}.png"))
        s = instance_scores(watershed_instances(image, WatershedOptions()), truth)
        weighted_iou += s["mean_iou"] * s["n_truth"]
        tp, n_pred, n_truth = tp + s["tp"], n_pred + s["n_pred"], n_truth + s["n_truth"]
    mean_iou, f1 = weighted_iou / n_truth, 2 * tp / (n_pred + n_truth)
    print(f"DSB2018 (20 images, {n_truth} nuclei): mean matched IoU {mean_iou:.3f}, F1@0.5 {f1:.3f}")
    assert mean_iou > 0.42 and f1 > 0.47
