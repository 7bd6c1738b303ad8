"""The fast image-encoder path against segment-anything's own ``ImageEncoderViT.forward`` on the same weights."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from napari_focsam._cancel import Cancelled, CancelToken
from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.sam_predictor import SamFamilyPredictor
from napari_focsam.engine.session import ObjectSession
from napari_focsam.engine.types import ImageEmbedding
from napari_focsam.models.fast_decoder import default_decoder_dtype
from napari_focsam.models.fast_encoder import FastImageEncoder, cpu_has_fast_bf16, default_encoder_dtype
from napari_focsam.models.sam import InteractiveModel
from napari_focsam.models.specs import get_spec
from napari_focsam.weights.loader import load_model

#: the tolerances the fast path is held to (the README and the benchmark state the same)
FP32_RTOL = 1e-5
BF16_RTOL = 0.01
MASK_AGREEMENT = 0.995


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random, including the relative-position tables (segment-anything initialises them to 0,
    which would hide any mistake in the relative-position term) and the norms' affine parameters."""
    generator = torch.Generator().manual_seed(seed)

    def draw(p: torch.Tensor, scale: float, offset: float = 0.0) -> None:
        p.copy_(offset + scale * torch.randn(p.shape, generator=generator))

    with torch.no_grad():
        for name, p in module.named_parameters():
            owner = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
            if "rel_pos" in name:
                draw(p, 0.5)
            elif "norm" in type(owner).__name__.lower() and name.endswith("weight"):
                draw(p, 0.1, 1.0)
            elif p.ndim > 1:
                draw(p, p[0].numel() ** -0.5)
            else:
                draw(p, 0.1)
    return module.eval()


def small_encoder(img_size: int, *, embed_dim: int = 64, heads: int = 2, depth: int = 2,
                  global_blocks: tuple[int, ...] = (1,), seed: int = 0) -> ImageEncoderViT:
    encoder = ImageEncoderViT(
        img_size=img_size, patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=heads, mlp_ratio=4.0,
        out_chans=32, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True,
        window_size=14, global_attn_indexes=global_blocks,
    )
    return randomise(encoder, seed)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def image_input(img_size: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the function itself
@pytest.mark.parametrize("img_size", [224, 448, 320, 1024])  # 14x14 (one window), 28x28, 20x20 and 64x64 (padded)
def test_fast_fp32_equals_reference(img_size):
    encoder = small_encoder(img_size)
    x = image_input(img_size)
    with torch.inference_mode():
        reference = encoder(x)
        fast = FastImageEncoder(encoder, torch.float32)(x)
    assert fast.shape == reference.shape and fast.dtype == reference.dtype
    assert rel_l2(fast, reference) < FP32_RTOL
    assert float((fast - reference).abs().max()) < FP32_RTOL * float(reference.abs().max())


def test_every_block_kind_matches_on_its_own():
    """Windowed-only and global-only encoders: a mistake in either attention kind cannot hide behind the other."""
    x = image_input(320)
    for global_blocks in ((), (0, 1)):
        encoder = small_encoder(320, global_blocks=global_blocks, seed=3)
        with torch.inference_mode():
            assert rel_l2(FastImageEncoder(encoder, torch.float32)(x), encoder(x)) < FP32_RTOL


def test_relative_position_term_is_used():
    """Changing one relative-position table changes the fast path's output exactly as it changes the reference."""
    encoder = small_encoder(320)
    x = image_input(320)
    fast = FastImageEncoder(encoder, torch.float32)
    with torch.inference_mode():
        before = fast(x)
    with torch.no_grad():
        encoder.blocks[1].attn.rel_pos_w.mul_(-2.0)  # also checks that derived copies follow the parameters
    with torch.inference_mode():
        after, reference = fast(x), encoder(x)
    assert rel_l2(after, before) > 1e-3
    assert rel_l2(after, reference) < FP32_RTOL


@pytest.mark.parametrize("budget", [1 << 12, 1 << 15, 1 << 17])
def test_mask_slicing_gives_the_same_result(budget):
    """Rows, heads and windows sliced to keep the attention mask small: the same numbers as one call."""
    encoder = small_encoder(320, heads=4)
    x = image_input(320)
    with torch.inference_mode():
        whole = FastImageEncoder(encoder, torch.float32, mask_budget=1 << 30)(x)
        sliced = FastImageEncoder(encoder, torch.float32, mask_budget=budget)(x)
    assert rel_l2(sliced, whole) < 1e-6


@pytest.mark.slow
def test_vit_b_sized_blocks_match():
    """ViT-B width and heads (768, 12, head dim 64) on the real 64x64 token grid: one windowed, one global block."""
    encoder = small_encoder(1024, embed_dim=768, heads=12, depth=2, global_blocks=(1,), seed=5)
    x = image_input(1024)
    with torch.inference_mode():
        reference = encoder(x)
        fast32 = FastImageEncoder(encoder, torch.float32)(x)
        fast16 = FastImageEncoder(encoder, torch.bfloat16)(x)
    assert rel_l2(fast32, reference) < FP32_RTOL
    assert rel_l2(fast16, reference) < BF16_RTOL


def test_bf16_within_tolerance_and_not_the_reference_numbers():
    encoder = small_encoder(1024, seed=2)
    x = image_input(1024)
    with torch.inference_mode():
        reference = encoder(x)
        fast16 = FastImageEncoder(encoder, torch.bfloat16)(x)
    assert fast16.dtype == torch.float32  # statistics and the output stay in float32
    error = rel_l2(fast16, reference)
    assert 1e-5 < error < BF16_RTOL  # really computed in bfloat16, and within the tolerance


def test_float64_model_runs_in_float64():
    encoder = small_encoder(320).double()
    x = image_input(320).double()
    with torch.inference_mode():
        fast = FastImageEncoder(encoder)(x)
        reference = encoder(x)
    assert fast.dtype == torch.float64 and rel_l2(fast, reference) < 1e-12


def test_bf16_results_do_not_depend_on_the_thread_count():
    """The stack pipeline's serial and Dask runs must agree bit for bit (they use different thread counts)."""
    encoder = small_encoder(1024, embed_dim=128, heads=4, seed=4)
    x = image_input(1024)
    fast = FastImageEncoder(encoder, torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            with torch.inference_mode():
                outs.append(fast(x))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(outs[0], o) for o in outs[1:])


# ------------------------------------------------------------------ through the predictor
@pytest.fixture(scope="module")
def tiny():
    loaded = load_model("sam_tiny", seed=7)
    randomise(loaded.model.image_encoder, seed=8)
    image = np.random.default_rng(3).integers(0, 256, (321, 481, 3), dtype=np.uint8)
    return loaded, image


def test_predictor_paths_agree_with_the_reference(tiny):
    loaded, image = tiny
    reference = SamFamilyPredictor(loaded)
    assert reference.encoder_attention == "reference"
    ref_features, geometry = reference.embed(image)
    fast32 = SamFamilyPredictor(loaded, encoder_attention="fast", encoder_dtype=torch.float32)
    fast16 = SamFamilyPredictor(loaded, encoder_attention="fast", encoder_dtype="bfloat16")
    f32, g32 = fast32.embed(image)
    f16, _ = fast16.embed(image)
    assert g32 == geometry and f32.dtype == ref_features.dtype == f16.dtype
    assert rel_l2(f32, ref_features) < FP32_RTOL
    assert rel_l2(f16, ref_features) < BF16_RTOL


def test_bf16_masks_agree_with_fp32_masks(tiny):
    loaded, image = tiny
    reference = SamFamilyPredictor(loaded)
    fast16 = SamFamilyPredictor(loaded, encoder_attention="fast", encoder_dtype=torch.bfloat16)
    clicks = [(100, 200, True), (50, 60, False), (300, 470, True), (200, 100, True)]
    masks = []
    for predictor in (reference, fast16):
        features, geometry = predictor.embed(image)
        session = ObjectSession(predictor, ImageEmbedding(features, geometry, "k"))
        masks.append([session.click(y, x, positive=p).copy() for y, x, p in clicks])
    for ref, fast in zip(*masks, strict=True):
        assert 0 < ref.sum() < ref.size  # a mask with both classes, so agreement means something
        assert (ref == fast).mean() >= MASK_AGREEMENT


def test_fingerprint_names_the_encoder_numerics(tiny):
    loaded, _ = tiny
    predictors = [
        SamFamilyPredictor(loaded),
        SamFamilyPredictor(loaded, encoder_autocast=torch.bfloat16),
        SamFamilyPredictor(loaded, encoder_attention="fast", encoder_dtype=torch.float32),
        SamFamilyPredictor(loaded, encoder_attention="fast", encoder_dtype=torch.bfloat16),
    ]
    prints = [p.fingerprint for p in predictors]
    assert len(set(prints)) == len(prints)
    # the reference paths keep the keys they had before the fast path existed: their caches stay valid
    assert prints[0].endswith("|encoder=float32") and prints[1].endswith("|encoder=bfloat16")
    assert "fast" in prints[2] and "float32" in prints[2] and "fast" in prints[3] and "bfloat16" in prints[3]


def test_options_are_checked(tiny):
    loaded, _ = tiny
    with pytest.raises(ValueError, match="encoder_attention"):
        SamFamilyPredictor(loaded, encoder_attention="flash")
    with pytest.raises(ValueError, match="encoder_dtype"):
        SamFamilyPredictor(loaded, encoder_attention="fast", encoder_autocast=torch.bfloat16)
    with pytest.raises(ValueError, match="reference encoder"):
        SamFamilyPredictor(loaded, encoder_attention="reference", encoder_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="unknown dtype"):
        SamFamilyPredictor(loaded, encoder_attention="fast", encoder_dtype="int8")


def test_manager_defaults_to_the_fast_path_in_the_devices_dtype():
    manager = ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True)
    predictor = manager.predictor
    assert predictor.encoder_attention == "fast"
    assert predictor.encoder_dtype == default_encoder_dtype("cpu") == (
        torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    old_style = ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True,
                                  encoder_autocast=torch.bfloat16).predictor
    assert old_style.encoder_attention == "reference" and old_style.encoder_autocast == torch.bfloat16
    exact = ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True, encoder_attention="reference")
    assert exact.predictor.fingerprint.endswith("|encoder=float32")
    float64 = ModelManager.load("sam_tiny", device="cpu", dtype=torch.float64, allow_random_weights=True)
    assert float64.predictor.encoder_dtype == torch.float64
    assert float64.predictor.decoder_upscale_dtype == torch.float64


def test_manager_defaults_to_the_devices_decoder_dtype():
    """The decoder's products with the image tokens (upscaling, attention) follow the same rule; the plain paths and
    autocast turn them off, and each can be turned off alone."""
    fast_dtype = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    predictor = ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True).predictor
    assert predictor.decoder_upscale_dtype == predictor.decoder_attention_dtype == default_decoder_dtype("cpu")
    assert default_decoder_dtype("cpu") == fast_dtype
    assert predictor._fast_decoder.upscaling.dtype == fast_dtype
    assert predictor._fast_decoder.attention_dtype == fast_dtype
    for options in ({"decoder": "reference"}, {"decoder_autocast": torch.bfloat16}):
        other = ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True, **options).predictor
        assert other.decoder_upscale_dtype == other.decoder_attention_dtype == torch.float32, options
    for option in ("decoder_upscale_dtype", "decoder_attention_dtype"):
        other = ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True, **{option: None}).predictor
        assert getattr(other, option) == torch.float32
        kept = "decoder_attention_dtype" if option == "decoder_upscale_dtype" else "decoder_upscale_dtype"
        assert getattr(other, kept) == fast_dtype
    loaded = load_model("sam_tiny", device="cpu")
    alone = SamFamilyPredictor(loaded)  # the predictor alone: the model's dtype
    assert alone.decoder_upscale_dtype == alone.decoder_attention_dtype == torch.float32
    for option in ("decoder_upscale_dtype", "decoder_attention_dtype"):
        with pytest.raises(ValueError, match=f"{option} applies to decoder='fast'"):
            SamFamilyPredictor(loaded, decoder="reference", **{option: torch.bfloat16})
    with pytest.raises(ValueError, match="unknown dtype"):
        SamFamilyPredictor(loaded, decoder_attention_dtype="int8")


def test_precision_float32_turns_every_lower_precision_default_off():
    exact = ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True, precision="float32").predictor
    assert exact.encoder_attention == "fast"
    assert exact.encoder_dtype == exact.decoder_upscale_dtype == exact.decoder_attention_dtype == torch.float32
    mixed = ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True, precision="float32",
                              decoder_attention_dtype=torch.bfloat16).predictor  # explicit options still apply
    assert mixed.decoder_attention_dtype == torch.bfloat16 and mixed.decoder_upscale_dtype == torch.float32
    with pytest.raises(ValueError, match="precision must be one of"):
        ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True, precision="half")
    # the fallback has no numerics to choose: the option is accepted and means nothing there
    assert ModelManager.load("fallback", precision="float32").is_fallback
    assert default_decoder_dtype("cpu", torch.float64) == torch.float64
    assert default_decoder_dtype("meta") == torch.float32


def test_default_dtype_rules():
    assert default_encoder_dtype("cpu", torch.float64) == torch.float64
    assert default_encoder_dtype("cpu", torch.bfloat16) == torch.bfloat16
    assert default_encoder_dtype("meta") == torch.float32


class CountingToken(CancelToken):
    """Cancels itself at the ``at``-th check: counts the cancellation points an embedding passes."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.checks = at, 0

    def raise_if_cancelled(self) -> None:
        self.checks += 1
        if self.checks >= self.at:
            self.cancel()
        super().raise_if_cancelled()


def test_cancellation_point_before_every_block(tiny):
    loaded, image = tiny
    predictor = SamFamilyPredictor(loaded, encoder_attention="fast", encoder_dtype=torch.float32)
    depth = len(loaded.model.image_encoder.blocks)
    never = CountingToken(at=10**9)
    predictor.embed(image, cancel=never)
    assert never.checks == depth
    for at in range(1, depth + 1):
        token = CountingToken(at=at)
        with pytest.raises(Cancelled):
            predictor.embed(image, cancel=token)
        assert token.checks == at


def test_cancelled_embedding_leaves_nothing_cached():
    manager = ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True)
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        manager.embed(image, cancel=token)
    embedding = manager.embed(image)
    assert not manager.last_embed.from_cache and embedding.features.shape == (1, 256, 64, 64)


def test_model_and_state_dict_are_untouched(tiny):
    loaded, image = tiny
    model = loaded.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.device("meta"):
        fresh_keys = list(InteractiveModel(get_spec("sam_tiny")).state_dict())
    for dtype in (torch.float32, torch.bfloat16):
        SamFamilyPredictor(loaded, encoder_attention="fast", encoder_dtype=dtype).embed(image)
    after = model.state_dict()
    assert list(after) == list(before) == fresh_keys
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_reduced_precision_within_tolerance():
    encoder = small_encoder(1024, embed_dim=128, heads=4, seed=9)
    x = image_input(1024)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # the convolutions in true float32, as on the CPU
    try:
        with torch.inference_mode():
            reference = encoder(x)
            encoder.cuda()
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                out = FastImageEncoder(encoder, dtype)(x.cuda()).cpu()
                assert rel_l2(out, reference) < (FP32_RTOL if dtype == torch.float32 else BF16_RTOL)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
