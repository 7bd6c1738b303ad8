"""HQ-SAM against the official ``segment_anything_hq`` package, on the same random weights in the official layout.

The official model is built from the package's own classes with a reduced encoder (the package's builders only make
ViT-B/L/H, whose 1024² forward takes tens of seconds on a loaded CPU): width 64, three blocks, global attention in
blocks 1 and 2, so that "the first global-attention block" is not the last one. The decoder is the full HQ decoder.
Its ``state_dict`` is saved with ``torch.save`` (the layout of ``sam_hq_vit_*.pth``) and loaded through our loader.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from napari_focsam.engine.sam_predictor import SamFamilyPredictor
from napari_focsam.engine.session import ObjectSession
from napari_focsam.engine.types import ImageEmbedding, Prompts
from napari_focsam.models.decoding import encode_prompts
from napari_focsam.models.fast_encoder import FastImageEncoder
from napari_focsam.models.hq_decoder import decode_hq
from napari_focsam.models.specs import get_spec
from napari_focsam.weights.checkpoint import CheckpointError
from napari_focsam.weights.loader import load_model

hq = pytest.importorskip("segment_anything_hq", reason="the official HQ-SAM package (segment-anything-hq) is needed")

#: the bf16 tolerance of the fast encoder (relative L2), as for SAM's embedding
BF16_REL = 1e-2


def _official_tiny() -> torch.nn.Module:
    from segment_anything_hq.modeling import ImageEncoderViT, MaskDecoderHQ, PromptEncoder, Sam, TwoWayTransformer

    enc = get_spec("sam_hq_tiny").encoder
    torch.manual_seed(11)
    sam = Sam(
        image_encoder=ImageEncoderViT(depth=enc.depth, embed_dim=enc.embed_dim, img_size=1024, mlp_ratio=4,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=enc.num_heads,
                                      patch_size=16, qkv_bias=True, use_rel_pos=True,
                                      global_attn_indexes=list(enc.global_attn_indexes), window_size=14,
                                      out_chans=256),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoderHQ(num_multimask_outputs=3,
                                   transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                                                 num_heads=8),
                                   transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
                                   vit_dim=enc.embed_dim),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    with torch.no_grad():  # every parameter random (the default init leaves e.g. rel_pos at zero)
        for name, param in sam.named_parameters():
            is_norm = name.endswith(".weight") and param.ndim == 1
            param.copy_((1.0 if is_norm else 0.0) + 0.05 * torch.randn_like(param))
    return sam.eval()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from segment_anything_hq import SamPredictor

    official = _official_tiny()
    path = tmp_path_factory.mktemp("hq") / "sam_hq_vit_tiny.pth"
    torch.save(official.state_dict(), path)
    loaded = load_model("sam_hq_tiny", path)
    image = np.random.default_rng(5).integers(0, 256, (150, 230, 3), dtype=np.uint8)
    reference = SamPredictor(official)
    reference.set_image(image)
    ours = SamFamilyPredictor(loaded)  # reference encoder and decoder, float32
    features, geometry, extras = ours.embed(image)
    return reference, ours, ImageEmbedding(features, geometry, "k", extras), image, path


def test_embedding_and_early_features_match(pair):
    reference, ours, embedding, image, _ = pair
    assert torch.equal(reference.features, embedding.features)
    x = ours.transform.image_to_input(image, ours.device, ours.dtype)
    _, early = ours._encode(x, None)
    assert torch.equal(reference.interm_features[0], early)


def test_fast_encoder_early_features_within_bf16_tolerance(pair):
    reference, ours, _, image, _ = pair
    x = ours.transform.image_to_input(image, ours.device, ours.dtype)
    with torch.inference_mode():
        emb32, early32 = FastImageEncoder(ours.model.image_encoder, torch.float32)(x, early=True)
        _, early16 = FastImageEncoder(ours.model.image_encoder, torch.bfloat16)(x, early=True)
    ref = reference.interm_features[0]
    assert torch.allclose(early32, ref, rtol=1e-5, atol=1e-5)
    assert torch.allclose(emb32, reference.features, rtol=1e-5, atol=1e-5)
    rel = torch.linalg.vector_norm(early16.float() - ref) / torch.linalg.vector_norm(ref)
    assert rel < BF16_REL, f"bf16 early features off by {rel:.2e} (relative L2)"


CASES = {
    "points": dict(point_coords=np.array([[120.0, 70.0], [60.0, 30.0]]), point_labels=np.array([1, 0])),
    "box": dict(box=np.array([40.0, 20.0, 190.0, 120.0])),
    "points+box": dict(point_coords=np.array([[100.0, 80.0]]), point_labels=np.array([0]),
                       box=np.array([40.0, 20.0, 190.0, 120.0])),
}


def _ours(ours, embedding, case, mask_input=None, *, multimask, hq_token_only):
    geometry = embedding.geometry
    coords = labels = boxes = None
    if "point_coords" in case:
        xy = ours.transform.points_to_input(case["point_coords"][:, ::-1], geometry)
        coords = torch.as_tensor(xy, dtype=torch.float32)[None]
        labels = torch.as_tensor(case["point_labels"])[None]
    if "box" in case:
        x0, y0, x1, y1 = case["box"]
        boxes = torch.as_tensor(ours.transform.box_to_input(np.array([y0, x0, y1, x1]), geometry),
                                dtype=torch.float32)[None]
    with torch.inference_mode():
        sparse, dense = encode_prompts(ours.model.prompt_encoder, coords, labels, boxes, mask_input)
        return decode_hq(ours.model.mask_decoder, embedding.features, embedding.extras["hq_features"], ours._image_pe,
                         sparse, dense, multimask_output=multimask, hq_token_only=hq_token_only)


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("hq_token_only", [False, True])
@pytest.mark.parametrize("name", [*CASES, "mask input"])
def test_logits_match_official_predictor(pair, name, multimask, hq_token_only):
    reference, ours, embedding, _, _ = pair
    case = dict(CASES["points"]) if name == "mask input" else CASES[name]
    mask_input = None
    if name == "mask input":  # the previous step's low-res logits fed back, as the plugin does
        _, _, low = reference.predict(**CASES["points+box"], multimask_output=False, return_logits=True)
        mask_input = torch.as_tensor(low)[None].float()
        case = {**case, "mask_input": low}
    masks, iou, low_res = reference.predict(**case, multimask_output=multimask, return_logits=True,
                                            hq_token_only=hq_token_only)
    out = _ours(ours, embedding, case, mask_input, multimask=multimask, hq_token_only=hq_token_only)
    assert np.abs(out.logits[0].numpy() - low_res).max() < 1e-5
    assert np.abs(out.iou[0].numpy() - iou).max() < 1e-5
    full = ours.transform.logits_to_original(out.logits, embedding.geometry)[0].numpy()
    assert np.abs(full - masks).max() < 1e-4
    assert np.array_equal(full > 0, masks > 0)


def test_session_clicks_and_box_match_official(pair):
    """The plugin's path (single mask, previous logits fed back, boxes) gives the official masks."""
    reference, ours, embedding, _, _ = pair
    session = ObjectSession(ours, embedding)
    session.click(70.0, 120.0, positive=True)
    mask = session.click(30.0, 60.0, positive=False)
    _, _, first = reference.predict(np.array([[120.0, 70.0]]), np.array([1]), multimask_output=False,
                                    return_logits=True)
    masks, _, _ = reference.predict(np.array([[120.0, 70.0], [60.0, 30.0]]), np.array([1, 0]),
                                    mask_input=first, multimask_output=False)
    assert np.array_equal(mask, masks[0])
    boxed = ObjectSession(ours, embedding).sync(Prompts(box=[20.0, 40.0, 120.0, 190.0]))
    masks, _, _ = reference.predict(box=np.array([40.0, 20.0, 190.0, 120.0]), multimask_output=False)
    assert np.array_equal(boxed, masks[0])


def test_hq_file_as_sam_and_sam_file_as_hq_say_what_they_are(pair, tmp_path):
    *_, path = pair
    with pytest.raises(CheckpointError) as info:
        load_model("sam_tiny", path)
    message = str(info.value)
    assert "HQ-SAM tiny" in message and "'sam_hq_tiny'" in message
    sam_file = tmp_path / "sam.pth"
    torch.save(load_model("sam_tiny", seed=1).model.state_dict(), sam_file)
    with pytest.raises(CheckpointError) as info:
        load_model("sam_hq_vit_b", sam_file)
    assert "SAM tiny" in str(info.value) and "'sam_tiny'" in str(info.value)
    state = torch.load(path)
    del state["mask_decoder.hf_mlp.layers.2.bias"]
    partial_file = tmp_path / "partial.pth"
    torch.save(state, partial_file)
    with pytest.raises(CheckpointError) as info:
        load_model("sam_hq_tiny", partial_file)
    assert "hf_mlp" in str(info.value) and "download the official file" in str(info.value)


@pytest.mark.parametrize("multimask", [False, True])
@pytest.mark.parametrize("name", list(CASES))
def test_fused_transformer_matches_the_reference(pair, name, multimask):
    """HQ-SAM through the fast decoder's fused transformer (float32) equals the reference decoder forward."""
    from napari_focsam.models.fast_decoder import FastDecoder

    _, ours, embedding, _, _ = pair
    case = CASES[name]
    reference = _ours(ours, embedding, case, multimask=multimask, hq_token_only=False)
    fast = FastDecoder(ours.model.mask_decoder, ours._image_pe)
    geometry = embedding.geometry
    coords = labels = boxes = None
    if "point_coords" in case:
        coords = torch.as_tensor(ours.transform.points_to_input(case["point_coords"][:, ::-1], geometry))[None]
        labels = torch.as_tensor(case["point_labels"])[None]
    if "box" in case:
        x0, y0, x1, y1 = case["box"]
        boxes = torch.as_tensor(ours.transform.box_to_input(np.array([y0, x0, y1, x1]), geometry),
                                dtype=torch.float32)[None]
    with torch.inference_mode():
        sparse, dense = encode_prompts(ours.model.prompt_encoder, coords, labels, boxes, None)
        out = decode_hq(ours.model.mask_decoder, embedding.features, embedding.extras["hq_features"],
                        ours._image_pe, sparse, dense, multimask_output=multimask, fast=fast)
    assert torch.equal(out.selected, reference.selected)
    scale = reference.logits.abs().max()
    assert (out.logits - reference.logits).abs().max() <= 1e-5 * max(1.0, float(scale))
    assert (out.iou - reference.iou).abs().max() <= 1e-5
