"""``napari-focsam embed --tiles``: every tile of a large image into an embedding store that a manager then reuses."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_focsam import ModelManager
from napari_focsam.engine.tiles import TiledImage
from napari_focsam.stack.cli import main


def test_embed_tiles_fills_a_store_the_engine_reuses(tmp_path, capsys):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, (1500, 1400), dtype=np.uint8)
    image[700:730, 700:730] = 250
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, image, tile=(256, 256))
    store = tmp_path / "tiles.zarr"
    args = ["embed", str(path), "--store", str(store), "--tiles", "--model", "fallback", "--no-progress"]
    assert main(args) == 0
    assert "1 slice(s) x 16 tiles; computed 16, found 0" in capsys.readouterr().out
    assert main(args) == 0  # a repeated (or resumed) run finds every tile
    assert "computed 0, found 16" in capsys.readouterr().out
    manager = ModelManager.load("fallback", store=store)
    tiled = TiledImage(manager, tifffile.imread(path), prefetch=0)
    mask = tiled.new_object().click(715, 715)
    assert tiled.computed == [] and tiled.from_cache == [(1, 1)] and manager.cache.stats.hits_disk == 1
    assert mask.full()[700:730, 700:730].mean() > 0.9


def test_embed_tiles_refuses_bad_tilings(tmp_path, capsys):
    path = tmp_path / "img.npy"
    np.save(path, np.zeros((600, 600), np.uint8))
    store = str(tmp_path / "s.zarr")
    assert main(["embed", str(path), "--store", store, "--tiles", "--tile", "50", "--halo", "100",
                 "--no-progress"]) == 2
    assert "a tile of 50 px is smaller than its halo of 100 px" in capsys.readouterr().err
    assert main(["embed", str(path), "--store", store, "--tile", "500", "--no-progress"]) == 2
    assert "--tile and --halo need --tiles" in capsys.readouterr().err
    assert main(["embed", str(path), "--store", store, "--tiles", "--workers", "2", "--no-progress"]) == 2
    assert "drop --workers" in capsys.readouterr().err
