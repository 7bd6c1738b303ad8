"""SegNext against the official code's golden data in float64 (../shared/reference/golden/segnext, see its README).

The deterministic weights are written as a checkpoint in the official layout (``state_dict`` + ``config``) and
loaded through our loader; one image is embedded and four clicks are given one at a time through an object session,
as the official ``BasePredictor`` does. Skipped when the shared folder is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_focsam.engine.segnext_predictor import SegNextPredictor
from napari_focsam.engine.session import ObjectSession
from napari_focsam.engine.types import ImageEmbedding, ObjectState
from napari_focsam.models.segnext import prompt_map as pm
from napari_focsam.weights.segnext import load_segnext
from tests._golden_segnext import case_a, golden_state, table, write_official

ROWS = [0, 511, 1023]


def close(ours, ref, atol, rtol=0.0, what=""):
    ours = ours.detach().cpu().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    np.testing.assert_allclose(ours, ref, atol=atol, rtol=rtol, err_msg=what)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = case_a()
    path = write_official(tmp_path_factory.mktemp("segnext") / "vitb_sa2_cocolvis_epoch_90.pth", golden_state(),
                          table()["config_sa2"])
    loaded = load_segnext("segnext_vitb_sa2", path, dtype=torch.float64)
    predictor = SegNextPredictor(loaded, lowp=None, encoder_lowp=None)
    model = loaded.model
    image = data["image"]
    out: dict[str, object] = {"predictor": predictor}
    blocks: list[torch.Tensor] = []
    with torch.inference_mode():
        x = predictor.preprocess(image)
        out["image_1024"] = x[0]
        backbone = model.backbone
        out["backbone_in"] = (backbone.patch_embed(x).flatten(2).transpose(1, 2) + backbone.pos_embed[:, 1:])[0]
        features = model.image_features(x, after_block=lambda i, t: blocks.append(t[0].clone()))
    out["blocks"] = blocks
    out["features"] = features
    embedding = ImageEmbedding(features=features, geometry=predictor.geometry(image.shape[:2]), key="golden")
    session = ObjectSession(predictor, embedding)
    steps = []
    fusion_out: list[torch.Tensor] = []
    hooks = [b.register_forward_hook(lambda m, a, o: fusion_out.append(o[0].clone())) for b in model.fusion_blocks]
    try:
        for y, x_, positive in data["clicks_yx_pos"]:
            prev_state = session.state
            prompts = session.prompts.with_point(int(y), int(x_), bool(positive))
            with torch.inference_mode():
                disks = predictor.disks(prompts, image.shape[:2])
                previous, _ = predictor.previous(prompts, prev_state or ObjectState())
                prompt = pm.prompt_map(disks, previous, dtype=torch.float64, device=torch.device("cpu"))
                prompt_feats = model.visual_prompts_encoder(prompt)[0]
                fused = model.fuse(features, prompt)
                feats = model.neck(fused)
                head = model.head(feats)
                up = torch.nn.functional.interpolate(head, (1024, 1024), mode="bilinear", align_corners=True)
            fusion_out.clear()
            session.click(int(y), int(x_), bool(positive))
            steps.append({"prompts": prompts, "disks": disks, "prompt": prompt, "prompt_feats": prompt_feats,
                          "fusion_in": features[0] + prompt_feats, "fused": fused[0], "fpn": [f[0] for f in feats],
                          "head": head[0, 0], "up": up[0, 0], "logits": session.state.logits[0, 0],
                          "mask": session.mask, "blocks": list(fusion_out)})
    finally:
        for h in hooks:
            h.remove()
    out["steps"] = steps
    return out


def check_partial(tensor: torch.Tensor, data: dict, name: str, atol_probe: float = 1e-10) -> None:
    """A (768, 64, 64) tensor against its partial storage (README: _ch0_8, _ch_sum, _tok_sum, _tokens)."""
    t = tensor.reshape(768, 64, 64)
    close(t[:8], data[f"{name}_ch0_8"], atol_probe, what=f"{name}_ch0_8")
    close(t.sum((1, 2)), data[f"{name}_ch_sum"], 1e-7, 1e-11, what=f"{name}_ch_sum")
    close(t.sum(0).reshape(-1), data[f"{name}_tok_sum"], 1e-9, what=f"{name}_tok_sum")
    close(t.reshape(768, 4096)[:, data["probe_tokens"]].T, data[f"{name}_tokens"], atol_probe, what=f"{name}_tokens")


def test_image_path(run):
    data = case_a()
    x = run["image_1024"]
    close(x[:, 3::8, 3::8], data["image_1024_sample"], 1e-12)
    close(x[:, ROWS, :], data["image_1024_rows"], 1e-12)
    close(x.sum((1, 2)), data["image_1024_ch_sum"], 1e-7, 1e-11)
    check_partial(run["backbone_in"].T, data, "backbone_in")
    blocks = torch.stack(run["blocks"])  # (12, 4096, 768)
    close(blocks.sum(2), data["backbone_block_tok_sum"], 1e-7, 1e-11)
    close(blocks.sum(1), data["backbone_block_ch_sum"], 1e-7, 1e-11)
    cfg = run["predictor"].cfg
    assert [cfg.is_global(i) for i in range(12)] == data["backbone_block_is_global"].tolist()
    check_partial(run["features"][0], data, "image_feats")


@pytest.mark.parametrize("s", range(4))
def test_click_steps(run, s):
    data = case_a()
    step = run["steps"][s]
    h, w = data["image"].shape[:2]
    prompts = step["prompts"]
    pixels = pm.round_pixels(prompts.points, (h, w))
    nd = pm.points_nd(pixels, prompts.labels == 1)
    np.testing.assert_array_equal(nd[None], data[f"points_nd_{s}"])
    scaled = nd.copy()
    valid = nd.max(axis=1) >= 0
    scaled[valid, :2] = pm.scale_pixels(nd[valid, :2], (h, w))
    np.testing.assert_array_equal(scaled[None], data[f"points_scaled_{s}"])
    disks = np.unpackbits(data[f"disks_{s}"]).reshape(2, 1024, 1024).astype(bool)
    np.testing.assert_array_equal(step["disks"], disks)
    np.testing.assert_array_equal(step["disks"].sum((1, 2)), data[f"disk_counts_{s}"])
    prev = step["prompt"][0, 0]
    close(prev[3::8, 3::8], data[f"prev1024_sample_{s}"], 1e-11)
    close(prev[ROWS], data[f"prev1024_rows_{s}"], 1e-11)
    close(prev.sum(), data[f"prev1024_sum_{s}"], 1e-7, 1e-11)
    check_partial(step["prompt_feats"], data, f"prompt_feats_{s}")
    close(step["fusion_in"].sum(0).reshape(-1), data[f"fusion_in_tok_sum_{s}"], 1e-9)
    for b, out in enumerate(step["blocks"]):
        close(out.sum(1), data[f"fusion_block{b}_tok_sum_{s}"], 1e-9)
        close(out.sum(0), data[f"fusion_block{b}_ch_sum_{s}"], 1e-7, 1e-11)
    check_partial(step["fused"], data, f"fused_{s}")
    for k, f in enumerate(step["fpn"]):
        close(f.sum((1, 2)), data[f"fpn{k}_ch_sum_{s}"], 1e-7, 1e-11)
        close(f[:4, :4, :4], data[f"fpn{k}_corner_{s}"], 1e-9)
    close(step["head"], data[f"head_logits_{s}"], 1e-11)
    close(step["up"][3::8, 3::8], data[f"logits1024_sample_{s}"], 1e-11)
    close(step["up"][ROWS], data[f"logits1024_rows_{s}"], 1e-11)
    close(step["up"].sum(), data[f"logits1024_sum_{s}"], 1e-7, 1e-11)
    close(step["logits"], data[f"logits_{s}"], 1e-11)
    prob = torch.sigmoid(step["logits"])
    close(prob, data[f"prob_{s}"], 1e-11)
    for name, thr in (("mask049", 0.49), ("mask050", 0.5)):
        ref = np.unpackbits(data[f"{name}_{s}"])[: h * w].reshape(h, w).astype(bool)
        np.testing.assert_array_equal((prob > thr).numpy(), ref)
    np.testing.assert_array_equal(step["mask"], (prob > 0.5).numpy())
