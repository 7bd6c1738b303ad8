"""The weight-free fallback: protocol, behaviour on synthetic images, robustness."""

from __future__ import annotations

import numpy as np

from napari_focsam.engine.fallback import FallbackPredictor
from napari_focsam.engine.predictor import Predictor
from napari_focsam.engine.session import ObjectSession
from napari_focsam.engine.types import ImageEmbedding, Prompts


def _embed(predictor: FallbackPredictor, image: np.ndarray) -> ImageEmbedding:
    features, geometry = predictor.embed(image)
    return ImageEmbedding(features, geometry, "k")


def _disc_scene(shape=(240, 320)):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disc = (yy - 120) ** 2 + (xx - 130) ** 2 < 60**2
    square = (abs(yy - 120) < 30) & (abs(xx - 260) < 30)
    image = rng.integers(20, 60, (*shape, 3)).astype(np.uint8)
    image[disc] = (200, 180, 60)
    image[square] = (200, 180, 60)
    return image, disc, square


def test_protocol_and_labelling():
    predictor = FallbackPredictor()
    assert isinstance(predictor, Predictor)
    assert predictor.is_fallback and "fallback" in predictor.display_name.lower()
    assert not predictor.uses_refiner


def test_one_click_gives_the_object_and_negative_clicks_cut():
    predictor = FallbackPredictor()
    image, disc, square = _disc_scene()
    embedding = _embed(predictor, image)
    session = ObjectSession(predictor, embedding)
    mask = session.click(120, 130)
    iou = (mask & disc).sum() / (mask | disc).sum()
    assert iou >= 0.9
    both = session.sync(Prompts([[120, 130], [120, 260]], [1, 1]))
    assert both[120, 260] and both[120, 130]
    cut = session.click(120, 180, positive=False)  # inside the disc, far from the positive click
    assert not cut[120, 180] and cut[120, 130] and cut[disc].sum() < both[disc].sum()


def test_no_positive_click_is_empty_and_output_is_deterministic():
    predictor = FallbackPredictor()
    image, _, _ = _disc_scene()
    embedding = _embed(predictor, image)
    empty = predictor.predict(embedding, Prompts([[10, 10]], [0]), None).mask
    assert not empty.any()
    a = predictor.predict(embedding, Prompts([[120, 130]], [1]), None).mask
    b = predictor.predict(_embed(predictor, image.copy()), Prompts([[120, 130]], [1]), None).mask
    assert np.array_equal(a, b)


def test_box_bounds_the_region():
    predictor = FallbackPredictor()
    image, disc, _ = _disc_scene()
    embedding = _embed(predictor, image)
    mask = predictor.predict(embedding, Prompts([[120, 130]], [1], box=(100, 100, 140, 160)), None).mask
    assert mask[120, 130] and not mask[:95].any() and not mask[:, 170:].any()


def test_tiny_constant_border_and_huge_images():
    predictor = FallbackPredictor()
    tiny = predictor.predict(_embed(predictor, np.zeros((8, 8, 3), np.uint8)), Prompts([[0, 0]], [1]), None)
    assert tiny.mask.shape == (8, 8) and tiny.mask[0, 0]
    image = np.zeros((3000, 4000, 3), np.uint8)
    image[1000:2000, 1500:2500] = 255
    embedding = _embed(predictor, image)
    assert max(embedding.features.shape) <= predictor.max_side
    mask = predictor.predict(embedding, Prompts([[1500, 2000]], [1]), None).mask
    assert mask.shape == (3000, 4000)
    inside = mask[1000:2000, 1500:2500].mean()
    assert inside > 0.95 and mask.sum() < 1.2 * 1_000_000
