"""The GUI thread's share of a click: the Labels write works on the object's window only, and a click on an unchanged
image does not convert and hash the slice again (but does when its data or contrast changes)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from _widget_support import annotator, disc_image
from napari.layers import Labels

from napari_focsam.engine.fallback import FallbackPredictor
from napari_focsam.engine.manager import ModelManager
from napari_focsam.plugin import layers as L


def _write_whole_slice(view: np.ndarray, mask, object_id, base, overwrite) -> np.ndarray:
    """The rule of ``write_object`` on the whole slice, pixel by pixel."""
    out = view.copy()
    for (y, x), current in np.ndenumerate(view):
        if mask[y, x] and (overwrite or current in (0, object_id)):
            out[y, x] = object_id
        elif current == object_id and not mask[y, x]:
            out[y, x] = 0 if base[y, x] == object_id else base[y, x]
    return out


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


def test_a_late_mask_of_an_earlier_object_is_never_erased_by_the_next_one() -> None:
    """Object 1's job finishes after object 2 took its snapshot: object 2's writes keep object 1's pixels."""
    labels = Labels(np.zeros((40, 40), np.uint8))
    first = np.zeros((40, 40), bool)
    first[5:15, 5:15] = True
    L.write_object(labels, (), first, 1, np.zeros((40, 40), np.uint8))  # object 1's first mask
    base_2 = labels.data.copy()  # object 2 starts (commit while object 1's last job still runs)
    late = np.zeros((40, 40), bool)
    late[5:25, 5:25] = True
    L.write_object(labels, (), late, 1, np.zeros((40, 40), np.uint8))  # object 1's late mask lands now
    second = np.zeros((40, 40), bool)
    second[20:35, 20:35] = True  # overlaps object 1's late pixels at [20:25, 20:25]
    L.write_object(labels, (), second, 2, base_2)
    assert (labels.data[5:25, 5:25] == 1).all(), "object 1's late pixels were erased or taken"
    assert (labels.data[25:35, 20:35] == 2).all() and (labels.data[20:25, 25:35] == 2).all()
    smaller = np.zeros((40, 40), bool)
    smaller[30:35, 30:35] = True
    L.write_object(labels, (), smaller, 2, base_2)  # object 2 shrinks: what it leaves goes back, object 1 stays
    assert (labels.data[5:25, 5:25] == 1).all() and (labels.data == 2).sum() == 25
    assert (labels.data[25:30, 20:30] == 0).all()


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
