"""SegNext: every prompt kind against hand-made dense maps, checkpoint loading and its refusals, and the predictor
protocol (cache, store, undo/redo, propagation, evaluation) with the tiny random-weight model."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.types import ObjectState, Prompts
from napari_focsam.models.sam import build_model
from napari_focsam.models.segnext import prompt_map as pm
from napari_focsam.models.specs import get_spec
from napari_focsam.weights.checkpoint import CheckpointError
from napari_focsam.weights.loader import load_model
from napari_focsam.weights.segnext import SEGNEXT_MODELS, SegNextConfigError, load_segnext, official_config

TINY = SEGNEXT_MODELS["segnext_tiny"].config


def disk_by_hand(size, centres, radius=5):
    """A map with 1 where some centre lies within ``radius`` (<=), written pixel by pixel."""
    out = np.zeros((size, size), bool)
    for cy, cx in centres:
        for r in range(cy - radius, cy + radius + 1):
            for c in range(cx - radius, cx + radius + 1):
                if 0 <= r < size and 0 <= c < size and (r - cy) ** 2 + (c - cx) ** 2 <= radius ** 2:
                    out[r, c] = True
    return out


@pytest.fixture(scope="module")
def manager():
    return ModelManager.load("segnext_tiny", allow_random_weights=True, device="cpu")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(3)
    img = np.zeros((96, 128, 3), np.uint8)
    img[30:70, 40:90] = 200
    return (img + rng.integers(0, 30, img.shape)).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- prompt encodings
def test_clicks_are_disks_in_their_sign_channel(manager):
    p = manager.predictor
    prompts = Prompts().with_point(100, 200, True).with_point(0, 0, False).with_point(1023.4, 511.6, True)
    disks = p.disks(prompts, (1024, 1024))
    np.testing.assert_array_equal(disks[0], disk_by_hand(1024, [(100, 200), (1023, 512)]))
    np.testing.assert_array_equal(disks[1], disk_by_hand(1024, [(0, 0)]))
    assert disks[0].sum() == 81 + (1 + 7 + 9 + 9 + 9 + 11)  # the second disk clipped at the bottom edge


def test_clicks_scale_per_axis_with_round_half_up(manager):
    # the golden README's table: a 300 x 450 image
    pixels = pm.scale_pixels(np.array([[137, 201], [41, 388], [299, 0], [139, 203]]), (300, 450))
    np.testing.assert_array_equal(pixels, [[468, 457], [140, 883], [1021, 0], [474, 462]])
    # a tie (H = 2048, odd row) rounds up: 3 * 1024 / 2048 = 1.5 -> 2
    np.testing.assert_array_equal(pm.scale_pixels(np.array([[3, 0]]), (2048, 2048)), [[2, 0]])


def test_box_is_four_negative_corner_disks(manager):
    disks = manager.predictor.disks(Prompts(box=(10, 20, 100, 200)), (1024, 1024))
    assert not disks[0].any()
    np.testing.assert_array_equal(disks[1], disk_by_hand(1024, [(10, 20), (10, 200), (100, 20), (100, 200)]))


def test_polygon_vertices_are_negative_clicks():
    np.testing.assert_array_equal(pm.polygon_points(np.array([[5.2, 7.0], [30, 7.6], [30, 40]]), (64, 64)),
                                  [[5, 7], [30, 8], [30, 40]])


def test_scribble_is_a_stroke_of_disks(manager):
    prompts = Prompts().with_scribble([(500, 100), (500, 140)], True).with_scribble([(10, 10), (40, 40)], False)
    disks = manager.predictor.disks(prompts, (1024, 1024))
    np.testing.assert_array_equal(disks[0], disk_by_hand(1024, [(500, c) for c in range(100, 141)]))
    np.testing.assert_array_equal(disks[1], disk_by_hand(1024, [(t, t) for t in range(10, 41)]))


def test_scribble_on_a_stretched_image_follows_the_frame(manager):
    # a 256 x 512 image: rows x4, columns x2; the stroke (10, 10) -> (10, 20) becomes (40, 20) -> (40, 40)
    disks = manager.predictor.disks(Prompts().with_scribble([(10, 10), (10, 20)]), (256, 512))
    np.testing.assert_array_equal(disks[0], disk_by_hand(1024, [(40, c) for c in range(20, 41)]))


def test_mask_goes_in_the_previous_mask_channel_then_the_prediction_does(manager):
    p = manager.predictor
    region = np.zeros((1024, 1024), bool)
    region[100:300, 200:400] = True
    prompts = Prompts().with_mask(region)
    previous, marker = p.previous(prompts, ObjectState())
    channel = pm.previous_channel(previous, 1024, dtype=torch.float32, device=torch.device("cpu"))
    np.testing.assert_array_equal(channel[0, 0].numpy(), region.astype(np.float32))  # same size: identity resize
    # the same region at the next step: the previous probability, not the region again
    logits = torch.randn(1, 1, 1024, 1024)
    again, _ = p.previous(prompts.with_point(5, 5), ObjectState(logits=logits, step=1, extra=marker))
    assert torch.equal(again, torch.sigmoid(logits))
    # a changed region replaces it
    region2 = region.copy()
    region2[0:10, 0:10] = True
    new, _ = p.previous(Prompts().with_mask(region2), ObjectState(logits=logits, step=1, extra=marker))
    assert torch.equal(new[0, 0], torch.from_numpy(region2).float())


def test_prompt_map_channel_order(manager):
    disks = np.zeros((2, 1024, 1024), bool)
    disks[0, 5, 5] = disks[1, 7, 7] = True
    prev = torch.full((1, 1, 10, 10), 0.25)
    out = pm.prompt_map(disks, prev, dtype=torch.float32, device=torch.device("cpu"))
    assert out.shape == (1, 3, 1024, 1024)
    assert torch.all(out[0, 0] == 0.25) and out[0, 1, 5, 5] == 1 and out[0, 2, 7, 7] == 1 and out[0, 1:].sum() == 2


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("segnext_files")
    state = load_segnext("segnext_tiny", None, seed=1).model.state_dict()
    good = folder / "tiny.pth"
    torch.save({"state_dict": OrderedDict(state), "config": official_config(TINY)}, good)
    sam = folder / "sam.pth"
    torch.save(build_model(get_spec("sam_tiny"), seed=0).state_dict(), sam)
    return {"good": good, "sam": sam, "state": state, "folder": folder}


def test_official_layout_loads_strictly(files):
    loaded = load_segnext("segnext_tiny", files["good"])
    for key, value in files["state"].items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_segnext_file_as_sam_and_sam_file_as_segnext_say_what_they_are(files):
    with pytest.raises(CheckpointError, match="SegNext is its own model"):
        load_model("sam_tiny", files["good"])
    with pytest.raises(CheckpointError, match=r"is not a SegNext checkpoint.*SAM"):
        load_segnext("segnext_tiny", files["sam"])


def test_unknown_config_is_refused_by_name(files):
    for change, words in ((lambda c: c["params"]["fusion_params"]["value"].update(type="cross_attention"),
                           "fusion type"),
                          (lambda c: c.update({"class": "isegm.model.is_hrnet_model.HRNetModel"}), "HRNetModel"),
                          (lambda c: c["params"].update(new_thing={"value": 1}), "new_thing")):
        config = official_config(TINY)
        change(config)
        path = files["folder"] / "odd.pth"
        torch.save({"state_dict": OrderedDict(files["state"]), "config": config}, path)
        with pytest.raises(SegNextConfigError, match=words):
            load_segnext("segnext_tiny", path)


def test_missing_keys_and_wrong_depth_are_named(files):
    state = OrderedDict(files["state"])
    del state["head.seg_conv.bias"]
    path = files["folder"] / "partial.pth"
    torch.save({"state_dict": state, "config": official_config(TINY)}, path)
    with pytest.raises(CheckpointError, match=r"missing keys: head.seg_conv.bias"):
        load_segnext("segnext_tiny", path)
    deeper = official_config(TINY)
    deeper["params"]["fusion_params"]["value"]["depth"] = 2
    torch.save({"state_dict": OrderedDict(files["state"]), "config": deeper}, path)
    with pytest.raises(CheckpointError, match="fusion depth 2, input 1024\\), but segnext_tiny"):
        load_segnext("segnext_tiny", path)


def test_registry_entries_are_manual_downloads_that_say_where_to_put_the_file(tmp_path, monkeypatch):
    from napari_focsam.weights.download import ModelUnavailable, resolve_checkpoint

    monkeypatch.setenv("NAPARI_FOCSAM_CACHE", str(tmp_path))
    for name, file_name in (("segnext_vitb_sa1", "vitb_sa1_cocolvis_epoch_90.pth"),
                            ("segnext_vitb_sa2", "vitb_sa2_cocolvis_epoch_90.pth"),
                            ("segnext_vitb_sa2_hq", "vitb_sa2_cocolvis_hq44k_epoch_0.pth")):
        with pytest.raises(ModelUnavailable) as info:
            resolve_checkpoint(name, download=True)
        text = str(info.value)
        assert file_name in text and "github.com/uncbiag/SegNext" in text and str(tmp_path / "models") in text


def test_a_dropped_file_is_checked_by_structure(tmp_path, monkeypatch, files):
    from napari_focsam.weights.download import resolve_checkpoint

    monkeypatch.setenv("NAPARI_FOCSAM_CACHE", str(tmp_path))
    (tmp_path / "models").mkdir()
    bad = tmp_path / "models" / "vitb_sa2_cocolvis_epoch_90.pth"
    bad.write_bytes(files["good"].read_bytes())  # a tiny model under the ViT-B name: refused, by structure
    with pytest.raises(CheckpointError, match=r"SegNext checkpoint \(width 64, 3 encoder blocks"):
        resolve_checkpoint("segnext_vitb_sa2", download=False)


# ---------------------------------------------------------------------------------------------- protocol
def test_embedding_is_cached_and_a_click_reuses_it(manager, image):
    first = manager.embed(image)
    assert first.features.shape == (1, 64, 64, 64)
    again = manager.embed(image)
    assert manager.last_embed.from_cache and again.features is first.features


def test_undo_redo_restore_the_exact_probability_map(manager, image):
    session = manager.new_object(image)
    session.click(50, 60, True)
    first = session.state.logits.clone()
    session.click(10, 10, False)
    second = session.state.logits.clone()
    assert not torch.equal(first, second)
    session.undo()
    assert torch.equal(session.state.logits, first)
    session.redo()
    assert torch.equal(session.state.logits, second)
    session.click(20, 100, False)  # continues from the restored map
    session.add_scribble([(40, 50), (60, 80)], True)
    assert session.mask.shape == image.shape[:2]


def test_every_prompt_kind_through_a_session(manager, image):
    session = manager.new_object(image)
    session.set_box((25, 35, 75, 95))
    region = np.zeros(image.shape[:2], bool)
    region[30:70, 40:90] = True
    session.set_mask(region)
    session.add_polygon([(30, 40), (30, 90), (70, 90)])
    session.add_scribble([(40, 50), (60, 80)], True)
    session.click(5, 5, False)
    assert session.mask.dtype == bool and session.mask.shape == image.shape[:2]


def test_zarr_store_round_trip_gives_the_same_masks(tmp_path, image):
    store = tmp_path / "emb.zarr"
    a = ModelManager.load("segnext_tiny", allow_random_weights=True, device="cpu", store=store)
    mask_a = a.segment(image, [(50, 60)])
    b = ModelManager.load("segnext_tiny", allow_random_weights=True, device="cpu", store=store)
    embedding = b.embed(image)
    assert b.last_embed.from_cache
    np.testing.assert_array_equal(b.segment(embedding, [(50, 60)]), mask_a)


def test_propagation_and_evaluation_run_with_segnext(manager):
    from napari_focsam.evaluation.datasets import EvalObject
    from napari_focsam.evaluation.protocol import Protocol
    from napari_focsam.evaluation.runner import evaluate_object
    from napari_focsam.stack.propagate import propagate_object

    stack = np.zeros((3, 64, 64), np.uint8)
    stack[:, 20:44, 20:44] = 220
    truth = stack[1] > 0
    result = propagate_object(stack, {1: truth}, manager, strategy="point", max_distance=1)
    assert 1 in result.masks
    embedding = manager.embed(stack[1])
    gt = truth.astype(np.uint8)
    out = evaluate_object(manager.predictor, embedding, gt, Protocol(n_clicks=2), EvalObject("a", "a"))
    assert len(out.ious) == 2
