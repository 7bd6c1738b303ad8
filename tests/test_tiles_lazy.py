"""A 20,000² image in zarr, dask or a tiled TIFF is clicked on through tiles, reading only the tiles' regions
(bytes counted by a zarr store wrapper) — and the mask equals the pipeline on the tile's crop."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from zarr.storage import MemoryStore, WrapperStore

from napari_focsam import ModelManager
from napari_focsam.engine.tiles import TiledImage

SIDE, CHUNK = 20_000, 512
PATCH = (9000, 12000)  # the textured square; the rest is the fill value (no chunk stored)


class CountingStore(WrapperStore):
    """A zarr store that counts the bytes and keys it hands out (shared by its read-only copies)."""

    def __init__(self, store, counts=None):
        super().__init__(store)
        self.counts = counts if counts is not None else {"bytes": 0, "keys": []}

    def _with_store(self, store):
        return type(self)(store, self.counts)

    async def get(self, key, prototype, byte_range=None):
        buffer = await self._store.get(key, prototype, byte_range)
        if buffer is not None:
            self.counts["bytes"] += len(buffer)
            self.counts["keys"].append(key)
        return buffer

    def reset(self):
        self.counts["bytes"], self.counts["keys"][:] = 0, []


def _patch():
    lo, hi = PATCH
    yy, xx = np.ogrid[lo:hi, lo:hi]
    rng = np.random.default_rng(1)
    patch = rng.integers(20, 60, (hi - lo, hi - lo), dtype=np.uint8)
    patch[(yy - 10_300) ** 2 + (xx - 10_400) ** 2 <= 30**2] = 220
    return patch


@pytest.fixture(scope="module")
def big_zarr():
    store = CountingStore(MemoryStore())
    array = zarr.create_array(store, shape=(SIDE, SIDE), chunks=(CHUNK, CHUNK), dtype="uint8", fill_value=0)
    lo, hi = PATCH
    array[lo:hi, lo:hi] = _patch()
    return store, zarr.open_array(store, mode="r")


def _chunk_bytes(view):
    """What the chunks under ``view`` hold (stored uncompressed-size bound: every stored chunk is at most this)."""
    y0, x0, y1, x1 = view.region
    rows = range(y0 // CHUNK, (y1 - 1) // CHUNK + 1)
    cols = range(x0 // CHUNK, (x1 - 1) // CHUNK + 1)
    return len(rows) * len(cols) * (CHUNK * CHUNK + 1024)


@pytest.mark.parametrize("kind", ["zarr", "dask"])
def test_a_20000_square_image_is_clicked_on_reading_only_the_tile(kind, big_zarr):
    store, array = big_zarr
    image = array if kind == "zarr" else da.from_zarr(array)
    manager = ModelManager.load("fallback")
    store.reset()
    tiled = TiledImage(manager, image, prefetch=0)
    assert len(tiled.grid) == 53 * 53  # 384 px cores for the fallback's 512 px views
    got = tiled.new_object().click(10_300, 10_400)
    view = tiled.grid.view(tiled.grid.tile_at(10_300, 10_400))
    read = store.counts["bytes"]
    assert 0 < read <= _chunk_bytes(view) and read < SIDE * SIDE / 200  # < 0.5 % of the image
    assert tiled.computed == [tiled.grid.tile_at(10_300, 10_400)]
    crop = np.asarray(array[view.slices])
    oy, ox = view.offset
    assert np.array_equal(got.mask, manager.segment(crop, [(10_300 - oy, 10_400 - ox)]))
    assert got.mask.sum() > 2000
    store.reset()
    tiled.new_object().click(10_310, 10_410)  # the same tile: named already, found in the cache, nothing read
    assert store.counts["bytes"] == 0


def test_a_tiled_tiff_is_read_tile_by_tile(tmp_path):
    path = tmp_path / "big.tif"
    lo, hi = PATCH
    patch = _patch()

    def tiles():
        for y in range(0, SIDE, CHUNK):
            for x in range(0, SIDE, CHUNK):
                tile = np.zeros((CHUNK, CHUNK), np.uint8)
                ys, xs = slice(max(y, lo), min(y + CHUNK, hi)), slice(max(x, lo), min(x + CHUNK, hi))
                if ys.start < ys.stop and xs.start < xs.stop:
                    tile[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x] = patch[ys.start - lo : ys.stop - lo,
                                                                                        xs.start - lo : xs.stop - lo]
                yield tile

    tifffile.imwrite(path, tiles(), shape=(SIDE, SIDE), dtype=np.uint8, tile=(CHUNK, CHUNK), compression="zlib")
    store = CountingStore(tifffile.imread(path, aszarr=True))
    image = zarr.open_array(store, mode="r")
    sam = ModelManager.load("sam_tiny", allow_random_weights=True, device="cpu", precision="float32")
    tiled = TiledImage(sam, image, prefetch=0)
    got = tiled.new_object().click(10_300, 10_400)
    view = tiled.grid.view(tiled.grid.tile_at(10_300, 10_400))
    assert view.shape == (1024, 1024) and 0 < store.counts["bytes"] <= _chunk_bytes(view)
    chunks = {k for k in store.counts["keys"] if not k.startswith(".")}
    assert len(chunks) <= 9  # the 3 x 3 TIFF tiles of 512² under a 1024² view (of 40 x 40)
    oy, ox = view.offset
    crop = np.asarray(image[view.slices])
    assert np.array_equal(got.mask, sam.segment(crop, [(10_300 - oy, 10_400 - ox)]))
