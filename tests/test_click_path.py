"""The GUI thread's share of a click: the Labels write works on the object's window only, and a click on an unchanged
image does not convert and hash the slice again (but does when its data or contrast changes)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from napari.layers import Labels  # noqa: E402

from _widget_support import annotator, disc_image  # noqa: E402
from napari_focsam.engine.fallback import FallbackPredictor  # noqa: E402
from napari_focsam.engine.manager import ModelManager  # noqa: E402
from napari_focsam.plugin import layers as L  # noqa: E402


def _write_whole_slice(view: np.ndarray, mask, object_id, base, overwrite) -> np.ndarray:
    """The rule of ``write_object`` on the whole slice, written out plainly."""
    base_without = np.where(base == object_id, 0, base)
    allowed = mask if overwrite else mask & (base_without == 0)
    return np.where(allowed, object_id, base_without).astype(view.dtype)


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_the_windowed_write_equals_the_whole_slice_rule(seed, overwrite) -> None:
    rng = np.random.default_rng(seed)
    shape = (3, 60, 80)
    data = np.zeros(shape, np.uint16)
    for z in range(shape[0]):  # other objects, and an earlier state of object 5 somewhere
        for label in (2, 3, 5):
            y, x = rng.integers(0, 50), rng.integers(0, 70)
            data[z, y : y + rng.integers(3, 15), x : x + rng.integers(3, 15)] = label
    labels = Labels(data.copy())
    index = (int(rng.integers(0, 3)),)
    base = data[index].copy()
    base[base == 5] = 0  # before object 5 was touched ...
    base[rng.random(base.shape) < 0.01] = 5  # ... except a few stray pixels it already had
    mask = np.zeros(shape[1:], bool)
    if seed != 0:  # seed 0: an empty mask (the object leaves the slice)
        y, x = rng.integers(0, 50), rng.integers(0, 70)
        mask[y : y + rng.integers(2, 20), x : x + rng.integers(2, 20)] = True
    expected = data.copy()
    expected[index] = _write_whole_slice(data[index], mask, 5, base, overwrite)
    changed = L.write_object(labels, index, mask, 5, base, overwrite=overwrite)
    np.testing.assert_array_equal(labels.data, expected)
    assert changed == int((data != expected).sum())
    assert L.write_object(labels, index, mask, 5, base, overwrite=overwrite) == 0  # the same mask again: nothing


def test_clicks_reuse_the_slices_key_until_the_image_or_its_contrast_changes(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    manager = ModelManager(FallbackPredictor())
    embeds: list[int] = []
    original = manager.embed

    def counting_embed(image, **kwargs):
        embeds.append(1)
        return original(image, **kwargs)

    manager.embed = counting_embed
    image = disc_image()
    widget = annotator(viewer, manager, image)
    c = widget.controller
    before = len(embeds)
    for y, x in ((60, 70), (62, 75), (58, 66)):
        c.click(y, x)
        c.wait()
    assert len(embeds) == before + 1  # the first click looks the slice up; the next two use its key
    first = c.labels.data.copy()
    assert first[60, 70] == c.object_id

    # new pixels: the disc moved; the next click is answered from the new image, not the remembered key
    c.cancel()
    moved = disc_image(centre=(60, 110))
    c.image.data = moved
    c.click(60, 110)
    c.wait()
    assert len(embeds) == before + 2
    expected = ModelManager(FallbackPredictor()).segment(moved, np.array([[60.0, 110.0]]), np.array([1]),
                                                        contrast_limits=tuple(c.image.contrast_limits))
    np.testing.assert_array_equal(c.labels.data == c.object_id, expected)

    # other contrast limits are another embedding
    c.image.contrast_limits = (0, 120)
    c.click(61, 111)
    c.wait()
    assert len(embeds) == before + 3
