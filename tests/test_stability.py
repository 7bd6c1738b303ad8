"""Prompt stability (ST) and robust prompts: the metric, the noise model, the batched path, undo, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.session import ObjectSession
from napari_focsam.engine.stability import Jitter, jitter_prompts, predict_variants
from napari_focsam.engine.types import ImageEmbedding, ImageGeometry, ObjectState, Prediction, Prompts

SHAPE = (90, 120)


class DiscPredictor:
    """A test backend: the mask is a disc, fixed (``follow=False``) or centred on the mean click (``follow=True``)."""

    display_name = "disc"
    is_fallback = False
    supports_boxes = True
    uses_refiner = False
    device = torch.device("cpu")
    fingerprint = "disc"

    def __init__(self, follow: bool, radius: float = 15.0) -> None:
        self.name = "follow" if follow else "fixed"
        self.follow, self.radius, self.calls = follow, radius, 0

    def embed(self, image, *, cancel=None):
        size = image.shape[:2]
        return torch.zeros(1), ImageGeometry(size, size, size, max(size))

    def predict(self, embedding, prompts, state, *, cancel=None):
        self.calls += 1
        h, w = embedding.geometry.original_size
        if self.follow and len(prompts):
            cy, cx = prompts.points.mean(axis=0)
        elif self.follow and prompts.box is not None:
            cy, cx = (prompts.box[0] + prompts.box[2]) / 2, (prompts.box[1] + prompts.box[3]) / 2
        else:
            cy, cx = h / 2, w / 2
        yy, xx = np.mgrid[:h, :w]
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < self.radius**2
        step = state.step + 1 if state is not None else 1
        return Prediction(mask=mask, state=ObjectState(step=step))


def _embedding() -> ImageEmbedding:
    return ImageEmbedding(torch.zeros(1), ImageGeometry(SHAPE, SHAPE, SHAPE, max(SHAPE)), key="test")


def test_st_is_one_for_a_prompt_invariant_predictor_and_drops_for_an_unstable_one():
    fixed = ObjectSession(DiscPredictor(follow=False), _embedding())
    fixed.click(45, 60)
    result = fixed.stability(Jitter(copies=8, noise=0.3))
    assert result.score == 1.0 and not result.unstable.any()

    follow = ObjectSession(DiscPredictor(follow=True), _embedding())
    follow.click(45, 60)
    mild = follow.stability(Jitter(copies=8, noise=0.05)).score
    strong = follow.stability(Jitter(copies=8, noise=0.5))
    assert strong.score < mild < 1.0
    assert strong.unstable.shape == SHAPE and strong.unstable.any()
    # the pixels every copy keeps (the disc's core around the click) are stable
    assert not strong.unstable[45, 60]
    # the session is unchanged by a stability call
    assert follow.n_steps == 1 and follow.prompts.points.tolist() == [[45.0, 60.0]]


def test_st_follows_eq_1_of_stable_sam():
    masks = []
    predictor = DiscPredictor(follow=True)
    embedding = _embedding()
    prompts = Prompts([[45, 60]], [1])
    jitter = Jitter(copies=5, noise=0.4, seed=3)
    area = np.count_nonzero(predictor.predict(embedding, prompts, None).mask)  # the object's size: its mask area
    copies = jitter_prompts(prompts, SHAPE, area=area, jitter=jitter)
    for copy in copies:
        masks.append(predictor.predict(embedding, copy, None).mask)
    union = np.logical_or.reduce(masks)
    expected = np.mean([(m & union).sum() / union.sum() for m in masks])
    session = ObjectSession(predictor, embedding)
    session.click(45, 60)
    assert session.stability(jitter).score == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("noise", [0.1, 0.5, 1.0])
def test_jittered_prompts_stay_inside_the_image(noise):
    h, w = SHAPE
    prompts = Prompts([[0, 0], [h - 1, w - 1], [0, w - 1]], [1, 0, 1], box=(0, 0, h - 1, w - 1))
    for seed in range(20):
        for copy in jitter_prompts(prompts, SHAPE, area=h * w, jitter=Jitter(copies=6, noise=noise, seed=seed)):
            assert (copy.points >= 0).all() and (copy.points[:, 0] <= h - 1).all()
            assert (copy.points[:, 1] <= w - 1).all()
            y0, x0, y1, x1 = copy.box
            assert 0 <= y0 < y1 <= h - 1 and 0 <= x0 < x1 <= w - 1
            assert copy.labels.tolist() == [1, 0, 1]


def test_jitter_is_deterministic_per_prompts_and_seed():
    prompts = Prompts([[30, 40]], [1])
    a = jitter_prompts(prompts, SHAPE, 400, Jitter(seed=1))
    b = jitter_prompts(prompts, SHAPE, 400, Jitter(seed=1))
    c = jitter_prompts(prompts, SHAPE, 400, Jitter(seed=2))
    assert all(np.array_equal(x.points, y.points) for x, y in zip(a, b))
    assert not all(np.array_equal(x.points, y.points) for x, y in zip(a, c))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"copies": 1}, "at least 2"), ({"copies": 0}, "at least 2"), ({"noise": 0.0}, r"\(0, 1\]"),
     ({"noise": 1.5}, r"\(0, 1\]"), ({"noise": float("nan")}, r"\(0, 1\]"), ({"copies": 2.5}, "at least 2")],
)
def test_bad_settings_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Jitter(**kwargs)


def test_a_zero_area_box_and_an_empty_object_are_refused_and_nothing_changes():
    session = ObjectSession(DiscPredictor(follow=True), _embedding())
    with pytest.raises(ValueError, match="no prompts"):
        session.stability()
    session.set_box((10, 10, 10, 40))
    with pytest.raises(ValueError, match="zero area"):
        session.stability()
    assert session.n_steps == 1
    with pytest.raises(ValueError, match="zero area"):  # a robust step of that box fails the same way ...
        session.set_robust(True)
    assert session.n_steps == 1 and session.robust is None  # ... and leaves the session as it was


def test_robust_mode_is_an_undoable_exactly_restorable_step():
    predictor = DiscPredictor(follow=True)
    session = ObjectSession(predictor, _embedding())
    plain = session.click(45, 60).copy()
    robust = session.set_robust(Jitter(copies=8, noise=0.5))
    assert session.n_steps == 2 and session.robust is not None
    assert not np.array_equal(plain, robust)  # the consensus of the jittered discs differs from the plain disc
    calls = predictor.calls
    assert np.array_equal(session.undo(), plain) and session.robust is None
    assert np.array_equal(session.redo(), robust) and session.robust is not None
    assert predictor.calls == calls  # undo/redo restore, they never recompute
    # replaying the same prompts in robust mode gives exactly the same step (the copies are seeded by the prompts)
    again = ObjectSession(DiscPredictor(follow=True), _embedding(), robust=Jitter(copies=8, noise=0.5))
    assert np.array_equal(again.sync(Prompts([[45, 60]], [1])), robust)


def test_fallback_stability_and_robust_mode():
    manager = ModelManager.load("fallback", robust=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 40, (80, 100), dtype=np.uint8)
    image[20:60, 30:70] += 180
    obj = manager.new_object(image)
    assert obj.robust is not None
    mask = obj.click(40, 50)
    assert mask[40, 50] and not mask[5, 5]
    result = obj.stability()
    assert 0.8 < result.score <= 1.0  # a clear square: the jittered clicks agree
    plain = manager.new_object(image)
    plain.set_robust(False)
    assert plain.robust is None
    assert np.array_equal(plain.click(40, 50), mask)


@pytest.fixture(scope="module")
def sam() -> ModelManager:
    return ModelManager.load("sam_tiny", device="cpu", precision="float32", allow_random_weights=True)


def _image() -> np.ndarray:
    rng = np.random.default_rng(5)
    image = rng.integers(0, 60, (96, 128, 3), dtype=np.uint8)
    image[30:70, 40:90] += 150
    return image


def test_batched_variants_equal_one_call_per_prompt_set(sam):
    embedding = sam.embed(_image())
    predictor = sam.predictor
    first = predictor.predict(embedding, Prompts([[50, 60]], [1]), None)
    copies = [Prompts([[50 + d, 60 - d], [20, 20]], [1, 0], box=(25, 35, 75 + d, 95)) for d in range(4)]
    out = predict_variants(predictor, embedding, copies, first.state)
    assert out.logits.shape == (4, 1, 256, 256)
    assert out.valid == (192, 256)  # 96 x 128 is resized to 768 x 1024: 3/4 of the rows of the 256² frame
    for i, prompts in enumerate(copies):
        single = predictor.predict(embedding, prompts, first.state)
        torch.testing.assert_close(out.logits[i : i + 1], single.state.logits, rtol=1e-4, atol=1e-4)
        assert np.array_equal(out.to_original(out.logits[i : i + 1])[0, 0].numpy() > 0, single.mask)


def test_focsam_stability_never_runs_the_refiner():
    manager = ModelManager.load("focsam_tiny", device="cpu", allow_random_weights=True)
    refiner = manager.predictor.model.refiner
    calls = []
    hook = refiner.register_forward_hook(lambda *args: calls.append(1))
    try:
        obj = manager.new_object(_image())
        obj.click(50, 60)
        obj.click(35, 45, positive=False)
        assert len(calls) == 1 and obj.is_refined
        result = obj.stability(Jitter(copies=4))
        assert 0.0 <= result.score <= 1.0
        obj.set_robust(True)  # recomputing the 2nd step robustly runs the refiner once more, as that step does
        assert len(calls) == 2
        obj.click(60, 80)
        assert len(calls) == 2
    finally:
        hook.remove()


def test_robust_sam_step_feeds_the_mean_logits_forward(sam):
    image = _image()
    obj = sam.new_object(image)
    obj.set_robust(Jitter(copies=4, noise=0.2))
    mask = obj.click(50, 60)
    assert mask.shape == image.shape[:2]
    logits = obj.state.logits
    assert logits.shape == (1, 1, 256, 256)
    plain = sam.new_object(image)
    plain.click(50, 60)
    assert not torch.equal(logits, plain.state.logits)  # the consensus, not the plain step's logits


@pytest.mark.parametrize("name", ["sam_hq_tiny", "pa_sam_tiny"])
def test_stability_and_robust_mode_with_the_high_quality_heads(name):
    manager = ModelManager.load(name, device="cpu", allow_random_weights=True)
    obj = manager.new_object(_image())
    obj.click(50, 60)
    obj.add_polygon([[30, 40], [30, 90], [70, 90], [70, 40]])
    result = obj.stability(Jitter(copies=3))
    assert 0.0 <= result.score <= 1.0 and result.unstable.shape == (96, 128)
    plain = obj.mask.copy()
    obj.set_robust(Jitter(copies=3))
    assert np.array_equal(obj.undo(), plain)
