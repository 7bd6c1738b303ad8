"""The decoder of jittered copies (``VariantDecoder``) against segment-anything's decoder (``decode``), and the
stability it gives against the same stability computed with the reference decoder.

Tolerances (stated in ``docs/stability.md``): in the model's dtype the logits equal the reference to float rounding
(1e-5 of their scale in float32, 1e-10 in float64); with the image tokens in bfloat16 the logits stay within 1.5 %
(relative L2), 99.5 % of the mask pixels agree and ST moves by at most 0.005 (measured: 0.6 %, 99.8 %, 0.0008).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.session import ObjectSession
from napari_focsam.engine.stability import Jitter, jitter_prompts, st_score
from napari_focsam.engine.types import ImageEmbedding
from napari_focsam.models.decoding import decode, dense_positional_encoding, encode_prompts
from napari_focsam.models.sam import build_model
from napari_focsam.models.specs import get_spec
from napari_focsam.models.variant_decoder import VariantDecoder


@pytest.fixture(scope="module")
def model():
    return build_model(get_spec("sam_tiny"), seed=3)


def _inputs(model, batch: int, *, box: bool, mask: bool, seed: int, dtype=torch.float32):
    """B jittered copies of one prompt set (3 clicks, optionally a box), one mask input shared by all."""
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, 256, 64, 64, generator=generator, dtype=torch.float64).to(dtype)
    base = torch.rand(1, 3, 2, generator=generator, dtype=torch.float64) * 1000
    coords = (base + 15 * torch.randn(batch, 3, 2, generator=generator, dtype=torch.float64)).to(dtype)
    labels = torch.tensor([[1, 0, 1]] * batch)
    boxes = None
    if box:
        boxes = torch.tensor([[100.0, 200.0, 600.0, 700.0]], dtype=torch.float64)
        boxes = (boxes + 10 * torch.randn(batch, 4, generator=generator, dtype=torch.float64)).to(dtype)
    logits = 4 * torch.randn(1, 1, 256, 256, generator=generator, dtype=torch.float64).to(dtype) if mask else None
    sparse, dense = encode_prompts(model.prompt_encoder, coords, labels, boxes, logits)
    return embeds, sparse, dense


@pytest.mark.parametrize("box", [False, True])
@pytest.mark.parametrize("mask", [False, True])
def test_the_copies_equal_the_reference_decoder_in_float32(model, box, mask):
    with torch.inference_mode():
        embeds, sparse, dense = _inputs(model, 5, box=box, mask=mask, seed=1)
        image_pe = dense_positional_encoding(model.prompt_encoder)
        reference = decode(model.mask_decoder, embeds, image_pe, sparse, dense).logits
        logits = VariantDecoder(model.mask_decoder, image_pe)(embeds, sparse, dense[:1])
    assert logits.shape == reference.shape == (5, 1, 256, 256) and logits.dtype == torch.float32
    scale = float(reference.abs().max())
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5 * scale)
    confident = reference.abs() > 1e-4 * scale
    assert torch.equal((logits > 0)[confident], (reference > 0)[confident])


def test_the_copies_are_exact_to_rounding_in_float64():
    model64 = build_model(get_spec("sam_tiny"), seed=3).double()
    with torch.inference_mode():
        embeds, sparse, dense = _inputs(model64, 3, box=True, mask=True, seed=2, dtype=torch.float64)
        image_pe = dense_positional_encoding(model64.prompt_encoder)
        reference = decode(model64.mask_decoder, embeds, image_pe, sparse, dense).logits
        logits = VariantDecoder(model64.mask_decoder, image_pe)(embeds, sparse, dense[:1])
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bfloat16_copies_keep_st_within_the_stated_tolerance(model, seed):
    with torch.inference_mode():
        embeds, sparse, dense = _inputs(model, 8, box=False, mask=bool(seed % 2), seed=seed)
        image_pe = dense_positional_encoding(model.prompt_encoder)
        reference = decode(model.mask_decoder, embeds, image_pe, sparse, dense).logits
        logits = VariantDecoder(model.mask_decoder, image_pe)(embeds, sparse, dense[:1], torch.bfloat16)
    assert logits.dtype == torch.float32
    assert float((logits - reference).norm() / reference.norm()) < 0.015
    assert float(((logits > 0) == (reference > 0)).float().mean()) > 0.995
    assert abs(st_score(logits > 0) - st_score(reference > 0)) < 0.005


def test_a_region_limits_the_upscaling_and_nothing_else(model):
    with torch.inference_mode():
        embeds, sparse, dense = _inputs(model, 3, box=False, mask=True, seed=4)
        decoder = VariantDecoder(model.mask_decoder, dense_positional_encoding(model.prompt_encoder))
        full = decoder(embeds, sparse, dense[:1])
        part = decoder(embeds, sparse, dense[:1], region=(49, 40))
    assert torch.equal(part[..., :196, :160], full[..., :196, :160])
    assert not part[..., 196:, :].any() and not part[..., 160:].any()
    assert full[..., 196:, :].abs().min() > 0  # the region really left something out


def test_one_embedding_and_one_dense_prompt_only(model):
    with torch.inference_mode():
        embeds, sparse, dense = _inputs(model, 2, box=False, mask=False, seed=5)
        decoder = VariantDecoder(model.mask_decoder, dense_positional_encoding(model.prompt_encoder))
        with pytest.raises(ValueError, match="share one image embedding"):
            decoder(embeds.expand(2, -1, -1, -1), sparse, dense[:1])


@pytest.mark.parametrize("precision", ["float32", None])
def test_stability_equals_the_reference_computation(precision):
    """ST of a SAM object (default numerics: bfloat16 copies where the CPU has native bfloat16) against Stable-SAM's
    Eq. 1 on the same jittered copies decoded one by one with segment-anything's decoder in float32."""
    kwargs = {"precision": precision} if precision else {}
    manager = ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True, **kwargs)
    predictor = manager.predictor
    assert predictor._variant_decoder is not None
    size = (96, 128)
    torch.manual_seed(0)
    embedding = ImageEmbedding(torch.randn(1, 256, 64, 64), predictor.transform.geometry(size), key="test")
    session = ObjectSession(predictor, embedding)
    session.click(50, 60)
    session.click(30, 40, False)
    jitter = Jitter(copies=8, noise=0.2)
    result = session.stability(jitter)

    step, previous = session.current, session._history[session._cursor - 2].prediction.state
    copies = jitter_prompts(step.prompts, size, float(np.count_nonzero(step.mask)), jitter)
    masks = []
    with torch.inference_mode():
        for prompts in copies:
            points, labels, box, mask_input, _ = predictor._model_inputs(prompts, embedding.geometry, previous)
            sparse, dense = predictor._encode_prompts(points, labels, box, embedding.geometry, mask_input)
            logits = decode(predictor.model.mask_decoder, embedding.features, predictor._image_pe, sparse,
                            dense).logits
            masks.append(logits[0, 0, :192] > 0)  # 96 x 128 → 768 x 1024: 3/4 of the rows of the 256² frame
    reference = st_score(torch.stack(masks))
    tolerance = 1e-6 if precision == "float32" else 0.005
    assert abs(result.score - reference) <= tolerance
    assert result.unstable.shape == size
