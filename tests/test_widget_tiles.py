"""The widget on a large image: clicks answered from the tile under them (lazily embedded), undo and redo."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from _widget_support import annotator, disc_image  # noqa: E402

from napari_focsam import ModelManager  # noqa: E402
from napari_focsam.engine.tiles import tiled_image_for  # noqa: E402
from napari_focsam.engine.work import TileSettings  # noqa: E402
from napari_focsam.plugin.label_base import LabelBase  # noqa: E402
from napari_focsam.plugin.tiles_view import PREFETCH  # noqa: E402


@pytest.fixture
def fallback() -> ModelManager:
    return ModelManager.load("fallback")


def test_a_large_image_is_clicked_on_through_its_tiles(make_napari_viewer, fallback):
    image = disc_image((1400, 1500), centre=(700, 770), radius=30)  # over twice the fallback's 512: tiled
    viewer = make_napari_viewer()
    widget = annotator(viewer, fallback, image)
    c = widget.controller
    assert c.tiles.applies(fallback, image, (), False)
    c.click(700, 770)
    c.wait()
    labels = np.asarray(c.labels.data)
    disc = np.zeros(image.shape, bool)
    disc[image == 200] = True
    iou = ((labels == 1) & disc).sum() / ((labels == 1) | disc).sum()
    assert iou > 0.9
    tiled = tiled_image_for(fallback, c.image.data, (), False, tuple(c.image.contrast_limits))
    tile = tiled.grid.tile_at(700, 770)
    assert tiled.computed[0] == tile  # the tile under the click first; the whole image was never embedded
    assert sorted(tiled.computed[1:]) == sorted(tiled.grid.around(tile))  # then its ring, in the background
    c.click(100, 100, positive=False)  # outside the object's view: it moves to a view holding both
    c.wait()
    c.undo()
    assert np.array_equal(np.asarray(c.labels.data) == 1, labels == 1)
    assert len(c.points.data) == 1


def test_tiling_settings_are_checked():
    with pytest.raises(ValueError, match="smaller than its halo"):
        TileSettings(tile=64, halo=128)
    with pytest.raises(ValueError, match="threshold must be at least 1"):
        TileSettings(threshold=0)
    with pytest.raises(ValueError, match="prefetch is a number of rings"):
        TileSettings(prefetch=-1)
    assert not TileSettings(enabled=False).applies(None, np.zeros((9000, 9000)), (), False)


def _clicks_done(c):
    c.wait(match=lambda key: key[0] == "click")


def test_tile_prefetch_runs_at_low_priority_and_is_superseded_when_the_user_moves_on(make_napari_viewer, fallback):
    image = disc_image((1400, 1500), centre=(700, 770), radius=30)
    viewer = make_napari_viewer()
    c = annotator(viewer, fallback, image).controller
    tiled = tiled_image_for(fallback, c.image.data, (), False, tuple(c.image.contrast_limits))
    gate, started = threading.Event(), threading.Event()

    def long_prefetch(token):  # the low-priority thread is busy (a slow prefetch embedding)
        started.set()
        assert gate.wait(60)

    c.jobs.background((PREFETCH, (), (9, 9)), long_prefetch)
    assert started.wait(10)
    c.click(700, 770)
    _clicks_done(c)  # the click was answered while the low-priority thread was still busy
    first = tiled.grid.tile_at(700, 770)
    assert (c.labels.data == 1)[700, 770] and tiled.computed == [first]
    assert c.jobs.background_keys() == [(PREFETCH, (), (9, 9)), (PREFETCH, (), first)]  # queued, not run
    c.commit()
    c.click(100, 100)  # the next object, elsewhere: the first one's prefetch is no longer wanted
    _clicks_done(c)
    second = tiled.grid.tile_at(100, 100)
    assert c.jobs.background_keys() == [(PREFETCH, (), (9, 9)), (PREFETCH, (), second)]
    gate.set()
    c.wait()
    assert tiled.computed[:2] == [first, second]
    assert sorted(tiled.computed[2:]) == sorted(set(tiled.grid.around(second)) - {first})
    only_first = set(tiled.grid.around(first)) - set(tiled.grid.around(second)) - {second}
    assert only_first and not only_first & set(tiled.computed)  # the first object's ring was never embedded


def test_a_click_on_a_large_tiled_slice_allocates_only_its_region(make_napari_viewer, fallback):
    side = 4096
    image = disc_image((side, side), centre=(2000, 2100), radius=25)
    viewer = make_napari_viewer()
    c = annotator(viewer, fallback, image).controller
    c.tiles = TileSettings(prefetch=0)
    c.labels.data[3000:3010, 3000:3010] = 7  # another object, far from the click
    c.click(2000, 2100)
    c.wait()  # the tile's embedding is made and cached
    tracemalloc.start()
    try:
        c.click(2005, 2100)
        c.wait()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    slice_mask = side * side  # one bool array the size of the slice: what each click allocated before
    assert peak < slice_mask / 2, f"a click allocated {peak / 2**20:.1f} MiB on a {side}² slice"
    labels = np.asarray(c.labels.data)
    assert labels[2000, 2100] == 1 and (labels[3000:3010, 3000:3010] == 7).all()
    base = c._bases[((), 1)]
    assert isinstance(base, LabelBase) and base.nbytes < labels.nbytes / 8  # not a copy of the slice
    c.cancel()
    assert not (np.asarray(c.labels.data) == 1).any() and (np.asarray(c.labels.data)[3000:3010, 3000:3010] == 7).all()


def test_channel_layers_on_a_large_slice_are_tiled(make_napari_viewer, fallback):
    nuclei = disc_image((1400, 1500), centre=(700, 770), radius=30).astype(np.uint16) * 10
    membranes = np.full((1400, 1500), 500, np.uint16)
    viewer = make_napari_viewer()
    layers = viewer.add_image(np.stack([nuclei, membranes]), channel_axis=0, name=["nuclei", "membranes"])
    from napari_focsam.plugin.widget import FocsamWidget

    widget = FocsamWidget(viewer)
    c = widget.controller
    c.set_manager(fallback)
    widget.image_combo.setCurrentIndex(widget.image_combo.findData(layers[0]))
    widget.channel_list.check(list(layers))
    widget.use_layers()
    c.wait()
    assert c.channel_layers == list(layers) and c.is_tiled()
    c.click(700, 770)
    c.wait()
    data, rgb, _, _ = c.model_source()
    tiled = tiled_image_for(fallback, data, (), rgb, None)
    tile = tiled.grid.tile_at(700, 770)
    assert tiled.computed[0] == tile and "channels=[0, 1]" in tiled.tag
    mask = np.asarray(c.labels.data) == 1
    disc_mask = nuclei > 1000
    assert (mask & disc_mask).sum() / (mask | disc_mask).sum() > 0.9
