"""Our SAM path against segment-anything's own ``SamPredictor``, on the same (tiny, random) weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from napari_focsam.engine.sam_predictor import SamFamilyPredictor
from napari_focsam.engine.session import ObjectSession
from napari_focsam.engine.types import ImageEmbedding
from napari_focsam.weights.loader import load_model


@pytest.fixture(scope="module")
def pair():
    loaded = load_model("sam_tiny", seed=7)
    m = loaded.model
    sam = Sam(m.image_encoder, m.prompt_encoder, m.mask_decoder).eval()
    image = np.random.default_rng(3).integers(0, 256, (321, 481, 3), dtype=np.uint8)
    reference = SamPredictor(sam)
    reference.set_image(image)
    ours = SamFamilyPredictor(loaded)
    features, geometry = ours.embed(image)
    return reference, ours, ImageEmbedding(features, geometry, "k"), image


def test_embedding_is_identical(pair):
    reference, _, embedding, _ = pair
    assert torch.equal(reference.features, embedding.features)


def _close_masks(ours: np.ndarray, logits: np.ndarray) -> None:
    """Masks agree wherever the reference logit is not within float noise of the threshold."""
    disagree = ours != (logits > 0)
    assert not (disagree & (np.abs(logits) > 1e-4)).any()


def test_clicks_with_fed_back_logits_match_sam_predictor(pair):
    reference, ours, embedding, _ = pair
    session = ObjectSession(ours, embedding)
    clicks = [(100.0, 200.0, 1), (50.0, 60.0, 0), (300.0, 470.0, 1)]
    low_res = None
    for i, (y, x, label) in enumerate(clicks):
        mask = session.click(y, x, positive=bool(label))
        coords = np.array([[c[1], c[0]] for c in clicks[: i + 1]])
        labels = np.array([c[2] for c in clicks[: i + 1]])
        masks, scores, low_res = reference.predict(
            coords, labels, mask_input=low_res, multimask_output=False, return_logits=True
        )
        state = session.state
        torch.testing.assert_close(state.logits[0], torch.as_tensor(low_res), rtol=1e-5, atol=1e-5)
        _close_masks(mask, masks[0])
        assert session.current.prediction.score == pytest.approx(float(scores[0]), abs=1e-5)


def test_box_matches_sam_predictor(pair):
    reference, ours, embedding, _ = pair
    session = ObjectSession(ours, embedding)
    box_yx = (40.0, 50.0, 200.0, 300.0)
    mask = session.set_box(box_yx)
    masks, _, low_res = reference.predict(box=np.array([50.0, 40.0, 300.0, 200.0]), multimask_output=False,
                                          return_logits=True)
    torch.testing.assert_close(session.state.logits[0], torch.as_tensor(low_res), rtol=1e-5, atol=1e-5)
    _close_masks(mask, masks[0])
    # a click after the box is prompted together with it, as SamPredictor does with points + box
    mask = session.click(120.0, 150.0, positive=False)
    masks, _, _ = reference.predict(np.array([[150.0, 120.0]]), np.array([0]), box=np.array([50.0, 40.0, 300.0, 200.0]),
                                    mask_input=low_res, multimask_output=False, return_logits=True)
    _close_masks(mask, masks[0])


def _region(shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[80:230, 120:390] = True
    mask[150:170, 120:300] = False  # a notch, so the deepest point is not the box centre
    return mask


@pytest.mark.parametrize("decoder", ["fast", "reference"])
def test_mask_prompt_matches_sam_predictor_mask_input_box_and_point(pair, decoder):
    """A mask prompt = SamPredictor.predict(point_coords=deepest point, box=bounding box, mask_input=its logits),
    and the next click feeds the previous logits back with the same derived prompts."""
    from napari_focsam.engine.prompt_shapes import bounding_box, deepest_point, mask_to_low_res

    reference, ours, embedding, image = pair
    ours = SamFamilyPredictor(ours._loaded, decoder=decoder)
    region = _region(image.shape[:2])
    session = ObjectSession(ours, embedding)
    mask = session.set_mask(region)
    mask_input = mask_to_low_res(region, embedding.geometry, ours.mask_logit_scale)[0].numpy()
    y, x = deepest_point(region)
    y0, x0, y1, x1 = bounding_box(region)
    box_xy = np.array([x0, y0, x1, y1])
    masks, scores, low_res = reference.predict(np.array([[x, y]]), np.array([1]), box=box_xy, mask_input=mask_input,
                                               multimask_output=False, return_logits=True)
    torch.testing.assert_close(session.state.logits[0], torch.as_tensor(low_res), rtol=1e-5, atol=1e-5)
    _close_masks(mask, masks[0])
    assert session.current.prediction.score == pytest.approx(float(scores[0]), abs=1e-5)
    mask = session.click(300.0, 100.0, positive=False)
    masks, _, low_res2 = reference.predict(np.array([[x, y], [100.0, 300.0]]), np.array([1, 0]), box=box_xy,
                                           mask_input=low_res, multimask_output=False, return_logits=True)
    torch.testing.assert_close(session.state.logits[0], torch.as_tensor(low_res2), rtol=1e-5, atol=1e-5)
    _close_masks(mask, masks[0])


def test_mask_prompt_with_a_user_box_and_polygon_match_sam_predictor(pair):
    from napari_focsam.engine.prompt_shapes import deepest_point, fill_polygon, mask_to_low_res

    reference, ours, embedding, image = pair
    vertices = [[60.0, 100.0], [60.0, 420.0], [250.0, 380.0], [200.0, 140.0]]
    session = ObjectSession(ours, embedding)
    session.set_box((40.0, 50.0, 280.0, 460.0))
    low_res_box = session.state.logits
    session.add_polygon(vertices)
    region = fill_polygon(vertices, image.shape[:2])
    y, x = deepest_point(region)
    mask_input = mask_to_low_res(region, embedding.geometry, ours.mask_logit_scale)[0].numpy()
    masks, _, low_res = reference.predict(np.array([[x, y]]), np.array([1]), box=np.array([50.0, 40.0, 460.0, 280.0]),
                                          mask_input=mask_input, multimask_output=False, return_logits=True)
    assert not torch.equal(low_res_box, session.state.logits)
    torch.testing.assert_close(session.state.logits[0], torch.as_tensor(low_res), rtol=1e-5, atol=1e-5)
    _close_masks(session.mask, masks[0])


def test_scribble_matches_sam_predictor_with_its_sampled_points(pair):
    from napari_focsam.engine.prompt_shapes import sample_stroke

    reference, ours, embedding, image = pair
    stroke = np.array([[100.0, 100.0], [140.0, 250.0], [120.0, 400.0]])
    session = ObjectSession(ours, embedding)
    session.add_scribble(stroke, positive=True)
    session.add_scribble([[20.0, 20.0], [20.0, 90.0]], positive=False)
    spacing = ours.scribble_spacing * max(image.shape[:2])
    pos = sample_stroke(stroke, spacing, ours.scribble_points)
    neg = sample_stroke(np.array([[20.0, 20.0], [20.0, 90.0]]), spacing, ours.scribble_points)
    assert len(pos) == ours.scribble_points and len(neg) == 3
    _, _, low_res = reference.predict(pos[:, ::-1], np.ones(len(pos)), multimask_output=False, return_logits=True)
    coords = np.vstack([pos, neg])[:, ::-1]
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    masks, _, low_res2 = reference.predict(coords, labels, mask_input=low_res, multimask_output=False,
                                           return_logits=True)
    torch.testing.assert_close(session.state.logits[0], torch.as_tensor(low_res2), rtol=1e-5, atol=1e-5)
    _close_masks(session.mask, masks[0])
