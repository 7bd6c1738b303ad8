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
from napari_focsam.models.loader import load_model


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
