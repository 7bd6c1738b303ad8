"""Parity with the official FocSAM prompt encoder + decoder (golden outputs of the official code, float64).

The golden weights are in the official key layout (``neck.``, ``decode_head.``); they go through the very same key
mapping as the official checkpoint before they reach segment-anything's modules.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _golden import golden_weights, load_npz

from napari_focsam.models.decoding import decode, dense_positional_encoding, encode_prompts
from napari_focsam.models.fast_decoder import FastDecoder
from napari_focsam.models.sam import InteractiveModel
from napari_focsam.models.specs import get_spec
from napari_focsam.weights.checkpoint import to_model_keys

TOLERANCE = 1e-9


@pytest.fixture(scope="module")
def model() -> InteractiveModel:
    official = {"neck." + k: v for k, v in golden_weights("prompt_encoder").items()}
    official.update({"decode_head." + k: v for k, v in golden_weights("decoder").items()})
    model = InteractiveModel(get_spec("focsam_tiny")).double()
    result = model.load_state_dict(to_model_keys(official), strict=False)
    assert not result.unexpected_keys
    assert all(k.startswith(("image_encoder.", "refiner.")) for k in result.missing_keys)
    return model


@pytest.fixture(scope="module")
def embeds() -> torch.Tensor:
    return torch.from_numpy(load_npz("image_embeds.npz")["image_embeds"]).double()


@pytest.mark.parametrize("implementation", ["reference", "fast-fused", "fast-folded"])
@pytest.mark.parametrize("case", ["a", "b"])
def test_prompt_encoder_and_decoder_match_the_official_code(model, embeds, case, implementation):
    golden = load_npz("decoder_case.npz")
    coords = torch.from_numpy(golden[f"coords_{case}"])
    labels = torch.from_numpy(golden[f"labels_{case}"])
    prev = torch.from_numpy(golden["prev_logits_b"]) if case == "b" else None
    with torch.inference_mode():
        sparse, dense = encode_prompts(model.prompt_encoder, coords, labels, None, prev)
        image_pe = dense_positional_encoding(model.prompt_encoder)
        if implementation.startswith("fast"):
            fold_limit = 10**6 if implementation == "fast-folded" else 0
            out = FastDecoder(model.mask_decoder, image_pe, fold_limit=fold_limit)(embeds, sparse, dense)
        else:
            out = decode(model.mask_decoder, embeds, image_pe, sparse, dense)

    assert sparse.dtype == torch.float64
    np.testing.assert_allclose(sparse.numpy(), golden[f"sparse_embeds_{case}"], rtol=0, atol=TOLERANCE)
    # the padding point's token is exactly not_a_point_embed
    assert torch.equal(sparse[0, -1], model.prompt_encoder.not_a_point_embed.weight[0])
    assert float(dense.detach().sum()) == pytest.approx(float(golden[f"dense_embeds_sum_{case}"]), rel=1e-12, abs=1e-9)
    assert float(image_pe.sum()) == pytest.approx(float(golden["image_pos_embeds_sum"]), rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(out.logits.numpy(), golden[f"logits_{case}"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(out.token.numpy(), golden[f"mask_token_{case}"], rtol=0, atol=TOLERANCE)


def test_case_b_feeds_back_case_a_logits(model, embeds):
    """The golden case b used case a's raw logits as mask input: our case-a logits reproduce that input."""
    golden = load_npz("decoder_case.npz")
    np.testing.assert_array_equal(golden["prev_logits_b"], golden["logits_a"])
