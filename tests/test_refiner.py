"""FocSAM focus refiner: official key layout, golden parity with the official code, and hand-derivable behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _golden import golden_weights, load_npz, weight_specs
from _refiner_support import GRID, INPUT, logits_from_box, random_inputs, small_refiner, touched_cells

from napari_focsam._cancel import Cancelled, CancelToken
from napari_focsam.models.deform_conv import modulated_deform_conv3x3
from napari_focsam.models.focus import (
    focus_bbox,
    mask_bbox,
    plan_focus,
    upsampled_foreground,
)
from napari_focsam.models.refiner import FocusRefiner, NullSlotAttention

# Max |refined - golden| allowed per case: case 1 hits one mmcv float32-floor sample (see the golden README).
GOLDEN_ATOL = {0: 1e-9, 1: 1e-7, 2: 1e-9}
# Tokens that no block selects, per case (golden README table).
GOLDEN_UNTOUCHED = {0: 3072, 1: 0, 2: 2304}
# float32 vs the float64 golden output; measured max 5.6e-6 on outputs of magnitude ~4.4.
FLOAT32_ATOL = 5e-5


# ------------------------------------------------------------------------------------------------- golden fixtures


def official_refiner(weights: dict[str, torch.Tensor], dtype: torch.dtype = torch.float64) -> FocusRefiner:
    """A full-size refiner holding private copies of ``weights`` (built on the meta device: no random init)."""
    with torch.device("meta"):
        model = FocusRefiner()
    copies = {key: value.to(dtype, copy=True) for key, value in weights.items()}
    model.load_state_dict(copies, strict=True, assign=True)
    return model.eval()


@pytest.fixture(scope="module")
def golden_refiner() -> FocusRefiner:
    return official_refiner(golden_weights("refiner"))


@pytest.fixture(scope="module")
def golden_embeds() -> torch.Tensor:
    return torch.from_numpy(load_npz("image_embeds.npz")["image_embeds"]).double()


@pytest.fixture(scope="module")
def golden_runs(golden_refiner: FocusRefiner, golden_embeds: torch.Tensor) -> dict[int, tuple[dict, torch.Tensor]]:
    """Each golden case with the float64 refiner output (computed once per module)."""
    runs = {}
    for case in range(3):
        data = load_npz(f"refiner_case_{case}.npz")
        with torch.no_grad():
            out = golden_refiner(
                golden_embeds, torch.from_numpy(data["coarse_logits"]), torch.from_numpy(data["mask_token"])
            )
        runs[case] = (data, out)
    return runs


# -------------------------------------------------------------------------------------- 1. official state dict


def meta_refiner() -> FocusRefiner:
    with torch.device("meta"):
        return FocusRefiner()


def test_state_dict_structure_without_reference() -> None:
    keys = meta_refiner().state_dict().keys()
    assert len(keys) == 662
    assert {k.split(".")[1] for k in keys if "cls_scale_proj" in k} == {str(i) for i in range(11)}
    assert "blocks.0.cls2img.conv2.dcn.weight" in keys and "blocks.0.cls2img.conv2.dcn.bias" not in keys


def test_state_dict_keys_and_shapes_equal_official() -> None:
    official = [(spec["key"], tuple(spec["shape"])) for spec in weight_specs("refiner")]
    ours = [(key, tuple(value.shape)) for key, value in meta_refiner().state_dict().items()]
    assert len(official) == 662
    assert ours == official


def test_golden_weights_load_strictly_and_strictness_bites() -> None:
    weights = golden_weights("refiner")
    model = meta_refiner().to_empty(device="cpu").double()  # real storage, no random init
    model.load_state_dict(weights, strict=True)
    for key, value in model.state_dict().items():
        assert value.dtype == torch.float64 and torch.equal(value, weights[key]), key

    missing = dict(weights)
    del missing["blocks.5.cls2img.relu1.pixel_scale"]
    with pytest.raises(RuntimeError, match="Missing key"):
        meta_refiner().load_state_dict(missing, strict=True, assign=True)

    extra = dict(weights)
    extra["blocks.11.cls_scale_proj.weight"] = torch.ones(1, 1, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        meta_refiner().load_state_dict(extra, strict=True, assign=True)


@pytest.mark.parametrize("section, count", [("decoder", 120), ("prompt_encoder", 17)])
def test_golden_weight_sections_regenerate(section: str, count: int) -> None:
    weights = golden_weights(section)  # checks every tensor's seed, sum and first element
    assert len(weights) == count
    assert [key for key in weights] == [spec["key"] for spec in weight_specs(section)]
    assert all(value.dtype == torch.float64 for value in weights.values())
    with pytest.raises(ValueError):
        golden_weights("backbone")


# ------------------------------------------------------------------------------------------- 2. golden parity


@pytest.mark.slow
@pytest.mark.parametrize("case", [0, 1, 2])
def test_golden_refined_embedding(golden_runs: dict, case: int) -> None:
    data, out = golden_runs[case]
    diff = (out - torch.from_numpy(data["refined"])).abs().max().item()
    assert diff <= GOLDEN_ATOL[case], f"case {case}: max |diff| {diff:.3e}"


@pytest.mark.parametrize("case", [0, 1, 2])
def test_golden_focus_geometry(case: int) -> None:
    data = load_npz(f"refiner_case_{case}.npz")
    logits = torch.from_numpy(data["coarse_logits"])
    assert mask_bbox(upsampled_foreground(logits, INPUT)) == [tuple(data["bbox_1024"].tolist())]
    boxes = focus_bbox(logits, INPUT, 1.4)
    assert boxes == [tuple(data["bbox_expanded_1024"].tolist())]

    plan = plan_focus(boxes, INPUT, GRID, 16)
    mask64 = np.unpackbits(data["mask64"])[: GRID[0] * GRID[1]].reshape(GRID).astype(bool)
    assert np.array_equal(plan.cell_mask[0].numpy(), mask64)
    assert np.array_equal(plan.plain.selected[0].numpy(), data["windows_plain"])
    assert np.array_equal(plan.shifted.selected[0].numpy(), data["windows_shift"])
    counts = [plan.shifted.count if index % 2 else plan.plain.count for index in range(12)]
    assert counts == data["selected_counts_per_block"].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("case", [0, 1, 2])
def test_golden_untouched_tokens_are_embed_proj(
    golden_refiner: FocusRefiner, golden_embeds: torch.Tensor, golden_runs: dict, case: int
) -> None:
    data, out = golden_runs[case]
    plan = golden_refiner.plan(torch.from_numpy(data["coarse_logits"]), GRID, INPUT)
    untouched = ~touched_cells([(plan.plain_grid, plan.plain.selected), (plan.shifted_grid, plan.shifted.selected)])
    assert int(untouched.sum()) == GOLDEN_UNTOUCHED[case]
    with torch.no_grad():
        projected = golden_refiner.embed_proj(golden_embeds)
    assert torch.equal(out[..., untouched], projected[..., untouched])
    golden = torch.from_numpy(data["refined"])
    assert torch.allclose(golden[..., untouched], projected[..., untouched], rtol=0, atol=1e-12)
    if case != 1:
        assert not torch.isclose(out[..., ~untouched], projected[..., ~untouched]).all()


@pytest.mark.slow
def test_golden_with_gather_deform_conv(golden_refiner: FocusRefiner, golden_embeds: torch.Tensor) -> None:
    data = load_npz("refiner_case_2.npz")
    golden_refiner.set_dcn_backend("gather")
    try:
        with torch.no_grad():
            out = golden_refiner(
                golden_embeds, torch.from_numpy(data["coarse_logits"]), torch.from_numpy(data["mask_token"])
            )
    finally:
        golden_refiner.set_dcn_backend("torchvision")
    assert (out - torch.from_numpy(data["refined"])).abs().max().item() <= GOLDEN_ATOL[2]


@pytest.mark.slow
def test_float32_close_to_float64_golden(golden_embeds: torch.Tensor) -> None:
    model = official_refiner(golden_weights("refiner"), torch.float32)
    data = load_npz("refiner_case_0.npz")
    with torch.no_grad():
        out = model(
            golden_embeds.float(),
            torch.from_numpy(data["coarse_logits"]).float(),
            torch.from_numpy(data["mask_token"]).float(),
        )
    assert out.dtype == torch.float32
    assert (out.double() - torch.from_numpy(data["refined"])).abs().max().item() <= FLOAT32_ATOL


# -------------------------------------------------------------------------------------- 3. numerical building blocks


def test_deform_conv_matches_torchvision() -> None:
    from torchvision.ops import deform_conv2d

    generator = torch.Generator().manual_seed(5)
    image = torch.randn(3, 16, 16, 24, generator=generator, dtype=torch.float64)
    offset = 4.0 * torch.randn(3, 18, 16, 16, generator=generator, dtype=torch.float64)
    offset[0, :, :4] = torch.randint(-3, 4, (18, 4, 16), generator=generator).double()  # integer and edge samples
    mask = torch.rand(3, 9, 16, 16, generator=generator, dtype=torch.float64)
    weight = torch.randn(20, 24, 3, 3, generator=generator, dtype=torch.float64)
    ours = modulated_deform_conv3x3(image, offset, mask, weight)
    reference = deform_conv2d(image.permute(0, 3, 1, 2), offset, weight, padding=1, mask=mask).permute(0, 2, 3, 1)
    assert (ours - reference).abs().max().item() < 1e-12


def test_attention_fast_paths_match_definition() -> None:
    torch.manual_seed(7)
    attention = NullSlotAttention(32, 4).double()
    with torch.no_grad():
        for param in attention.parameters():
            param.normal_(std=0.3)
    tokens = torch.randn(5, 256, 32, dtype=torch.float64)
    query = torch.randn(5, 1, 32, dtype=torch.float64)
    assert torch.allclose(attention.self_attend(tokens), attention(tokens, tokens), rtol=0, atol=1e-12)
    assert torch.allclose(attention.attend_single(query, tokens), attention(query, tokens), rtol=0, atol=1e-12)
    # The null slot is real: without it the result differs.
    q = attention._heads(attention.q_proj(query))
    k = attention._heads(attention.k_proj(tokens))
    v = attention._heads(attention.v_proj(tokens))
    plain = attention._merge(F.scaled_dot_product_attention(q, k, v))
    assert not torch.allclose(plain, attention(query, tokens))


# ------------------------------------------------------------------------------------------ 3. model behaviour


def test_zero_gammas_give_embed_proj_exactly() -> None:
    model = small_refiner(dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("gamma1", "gamma2")):
                param.zero_()
    embeds, token = random_inputs(1, 32, torch.float32)
    with torch.no_grad():
        out = model(embeds, logits_from_box((300, 300, 700, 700)).float(), token)
        projected = model.embed_proj(embeds)
    assert torch.equal(out, projected)


def test_float32_run_close_to_float64() -> None:
    model64 = small_refiner(torch.float64)
    model32 = small_refiner(torch.float32)
    embeds, token = random_inputs(1, 32)
    logits = logits_from_box((200, 150, 700, 600))
    with torch.no_grad():
        out64 = model64(embeds, logits, token)
        out32 = model32(embeds.float(), logits.float(), token.float())
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64
    assert (out32.double() - out64).abs().max().item() < 1e-5


def test_batch_equals_single_calls() -> None:
    model = small_refiner()
    embeds, tokens = random_inputs(2, 32)
    logits = torch.cat([logits_from_box((0, 650, 250, 1024)), logits_from_box((520, 300, 640, 420))])
    with torch.no_grad():
        batched = model(embeds, logits, tokens)
        singles = [model(embeds[i : i + 1], logits[i : i + 1], tokens[i : i + 1]) for i in range(2)]
    assert torch.allclose(batched, torch.cat(singles), rtol=0, atol=1e-12)
    plan = model.plan(logits, GRID)
    assert plan.plain.count == sum(model.plan(logits[i : i + 1], GRID).plain.count for i in range(2)) == 4 + 2
    assert plan.plain.batch_index.tolist() == [0, 0, 0, 0, 1, 1]


def test_forward_equals_refine_with_explicit_plan() -> None:
    model = small_refiner()
    embeds, token = random_inputs(1, 32)
    with torch.no_grad():
        via_logits = model(embeds, -torch.ones(1, 1, 256, 256, dtype=torch.float64), token)
        via_plan = model.refine(embeds, token, plan_focus([(0, 0, 1024, 1024)], INPUT, GRID, 16))
    assert torch.equal(via_logits, via_plan)


def test_non_multiple_grid_is_padded_and_cropped() -> None:
    model = small_refiner(depth=2)
    generator = torch.Generator().manual_seed(11)
    embeds = torch.randn(1, 32, 40, 56, generator=generator, dtype=torch.float64)
    token = torch.randn(1, 1, 32, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        out = model(embeds, torch.ones(1, 1, 160, 224, dtype=torch.float64), token, input_size=(640, 896))
    assert out.shape == embeds.shape and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------- 4. cancellation


def test_cancelled_token_raises() -> None:
    model = small_refiner(depth=2)
    embeds, token = random_inputs(1, 32)
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled):
        model(embeds, logits_from_box((300, 300, 700, 700)), token, cancel=cancel)


def test_cancel_is_polled_between_blocks() -> None:
    model = small_refiner(depth=4)
    embeds, token = random_inputs(1, 32)
    cancel = CancelToken()
    ran: list[int] = []

    def record(index: int):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            ran.append(index)
            if index == 1:
                cancel.cancel()

        return hook

    for index, block in enumerate(model.blocks):
        block.register_forward_pre_hook(record(index))
    with pytest.raises(Cancelled):
        model(embeds, logits_from_box((300, 300, 700, 700)), token, cancel=cancel)
    assert ran == [0, 1]
