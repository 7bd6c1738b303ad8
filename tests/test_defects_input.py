"""Unusual images: extreme aspect ratios and NaN / infinite pixels (each once broke or misled a session)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_focsam.engine.image import ImageValueWarning, to_model_rgb
from napari_focsam.engine.manager import ModelManager
from napari_focsam.models.transforms import SamTransform, longest_side_size


@pytest.fixture(scope="module", params=["fallback", "sam_tiny", "focsam_tiny"])
def manager(request) -> ModelManager:
    return ModelManager.load(request.param, device="cpu", allow_random_weights=True)


@pytest.mark.parametrize("shape", [(1, 2100), (2100, 1), (3, 5000)])
def test_images_beyond_2048_to_1_are_segmented(manager, shape):
    image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    obj = manager.new_object(image)
    mask = obj.click(shape[0] // 2, shape[1] // 2)
    assert mask.shape == shape


def test_longest_side_keeps_one_pixel_and_equals_the_official_size_otherwise():
    from segment_anything.utils.transforms import ResizeLongestSide

    assert longest_side_size((1, 2100), 1024) == (1, 1024)
    for size in [(768, 1024), (1, 2048), (333, 1000), (1024, 3), (17, 4000)]:
        assert longest_side_size(size, 1024) == ResizeLongestSide.get_preprocess_shape(*size, 1024)


def test_the_sam_input_is_unchanged_for_ordinary_images():
    import torch
    from segment_anything.utils.transforms import ResizeLongestSide

    image = np.random.default_rng(1).integers(0, 255, (120, 170, 3), dtype=np.uint8)
    ours = SamTransform().image_to_input(image, torch.device("cpu"), torch.float32)
    official = torch.as_tensor(ResizeLongestSide(1024).apply_image(image)).permute(2, 0, 1)
    assert torch.equal(ours[0, :, : official.shape[1], : official.shape[2]].round(decimals=3),
                       ((official[None].float() - ours.new_tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1))
                        / ours.new_tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1))[0].round(decimals=3))


def test_an_all_nan_image_is_refused_with_a_clear_message(manager):
    image = np.full((40, 50), np.nan, np.float32)
    with pytest.raises(ValueError, match="no finite pixel"):
        manager.new_object(image)
    with pytest.raises(ValueError, match="no finite pixel"):
        to_model_rgb(np.full((4, 5), np.inf), contrast_limits=(0, 1))


def test_nan_and_inf_pixels_are_shown_black_with_a_warning(manager):
    image = np.zeros((40, 50), np.float32)
    image[10:30, 10:40] = 1.0
    image[0, :] = np.nan
    image[1, :3] = np.inf
    with pytest.warns(ImageValueWarning, match="53 of 2000 pixels"):
        rgb = to_model_rgb(image)
    assert (rgb[0] == 0).all() and (rgb[1, :3] == 0).all() and (rgb[20, 20] == 255).all()
    with pytest.warns(ImageValueWarning):
        obj = manager.new_object(image)
    assert obj.click(20, 25).shape == (40, 50)


def test_an_edited_geometry_in_the_store_is_refused_and_recomputed(tmp_path):
    import json
    import warnings

    from napari_focsam.engine.cache import CacheWarning

    store = tmp_path / "store"
    image = np.random.default_rng(2).integers(0, 255, (96, 128), dtype=np.uint8)
    first = ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True, store=store)
    expected = first.new_object(image).click(48, 64)
    (entry,) = [p for p in store.iterdir() if (p / "features").is_dir()]
    doc = json.loads((entry / "zarr.json").read_text())
    doc["attributes"]["geometry"]["original_size"] = [48, 64]
    (entry / "zarr.json").write_text(json.dumps(doc))

    later = ModelManager.load("sam_tiny", device="cpu", allow_random_weights=True, store=store)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = later.new_object(image).click(48, 64)
    assert mask.shape == (96, 128)
    np.testing.assert_array_equal(mask, expected)
    assert any(issubclass(w.category, CacheWarning) and "corrupt" in str(w.message) for w in caught)


def test_an_edited_geometry_in_a_stack_store_is_refused(tmp_path):
    import json

    from napari_focsam.stack import ModelConfig, StackStore, StoreError
    from napari_focsam.stack.precompute import precompute_stack

    stack = np.random.default_rng(3).integers(0, 255, (2, 96, 128), dtype=np.uint8)
    store = tmp_path / "stack.zarr"
    precompute_stack(stack, store, ModelConfig("fallback"))
    StackStore.open(store)
    doc = json.loads((store / "zarr.json").read_text())
    doc["attributes"]["geometry"]["original_size"] = [48, 64]
    (store / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(StoreError, match=r"attributes .* were changed"):
        StackStore.open(store)
