"""The engine: FocSAM's per-object refined embedding, undo/redo, objects, cache use, cancellation, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.types import Cancelled, CancelToken, Prompts
from napari_focsam.models.decoding import decode, dense_positional_encoding, encode_prompts
from napari_focsam.weights.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def focsam() -> ModelManager:
    return ModelManager.load("focsam_tiny", device="cpu", allow_random_weights=True)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(11)
    image = rng.integers(0, 60, (200, 300, 3), dtype=np.uint8)
    image[60:140, 100:220] += 150
    return image


def test_real_models_without_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_FOCSAM_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError) as info:
        ModelManager.load("sam_vit_b", download=False)
    message = str(info.value)
    assert "sam_vit_b_01ec64.pth" in message and "https://" in message and str(tmp_path) in message
    with pytest.raises(ValueError, match="unknown model"):
        ModelManager.load("sam_vit_x", allow_random_weights=True)


def test_refiner_runs_once_at_the_second_click_and_is_kept(focsam, image):
    obj = focsam.new_object(image)
    embedding = obj.embedding
    obj.click(100, 150)
    assert obj.state.step == 1 and obj.state.features is None and not obj.is_refined
    obj.click(90, 120, positive=False)
    refined = obj.state.features
    assert obj.is_refined and refined.shape == embedding.features.shape
    assert not torch.equal(refined, embedding.features)
    obj.click(120, 200)
    assert obj.state.features is refined  # reused, never recomputed
    assert obj.state.step == 3


def test_second_click_is_coarse_pass_refiner_then_decoder_on_refined(focsam, image):
    """Step index 1 = decoder on the original embedding → refiner → decoder again, same prompts and mask input."""
    obj = focsam.new_object(image)
    obj.click(100, 150)
    first = obj.state
    obj.click(90, 120, positive=False)
    predictor, model = focsam.predictor, focsam.predictor.model
    geometry = obj.embedding.geometry
    xy = predictor.transform.points_to_input(obj.prompts.points, geometry)
    coords = torch.as_tensor(xy)[None]
    labels = torch.tensor(obj.prompts.labels)[None]
    with torch.inference_mode():
        sparse, dense = encode_prompts(model.prompt_encoder, coords, labels, None, first.logits)
        coarse = predictor._decode(obj.embedding.features, sparse, dense)  # the predictor's decoder (fused)
        refined = model.refiner(obj.embedding.features, coarse.logits, coarse.token)
        final = predictor._decode(refined, sparse, dense)
        # and the fused decoder is segment-anything's decoder up to float rounding (or, with its products with the
        # image tokens in bfloat16, the manager's default on CPUs with native bfloat16, within 1 %)
        pe = dense_positional_encoding(model.prompt_encoder)
        reference = decode(model.mask_decoder, refined, pe, sparse, dense)
    assert torch.equal(obj.state.features, refined)
    assert torch.equal(obj.state.logits, final.logits)
    relative = float((final.logits - reference.logits).norm() / reference.logits.norm())
    exact = predictor.decoder_upscale_dtype == predictor.decoder_attention_dtype == torch.float32
    assert relative < (1e-5 if exact else 1e-2)


def test_undo_redo_restore_identical_state(focsam, image):
    obj = focsam.new_object(image)
    states, masks = [], []
    for y, x, pos in [(100, 150, True), (90, 120, False), (120, 200, True)]:
        masks.append(obj.click(y, x, positive=pos).copy())
        states.append(obj.state)
    assert obj.undo() is not None and obj.state is states[1]
    np.testing.assert_array_equal(obj.mask, masks[1])
    obj.undo()
    assert obj.state is states[0] and obj.state.features is None and len(obj.prompts) == 1
    obj.undo()
    assert obj.state is None and not obj.mask.any() and not obj.can_undo
    obj.redo()
    obj.redo()
    assert obj.state is states[1] and obj.is_refined
    obj.redo()
    assert obj.state is states[2] and not obj.can_redo
    # undo back to one click, click elsewhere: the redo branch is dropped and the refiner runs again
    obj.undo()
    obj.undo()
    obj.click(80, 250, positive=False)
    assert not obj.can_redo and obj.is_refined and obj.state.features is not states[1].features


def test_sync_replays_exactly_like_clicking(focsam, image):
    clicks = [(100, 150, 1), (90, 120, 0), (120, 200, 1), (70, 110, 0)]
    a = focsam.new_object(image)
    for y, x, label in clicks:
        a.click(y, x, positive=bool(label))
    b = focsam.new_object(image)
    target = Prompts(np.array([c[:2] for c in clicks], float), np.array([c[2] for c in clicks]))
    b.sync(target)
    assert torch.equal(a.state.logits, b.state.logits) and np.array_equal(a.mask, b.mask)
    # removing the 2nd click replays from the first click on
    b.sync(Prompts(target.points[[0, 2, 3]], target.labels[[0, 2, 3]]))
    c = focsam.new_object(image)
    for i in (0, 2, 3):
        c.click(*clicks[i][:2], positive=bool(clicks[i][2]))
    assert torch.equal(b.state.logits, c.state.logits) and b.n_steps == 3


def test_objects_keep_their_own_refined_embeddings(focsam, image):
    one, two = focsam.new_object(image), focsam.new_object(image)
    assert two.object_id == one.object_id + 1
    one.click(100, 150)
    one.click(60, 110, positive=False)
    two.click(30, 30)
    two.click(180, 280)
    assert one.is_refined and two.is_refined
    assert not torch.equal(one.state.features, two.state.features)
    assert focsam.get_object(one.embedding, one.object_id) is one
    focsam.close_object(one)
    assert focsam.get_object(one.embedding, one.object_id) is None and two in focsam.objects(two.embedding)


def test_clicks_outside_the_image_and_boxes_on_focsam_are_refused(focsam, image):
    obj = focsam.new_object(image)
    obj.click(10, 10)
    before = obj.state
    for y, x in [(-1, 5), (5, 300), (200, 5), (np.nan, 3)]:
        with pytest.raises(ValueError):
            obj.click(y, x)
    assert obj.state is before
    with pytest.raises(ValueError, match="clicks only"):
        obj.set_box((10, 10, 50, 50))


def test_embedding_cache_reuse_and_invalidation(image):
    manager = ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True)
    first = manager.embed(image)
    assert not manager.last_embed.from_cache and manager.last_embed.seconds > 0
    again = manager.embed(image.copy())
    assert manager.last_embed.from_cache and again.key == first.key
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    other = manager.embed(changed)
    assert not manager.last_embed.from_cache and other.key != first.key
    assert manager.embed(image, contrast_limits=(0, 200)).key != first.key
    gray16 = (image[..., 0].astype(np.uint16) * 40)
    assert manager.embed(gray16).geometry.original_size == (200, 300)


def test_cancelled_requests_leave_nothing_behind(focsam, image):
    token = CancelToken()
    token.cancel()
    fresh = image.copy()
    fresh[5, 5] = 1
    with pytest.raises(Cancelled):
        focsam.embed(fresh, cancel=token)
    assert focsam.cache.get(focsam.key_for(fresh)) is None
    obj = focsam.new_object(image)
    obj.click(100, 150)
    before = obj.state
    with pytest.raises(Cancelled):
        obj.click(90, 120, cancel=token)
    assert obj.state is before and obj.n_steps == 1


def test_concurrent_embeds_compute_once_and_objects_click_in_parallel(image):
    manager = ModelManager.load("focsam_tiny", device="cpu", allow_random_weights=True)
    calls = []
    original = manager.predictor.embed

    def counting_embed(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    manager.predictor.embed = counting_embed
    results, errors = [], []

    def work(y: int) -> None:
        try:
            obj = manager.new_object(image)
            obj.click(y, 150)
            obj.click(y + 10, 160)
            results.append(obj)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(50 + 20 * i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4 and len(calls) == 1
    assert len({obj.object_id for obj in results}) == 4


def test_float64_pipeline_runs(image):
    manager = ModelManager.load("focsam_tiny", device="cpu", dtype=torch.float64, allow_random_weights=True)
    obj = manager.new_object(image)
    obj.click(100, 150)
    obj.click(90, 120, positive=False)
    assert obj.state.features.dtype == torch.float64 and obj.mask.shape == (200, 300)


def test_fallback_through_the_same_api(image):
    manager = ModelManager.load("fallback")
    assert manager.is_fallback and "fallback" in manager.display_name.lower()
    mask = manager.segment(image, [(100, 160)])
    assert mask.shape == (200, 300) and mask[100, 160] and mask.sum() < mask.size / 2
