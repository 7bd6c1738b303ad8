"""PA-SAM against the golden data of the official code (shared/reference/golden/pa_sam), in float64.

The golden weights are regenerated from their crc32-seeded scheme and written in the official file layouts: the
decoder as ``epoch_20.pth`` (its state dict, no prefix) and the prompt encoder inside a SAM checkpoint (the SAM ViT-L
file PA-SAM takes its encoders from; here a tiny SAM, whose encoder the golden data never reads: its embeddings are
given). Both load through :func:`load_model`, the registry's loading path. Tolerances are the README's: atol 1e-10
on every float array, discrete decisions exact.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_focsam.engine.sam_predictor import SamFamilyPredictor
from napari_focsam.engine.session import ObjectSession
from napari_focsam.engine.types import ImageEmbedding, ObjectState, Prompts
from napari_focsam.models.decoding import encode_prompts
from napari_focsam.models.pa_decoder import canny_edges, decode_pa, guiding_features
from napari_focsam.weights.checkpoint import CheckpointError
from napari_focsam.weights.loader import load_model
from tests.conftest import shared_path

pytest.importorskip("cv2", reason="PA-SAM's edge map needs opencv-python-headless (the 'pa' extra)")

ATOL = 1e-10
CASES = ("case_1_box", "case_2_points", "case_3_box_points_mask", "case_4_eval_path", "case_5_multimask_quirk")


def _golden(name: str) -> dict[str, np.ndarray]:
    with np.load(shared_path("reference", "golden", "pa_sam", f"{name}.npz")) as data:
        return {k: data[k] for k in data.files}


def _weights(section: str) -> dict[str, torch.Tensor]:
    table = json.loads(shared_path("reference", "golden", "pa_sam", "weight_keys.json").read_text())
    out = {}
    for entry in table[section]:
        g = torch.Generator().manual_seed(zlib.crc32(entry["key"].encode()))
        t = torch.randn(entry["shape"], generator=g, dtype=torch.float64)
        out[entry["key"]] = 1.0 + 0.05 * t if entry["norm_weight"] else 0.05 * t
        assert out[entry["key"]].sum().item() == pytest.approx(entry["sum"], abs=1e-9)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pa")
    decoder = folder / "epoch_20.pth"
    torch.save(_weights("decoder"), decoder)  # the official layout: the decoder's state dict, no prefix
    base = load_model("sam_tiny", seed=3).model.state_dict()
    base.update({f"prompt_encoder.{k}": v for k, v in _weights("prompt_encoder").items()})
    sam = folder / "sam_vit_tiny.pth"
    torch.save(base, sam)
    return decoder, sam


@pytest.fixture(scope="module")
def model(files):
    decoder, sam = files
    loaded = load_model("pa_sam_tiny", decoder, base_checkpoint=sam, dtype=torch.float64)
    return loaded


@pytest.fixture(scope="module")
def inputs():
    return _golden("inputs")


def _embedding(inputs, case):
    if str(case["embedding"]) == "case5":
        return float(inputs["case5_image_embeddings_scale"]) * torch.from_numpy(
            inputs["case5_image_embeddings_f16"].astype(np.float64))
    return torch.from_numpy(inputs["image_embeddings_f16"].astype(np.float64))


def _preprocess(frame_chw: np.ndarray) -> torch.Tensor:
    """The official Sam.preprocess of a float64 model: float32 constants, float64 arithmetic, zero padding."""
    mean = torch.tensor([123.675, 116.28, 103.53], dtype=torch.float32).double().view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375], dtype=torch.float32).double().view(3, 1, 1)
    x = (torch.from_numpy(frame_chw).double() - mean) / std
    return F.pad(x, (0, 1024 - x.shape[2], 0, 1024 - x.shape[1]))[None]


def _close(ours: torch.Tensor, golden: np.ndarray, what: str) -> None:
    diff = np.abs(ours.detach().numpy().reshape(golden.shape) - golden).max()
    assert diff <= ATOL, f"{what}: max abs diff {diff:.3e}"


@pytest.mark.parametrize("frame", ["letterbox", "stretch"])
def test_guiding_branch(model, inputs, frame):
    decoder = model.model.mask_decoder
    x = _preprocess(inputs[f"{frame}_image"])
    small = F.interpolate(x, (256, 256), mode="bilinear", align_corners=False)
    _close(small.sum((0, 2, 3)), inputs[f"{frame}_input_images_256_channel_sums"], "n256 sums")
    _close(small[0, :, 100], inputs[f"{frame}_input_images_256_row100"], "n256 row 100")
    edges = canny_edges(small)
    assert np.array_equal((edges[0, 0].numpy() * 255).astype(np.uint8), inputs[f"{frame}_canny_edges"])
    guide = guiding_features(decoder, x)
    _close(guide[:, :8], inputs[f"{frame}_guiding_embedding_ch0_7"], "G channels 0-7")
    _close(guide.sum((0, 2, 3)), inputs[f"{frame}_guiding_embedding_channel_sums"], "G channel sums")


def test_plugin_preprocessing_gives_the_official_letterbox_guide(model, inputs):
    """The predictor's embed() (SAM's aspect-preserving frame) computes the golden guide from the original image."""
    predictor = SamFamilyPredictor(model)
    _, geometry, extras = predictor.embed(inputs["original_rgb"])
    assert geometry.resized_size == (683, 1024)
    _close(extras["pa_guide"][:, :8], inputs["letterbox_guiding_embedding_ch0_7"], "G channels 0-7")


def _decode_case(model, inputs, case):
    decoder, prompt_encoder = model.model.mask_decoder, model.model.prompt_encoder
    guide = guiding_features(decoder, _preprocess(inputs[f"{case['frame']}_image"]))
    coords = torch.from_numpy(case["point_coords"]) if "point_coords" in case else None
    labels = torch.from_numpy(case["point_labels"]).long() if "point_labels" in case else None
    box = torch.from_numpy(case["box"]) if "box" in case else None
    mask = torch.from_numpy(case["mask_input"]) if "mask_input" in case else None
    sparse, dense = encode_prompts(prompt_encoder, coords, labels, box, mask)
    predictor = SamFamilyPredictor(model)
    return sparse, dense, lambda multimask: decode_pa(decoder, prompt_encoder, _embedding(inputs, case), guide,
                                                      predictor._image_pe, sparse, dense, multimask_output=multimask)


@pytest.mark.parametrize("name", CASES)
def test_every_step_matches_golden(model, inputs, name):
    case = _golden(name)
    with torch.inference_mode():
        sparse, dense, run = _decode_case(model, inputs, case)
        out = run(bool(case["multimask_output"]))
    _close(sparse, case["sparse_embeddings"], "sparse")
    _close(dense[0, :, 0, :], case["dense_embeddings_row0"], "dense row 0")
    a = out.adapter
    _close(a["layer0_queries"], case["layer0_queries"], "layer 0 queries")
    _close(a["layer0_keys"].sum(1), case["layer0_keys_channel_sums"], "layer 0 keys")
    _close(a["layer0_keys"][0, [0, 1000, 2080, 4095]], case["layer0_keys_rows"], "layer 0 key rows")
    for ours, golden in (("queries_in", "pa_queries_in"), ("query_pe_in", "pa_query_pe_in"),
                         ("attn_out", "pa_attn_out"), ("uncertain_token", "pa_uncertain_token"),
                         ("refined_token", "pa_refined_token"), ("uncertainty", "pa_uncertainty_map"),
                         ("refined", "pa_refined_mask"), ("coarse", "pa_coarse_mask"), ("final", "pa_final_mask"),
                         ("queries_out", "pa_queries_out"), ("query_pe_out", "pa_query_pe_out"),
                         ("layer1_queries", "layer1_queries"), ("hyper_in", "hyper_in")):
        _close(a[ours], case[golden], ours)
    _close(a["x_pa"].sum(1), case["pa_x_pa_channel_sums"], "x_pa sums")
    _close(a["x_pa"][0, [0, 1000, 2080, 4095]], case["pa_x_pa_rows"], "x_pa rows")
    assert a["pos_idx"].tolist() == case["pa_pos_idx"].tolist()
    assert a["neg_idx"].tolist() == case["pa_neg_idx"].tolist()
    assert np.array_equal(a["uncertainty"].numpy() >= 0.5, case["pa_uncertainty_map"] >= 0.5)
    _close(a["layer1_keys"].sum(1), case["layer1_keys_channel_sums"], "layer 1 keys")
    _close(out.hs, case["hs"], "hs")
    _close(a["upscaled"].sum((0, 2, 3)), case["upscaled_channel_sums"], "upscaled sums")
    _close(out.iou_all, case["iou_pred_all"], "iou (all)")
    _close(out.all_logits.sum((0, 2, 3)), case["low_res_masks_all_sums"], "low-res sums")
    _close(out.iou, case["iou_preds"], "iou (returned)")
    if "low_res_masks_all" in case:
        _close(out.all_logits, case["low_res_masks_all"], "low-res masks")
    else:
        _close(out.logits, case["masks_sam"], "masks_sam")
    if "multi_selected_token" in case and bool(case["multimask_output"]):
        assert out.selected == int(case["multi_selected_token"])
    original = tuple(int(n) for n in case["original_size"])
    if str(case["postprocess"]) == "eval_interpolate":  # the official evaluation: 256² straight to the original
        full = F.interpolate(out.logits, original, mode="bilinear", align_corners=False)
    else:
        crop = F.interpolate(out.logits, (1024, 1024), mode="bilinear", align_corners=False)[..., :683, :1024]
        full = F.interpolate(crop, original, mode="bilinear", align_corners=False)
    _close(full, case["upsampled_logits"], "upsampled logits")
    assert np.array_equal(full.numpy() > 0, case["upsampled_logits"] > 0)


def test_multimask_selection_quirks(model, inputs):
    """Case 4 in multimask mode, and case 5, where the official choice (token 1) is not SAM's (token 3)."""
    case = _golden("case_4_eval_path")
    with torch.inference_mode():
        out = _decode_case(model, inputs, case)[2](True)
    assert out.selected == int(case["multi_selected_token"])
    _close(out.iou, case["multi_iou_preds"], "multimask iou")
    full = F.interpolate(out.logits, (300, 450), mode="bilinear", align_corners=False)
    _close(full.sum(), case["multi_upsampled_logits_sum"], "multimask logits sum")
    _close(full[0, 0, 150], case["multi_upsampled_logits_row150"], "multimask row 150")
    case5 = _golden("case_5_multimask_quirk")
    assert int(case5["multi_selected_token"]) == 1 and int(case5["sam_convention_token"]) == 3
    with torch.inference_mode():
        out = _decode_case(model, inputs, case5)[2](True)
    assert out.selected == 1


@pytest.mark.parametrize("name", ["case_1_box", "case_2_points", "case_3_box_points_mask"])
def test_plugin_session_path_matches_golden(model, inputs, name):
    """The plugin's path: prompts in original (y, x) pixels, the predictor's single-mask step, SAM's frame."""
    case = _golden(name)
    predictor = SamFamilyPredictor(model)
    _, geometry, extras = predictor.embed(inputs["original_rgb"])
    embedding = ImageEmbedding(_embedding(inputs, case), geometry, "golden", extras)
    scale = np.array([683 / 300, 1024 / 450])  # (y, x): SamPredictor scales each axis by new / old size
    points = case["point_coords"][0][:, ::-1] / scale if "point_coords" in case else np.zeros((0, 2))
    labels = case["point_labels"][0].astype(int) if "point_labels" in case else np.zeros(0, int)
    box = None
    if "box" in case:
        x0, y0, x1, y1 = case["box"][0]
        box = (*(np.array([y0, x0]) / scale), *(np.array([y1, x1]) / scale))
    state = None
    if "mask_input" in case:
        state = ObjectState(logits=torch.from_numpy(case["mask_input"]), step=1)
    with torch.inference_mode():
        prediction = predictor.predict(embedding, Prompts(points, labels, box), state)
    _close(prediction.state.logits, case["masks_sam"], "masks_sam")
    assert np.array_equal(prediction.mask, case["upsampled_logits"][0, 0] > 0)
    if name == "case_2_points":  # and through a session, click by click, with undo
        session = ObjectSession(predictor, embedding)
        for (y, x), label in zip(points, labels, strict=True):
            session.click(y, x, positive=bool(label))
        session.undo()
        again = session.redo()
        assert session.n_steps == 3 and again.shape == (300, 450)


def test_decoder_file_alone_says_what_it_is_and_what_to_do(files):
    decoder, sam = files
    with pytest.raises(CheckpointError) as info:
        load_model("pa_sam_tiny", decoder)
    message = str(info.value)
    assert "PA-SAM mask decoder alone" in message and "base_checkpoint" in message and "SAM ViT-L" in message
    with pytest.raises(CheckpointError) as info:  # loaded as SAM
        load_model("sam_tiny", decoder)
    assert "PA-SAM mask decoder alone" in str(info.value)
    with pytest.raises(CheckpointError) as info:  # a SAM file loaded as PA-SAM
        load_model("pa_sam_tiny", sam)
    assert "SAM tiny" in str(info.value) and "'sam_tiny'" in str(info.value)


def test_missing_adapter_keys_are_named(files, tmp_path):
    decoder, sam = files
    state = torch.load(decoder)
    for key in [k for k in state if k.startswith("prompt_adapter.refined_mlp.")]:
        del state[key]
    broken = tmp_path / "epoch_20.pth"
    torch.save(state, broken)
    with pytest.raises(CheckpointError) as info:
        load_model("pa_sam_tiny", broken, base_checkpoint=sam)
    message = str(info.value)
    assert "6 missing keys" in message and "prompt_adapter.refined_mlp" in message
    assert "prompt_adapter missing or partial" in message


def test_official_evaluation_frame_through_the_predictor(model, inputs):
    """preprocessing="stretch": the original image stretched to 1024² (case 4's frame), the box in original pixels,
    the logits interpolated straight to the original size, as the official evaluate()."""
    case = _golden("case_4_eval_path")
    predictor = SamFamilyPredictor(model, preprocessing="stretch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the golden frame was resized single-threaded (see StretchTransform)
    try:
        x = predictor.transform.image_to_input(inputs["original_rgb"], torch.device("cpu"), torch.float64)
        _, geometry, extras = predictor.embed(inputs["original_rgb"])
    finally:
        torch.set_num_threads(threads)
    frame = ((x[0] * torch.tensor([58.395, 57.12, 57.375], dtype=torch.float32).double().view(3, 1, 1))
             + torch.tensor([123.675, 116.28, 103.53], dtype=torch.float32).double().view(3, 1, 1))
    assert np.array_equal(np.rint(frame.numpy()).astype(np.uint8), inputs["stretch_image"])
    _close(extras["pa_guide"].sum((0, 2, 3)), inputs["stretch_guiding_embedding_channel_sums"], "G sums")
    embedding = ImageEmbedding(_embedding(inputs, case), geometry, "golden", extras)
    x0, y0, x1, y1 = case["box"][0]
    sy, sx = 1024 / 300, 1024 / 450
    with torch.inference_mode():
        prediction = predictor.predict(embedding, Prompts(box=(y0 / sy, x0 / sx, y1 / sy, x1 / sx)), None)
    _close(prediction.state.logits, case["low_res_masks_all"][:, :1], "masks_sam")
    assert np.array_equal(prediction.mask, case["upsampled_logits"][0, 0] > 0)
    gt = inputs["gt_label_original"] > 128
    iou = (prediction.mask & gt).sum() / (prediction.mask | gt).sum()
    assert abs(iou - float(case["official_iou"])) < 1e-6  # the official compute_iou of this case
