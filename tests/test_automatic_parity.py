"""Automatic segmentation against segment-anything's ``SamAutomaticMaskGenerator`` on the same random weights.

The decoder of ``sam_tiny`` is SAM's full-size mask decoder (only the encoder is reduced), so the multimask decoding,
the filters and the suppression run at their real sizes; both sides get the same embedding (the official
predictor's and ours are bit-identical in float32, ``tests/test_sam_parity.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam

from napari_focsam.engine.automatic import AutomaticOptions, generate_masks, masks_to_labels, point_grid
from napari_focsam.engine.sam_predictor import SamFamilyPredictor
from napari_focsam.engine.types import ImageEmbedding
from napari_focsam.weights.loader import load_model

POINTS = 8
OFFSET = 0.02


def _image() -> np.ndarray:
    rng = np.random.default_rng(3)
    image = np.full((150, 200, 3), 40, np.uint8)
    yy, xx = np.mgrid[:150, :200]
    for _ in range(10):
        cy, cx, r = rng.integers(10, 140), rng.integers(10, 190), rng.integers(8, 30)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(80, 255, 3)
    return image


@pytest.fixture(scope="module")
def setup():
    loaded = load_model("sam_tiny", seed=11)
    m = loaded.model
    sam = Sam(m.image_encoder, m.prompt_encoder, m.mask_decoder).eval()
    image = _image()
    ours = SamFamilyPredictor(loaded)
    features, geometry = ours.embed(image)
    embedding = ImageEmbedding(features, geometry, "k")
    # thresholds that keep about half of the masks at each filter, so that both filters decide something
    # (random weights give speckled masks with small logits: a small stability offset makes the scores spread)
    everything = generate_masks(ours, embedding, AutomaticOptions(points_per_side=POINTS, pred_iou_thresh=0.0,
                                                                  stability_score_thresh=0.0, box_nms_thresh=1.0,
                                                                  stability_score_offset=OFFSET))
    assert len(everything) == 3 * POINTS**2  # nothing filtered, nothing suppressed (IoU > 1 never happens)
    iou_t = float(np.quantile(everything.scores, 0.8))
    stable_t = float(np.quantile(everything.stability[everything.scores > iou_t], 0.4))
    assert iou_t > 0 and stable_t > 0  # both filters on (a threshold <= 0 switches a filter off in both codes)
    return sam, ours, embedding, image, iou_t, stable_t


_REFERENCE: dict = {}


def _reference(sam, image, **kwargs):
    key = tuple(sorted(kwargs.items()))
    if key not in _REFERENCE:
        _REFERENCE[key] = _run_reference(sam, image, **kwargs)
    return _REFERENCE[key]


def _run_reference(sam, image, **kwargs):
    generator = SamAutomaticMaskGenerator(sam, points_per_side=POINTS, **kwargs)
    records = generator.generate(image)
    masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, *image.shape[:2]), bool)
    return records, masks


def test_point_grid_is_the_official_one():
    from segment_anything.utils.amg import build_point_grid

    np.testing.assert_array_equal(point_grid(7), build_point_grid(7))


@pytest.mark.parametrize("nms", [0.7, 1.0])
@pytest.mark.parametrize("decoder", ["reference", "fast"])
def test_masks_equal_sam_automatic_mask_generator(setup, nms, decoder):
    sam, ours, embedding, image, iou_t, stable_t = setup
    kwargs = dict(pred_iou_thresh=iou_t, stability_score_thresh=stable_t, box_nms_thresh=nms,
                  stability_score_offset=OFFSET)
    records, reference = _reference(sam, image, **kwargs)
    result = generate_masks(ours, embedding, AutomaticOptions(points_per_side=POINTS, decoder=decoder, **kwargs))
    # the filters removed some masks, not all (the speckled masks all span the image: suppression keeps one)
    assert (3 < len(records) < 3 * POINTS**2) if nms == 1.0 else len(records) == 1
    assert len(result) == len(records)
    # the same masks in the same order (highest predicted IoU first), pixel-exact
    assert np.array_equal(result.masks, reference)
    ref_scores = np.array([r["predicted_iou"] for r in records], np.float32)
    ref_stability = np.array([r["stability_score"] for r in records], np.float32)
    if decoder == "reference":
        np.testing.assert_array_equal(result.scores, ref_scores)
    else:
        np.testing.assert_allclose(result.scores, ref_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.stability, ref_stability, atol=1e-3)
    boxes_xywh = np.array([r["bbox"] for r in records])
    ours_xywh = np.stack([result.boxes[:, 1], result.boxes[:, 0], result.boxes[:, 3] - result.boxes[:, 1],
                          result.boxes[:, 2] - result.boxes[:, 0]], 1)
    np.testing.assert_array_equal(ours_xywh, boxes_xywh)
    points = np.array([r["point_coords"][0] for r in records])  # (x, y)
    np.testing.assert_allclose(result.points[:, ::-1], points)
    np.testing.assert_array_equal(result.labels(), masks_to_labels(reference))


def test_labels_paint_largest_first():
    masks = np.zeros((2, 6, 6), bool)
    masks[0, 2:4, 2:4] = True  # small, inside the large one
    masks[1, :, :] = True
    labels = masks_to_labels(masks)
    assert labels[0, 0] == 1 and labels[2, 2] == 2  # the small mask stays visible on top of the large one


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="points_per_side"):
        AutomaticOptions(points_per_side=0)
    with pytest.raises(ValueError, match="decoder"):
        AutomaticOptions(decoder="slow")


def test_cancel_stops_between_batches(setup):
    from napari_focsam._cancel import Cancelled, CancelToken

    _, ours, embedding, *_ = setup
    token = CancelToken()
    seen = []

    def progress(done, total):
        seen.append((done, total))
        token.cancel()

    with pytest.raises(Cancelled):
        generate_masks(ours, embedding, AutomaticOptions(points_per_side=POINTS, points_per_batch=16),
                       cancel=token, progress=progress)
    assert seen == [(16, POINTS**2)]
