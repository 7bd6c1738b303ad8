"""The fused mask-decoder pass (``FastDecoder``) against the plain one (``decode``) on the same weights.

The official golden data check both in float64 (``test_golden_decoder.py``); here: float32 tolerance, batches,
boxes, mask input, the degenerate shapes it refuses, and that a model's predictor uses it.
"""

from __future__ import annotations

import pytest
import torch

from napari_focsam.models.decoding import decode, dense_positional_encoding, encode_prompts
from napari_focsam.models.fast_decoder import FastDecoder
from napari_focsam.models.sam import build_model
from napari_focsam.models.specs import get_spec
from napari_focsam.stack.worker import thread_count_invariant


@pytest.fixture(scope="module")
def model():
    return build_model(get_spec("sam_tiny"), seed=3)


def _prompts(model, batch: int, *, box: bool, mask: bool, dtype=torch.float32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    coords = torch.rand(batch, 3, 2, generator=generator, dtype=torch.float64).to(dtype) * 1000
    labels = torch.tensor([[1, 0, 1]] * batch)
    boxes = torch.tensor([[100.0, 200.0, 600.0, 700.0]] * batch, dtype=dtype) if box else None
    logits = torch.randn(batch, 1, 256, 256, generator=generator, dtype=torch.float64).to(dtype) if mask else None
    return encode_prompts(model.prompt_encoder, coords, labels, boxes, logits)


@pytest.mark.parametrize("fold_limit", [0, 10**6], ids=["fused", "folded"])
@pytest.mark.parametrize("box", [False, True])
@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("batch", [1, 2])
def test_fast_decoder_equals_the_reference_in_float32(model, box, mask, batch, fold_limit):
    generator = torch.Generator().manual_seed(1)
    embeds = torch.randn(1, 256, 64, 64, generator=generator)
    with torch.inference_mode():
        sparse, dense = _prompts(model, batch, box=box, mask=mask)
        image_pe = dense_positional_encoding(model.prompt_encoder)
        reference = decode(model.mask_decoder, embeds, image_pe, sparse, dense)
        fast = FastDecoder(model.mask_decoder, image_pe, fold_limit=fold_limit)(embeds, sparse, dense)
    assert fast.logits.shape == reference.logits.shape == (batch, 1, 256, 256)
    assert fast.logits.is_contiguous()
    scale = reference.logits.abs().max()
    torch.testing.assert_close(fast.logits, reference.logits, rtol=0, atol=1e-5 * float(scale))
    torch.testing.assert_close(fast.token, reference.token, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.iou, reference.iou, rtol=1e-5, atol=1e-6)
    # the masks themselves: every pixel away from the zero crossing agrees
    confident = reference.logits.abs() > 1e-4 * scale
    assert torch.equal((fast.logits > 0)[confident], (reference.logits > 0)[confident])


@pytest.mark.parametrize("fold_limit", [0, 10**6], ids=["fused", "folded"])
def test_fast_decoder_in_float64_is_exact_to_rounding(model, fold_limit):
    model64 = build_model(get_spec("sam_tiny"), seed=3).double()
    embeds = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.inference_mode():
        sparse, dense = _prompts(model64, 1, box=True, mask=True, dtype=torch.float64)
        image_pe = dense_positional_encoding(model64.prompt_encoder)
        reference = decode(model64.mask_decoder, embeds, image_pe, sparse, dense)
        fast = FastDecoder(model64.mask_decoder, image_pe, fold_limit=fold_limit)(embeds, sparse, dense)
    assert fast.logits.dtype == torch.float64
    torch.testing.assert_close(fast.logits, reference.logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(fast.token, reference.token, rtol=0, atol=1e-12)


def test_the_path_follows_the_number_of_tokens(model):
    """Few prompt tokens: attention folded onto the tokens' side; many: fused projections of the image tokens."""
    image_pe = dense_positional_encoding(model.prompt_encoder)
    fast = FastDecoder(model.mask_decoder, image_pe)
    embeds = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(4))
    calls = []
    original = FastDecoder._layer_folded

    def spy(self, *args):
        calls.append(True)
        return original(self, *args)

    for clicks in (2, 30):
        coords = torch.rand(1, clicks, 2, generator=torch.Generator().manual_seed(clicks)) * 1000
        labels = torch.ones(1, clicks, dtype=torch.long)
        with torch.inference_mode():
            sparse, dense = encode_prompts(model.prompt_encoder, coords, labels, None, None)
            calls.clear()
            FastDecoder._layer_folded = spy
            try:
                out = fast(embeds, sparse, dense)
            finally:
                FastDecoder._layer_folded = original
            reference = decode(model.mask_decoder, embeds, image_pe, sparse, dense)
        assert bool(calls) == (clicks == 2)
        torch.testing.assert_close(out.logits, reference.logits, rtol=0,
                                   atol=1e-5 * float(reference.logits.abs().max()))


def test_other_upscaling_layers_are_refused(model):
    import copy

    decoder = copy.deepcopy(model.mask_decoder)
    decoder.output_upscaling[0] = torch.nn.ConvTranspose2d(256, 64, kernel_size=3, stride=2)
    with pytest.raises(ValueError, match="2x2 stride-2"):
        FastDecoder(decoder, dense_positional_encoding(model.prompt_encoder))


@pytest.mark.parametrize("fold_limit", [0, 10**6], ids=["fused", "folded"])
def test_bfloat16_upscaling_stays_within_the_stated_tolerance(model, fold_limit):
    """Only the output upscaling in bfloat16: logits within 1 % (relative L2) of float32, float32 out, and every
    pixel whose logit is clear of zero by 2 % of the scale keeps its side."""
    embeds = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        sparse, dense = _prompts(model, 1, box=False, mask=True)
        image_pe = dense_positional_encoding(model.prompt_encoder)
        reference = FastDecoder(model.mask_decoder, image_pe, fold_limit=fold_limit)(embeds, sparse, dense)
        low = FastDecoder(model.mask_decoder, image_pe, fold_limit=fold_limit, upscale_dtype=torch.bfloat16)
        out = low(embeds, sparse, dense)
    assert out.logits.dtype == torch.float32 and out.logits.is_contiguous()
    assert low.upscaling.dtype == torch.bfloat16
    relative = float((out.logits - reference.logits).norm() / reference.logits.norm())
    assert 0 < relative < 0.01
    torch.testing.assert_close(out.token, reference.token)  # the transformer is untouched
    confident = reference.logits.abs() > 0.02 * reference.logits.abs().max()
    assert torch.equal((out.logits > 0)[confident], (reference.logits > 0)[confident])


@pytest.mark.parametrize("batch", [1, 2])
def test_bfloat16_attention_stays_within_the_stated_tolerance(model, batch):
    """The folded attention's products with the image tokens in bfloat16 (upscaling too, as by default): logits and
    the mask token within 1 % (relative L2) of float32, the IoU estimate within 1e-3, float32 out, and every pixel
    whose logit is clear of zero by 5 % of the scale keeps its side. The fused path (many clicks) ignores the
    option."""
    embeds = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(5))
    low = {"upscale_dtype": torch.bfloat16, "attention_dtype": torch.bfloat16}
    with torch.inference_mode():
        sparse, dense = _prompts(model, batch, box=False, mask=True)
        image_pe = dense_positional_encoding(model.prompt_encoder)
        reference = FastDecoder(model.mask_decoder, image_pe, fold_limit=10**6)(embeds, sparse, dense)
        out = FastDecoder(model.mask_decoder, image_pe, fold_limit=10**6, **low)(embeds, sparse, dense)
        fused = FastDecoder(model.mask_decoder, image_pe, fold_limit=0, attention_dtype=torch.bfloat16)
        fused_reference = FastDecoder(model.mask_decoder, image_pe, fold_limit=0)(embeds, sparse, dense)
        assert torch.equal(fused(embeds, sparse, dense).logits, fused_reference.logits)
    assert out.logits.dtype == out.token.dtype == out.iou.dtype == torch.float32
    for name in ("logits", "token"):
        got, expected = getattr(out, name), getattr(reference, name)
        relative = float((got - expected).norm() / expected.norm())
        assert 0 < relative < 0.01, (name, relative)
    assert float((out.iou - reference.iou).abs().max()) < 1e-3  # (an IoU estimate near 0 here: absolute)
    confident = reference.logits.abs() > 0.05 * reference.logits.abs().max()
    assert torch.equal((out.logits > 0)[confident], (reference.logits > 0)[confident])


def test_lower_precisions_stand_aside_while_onednn_is_off(model):
    """Without oneDNN torch's bfloat16 GEMMs are 10-500x slower than float32: while ``torch.backends.mkldnn`` is
    off (as in the stack jobs) the decoder runs in the model's dtype, exactly as one built without the options."""
    embeds = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(7))
    image_pe = dense_positional_encoding(model.prompt_encoder)
    low = FastDecoder(model.mask_decoder, image_pe, upscale_dtype=torch.bfloat16, attention_dtype=torch.bfloat16)
    exact = FastDecoder(model.mask_decoder, image_pe)
    with torch.inference_mode():
        sparse, dense = _prompts(model, 1, box=False, mask=True)
        fast = low(embeds, sparse, dense)
        assert low.precisions(embeds.device) == (torch.bfloat16, torch.bfloat16)
        with thread_count_invariant():  # oneDNN off, as in the stack jobs
            assert low.precisions(embeds.device) == (torch.float32, torch.float32)
            plain = low(embeds, sparse, dense)
            expected = exact(embeds, sparse, dense)
        again = low(embeds, sparse, dense)
    assert torch.equal(plain.logits, expected.logits) and torch.equal(plain.token, expected.token)
    assert not torch.equal(fast.logits, expected.logits)
    assert torch.equal(again.logits, fast.logits)  # back in bfloat16 once oneDNN is on again


def test_the_fold_limit_follows_the_calls_attention_dtype(model):
    """The measured crossovers: folded up to 18 clicks in the model's dtype, up to 58 with the attention in bfloat16
    (and back to 18 while oneDNN is off, when the attention runs in the model's dtype)."""
    image_pe = dense_positional_encoding(model.prompt_encoder)
    embeds = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(8))
    exact = FastDecoder(model.mask_decoder, image_pe)
    low = FastDecoder(model.mask_decoder, image_pe, attention_dtype=torch.bfloat16)

    def folds(decoder: FastDecoder, clicks: int) -> bool:
        calls = []
        original = decoder._layer_folded
        decoder._layer_folded = lambda *args: calls.append(1) or original(*args)
        coords = torch.rand(1, clicks, 2, generator=torch.Generator().manual_seed(clicks)) * 1000
        with torch.inference_mode():
            sparse, dense = encode_prompts(model.prompt_encoder, coords, torch.ones(1, clicks, dtype=torch.long))
            decoder(embeds, sparse, dense)
        del decoder._layer_folded
        return bool(calls)

    assert folds(exact, 18) and not folds(exact, 19)
    assert folds(low, 58) and not folds(low, 59)
    with thread_count_invariant():  # oneDNN off, as in the stack jobs
        assert folds(low, 18) and not folds(low, 19)
    assert FastDecoder(model.mask_decoder, image_pe, fold_limit=0).fold_limit == 0


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["float32", "bfloat16"])
def test_scratch_buffers_never_leak_into_results(model, dtype):
    """The large intermediates live in per-thread buffers reused by every call: a later call (other prompts, other
    embedding, another thread at the same time) must not change an earlier result, and each equals a fresh decoder's."""
    import threading

    image_pe = dense_positional_encoding(model.prompt_encoder)
    low = {"upscale_dtype": dtype, "attention_dtype": dtype}
    shared = FastDecoder(model.mask_decoder, image_pe, **low)
    inputs = []
    for seed in range(4):
        embeds = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(10 + seed))
        with torch.inference_mode():
            inputs.append((embeds, *_prompts(model, 1, box=False, mask=seed % 2 == 1, seed=seed)))
    with torch.inference_mode():
        expected = [FastDecoder(model.mask_decoder, image_pe, **low)(*args) for args in inputs]
        first = shared(*inputs[0])
        kept = first.logits.clone()
        results: dict[int, object] = {}

        def work(i: int) -> None:
            with torch.inference_mode():
                for _ in range(3):
                    results[i] = shared(*inputs[i])

        threads = [threading.Thread(target=work, args=(i,)) for i in range(1, 4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert torch.equal(first.logits, kept)
    for i in range(1, 4):
        assert torch.equal(results[i].logits, expected[i].logits)
        assert torch.equal(results[i].token, expected[i].token)


def test_the_decoder_runs_under_autocast(model):
    """``decoder_autocast``: the scratch buffers stand aside (autocast decides the dtypes), and the result stays
    close to float32."""
    embeds = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(6))
    image_pe = dense_positional_encoding(model.prompt_encoder)
    fast = FastDecoder(model.mask_decoder, image_pe)
    with torch.inference_mode():
        sparse, dense = _prompts(model, 1, box=False, mask=True)
        reference = fast(embeds, sparse, dense)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fast(embeds, sparse, dense)
        again = fast(embeds, sparse, dense)
    relative = float((low.logits.float() - reference.logits).norm() / reference.logits.norm())
    assert relative < 0.05
    assert torch.equal(again.logits, reference.logits)  # back to the buffers, same result
