"""Automatic segmentation of large images tile by tile: each object once, whole, from the tile whose core holds it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_focsam.engine.automatic import AutomaticOptions
from napari_focsam.engine.everything import segment_everything
from napari_focsam.engine.everything_tiled import owned, segment_everything_tiled
from napari_focsam.engine.fallback_automatic import instance_scores
from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.tile_grid import TileGrid
from napari_focsam.engine.types import Cancelled, CancelToken


def _discs(shape=(700, 600), centres=None, radius=9, seed=0):
    """Separate bright discs on a dark field, several of them on the borders of 200-px tiles; and the truth."""
    rng = np.random.default_rng(seed)
    if centres is None:
        centres = [(200, 100), (400, 300), (100, 400), (200, 400), (600, 200), (399, 199)]  # on tile borders
        while len(centres) < 36:
            c = tuple(rng.uniform(15, np.array(shape) - 15))
            if min(np.hypot(c[0] - y, c[1] - x) for y, x in centres) > 2 * radius + 6:
                centres.append(c)
    image = np.zeros(shape, np.uint8)
    truth = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for i, (cy, cx) in enumerate(centres, start=1):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        image[disc] = 200
        truth[disc & (truth == 0)] = i
    return image, truth


def _partition(labels: np.ndarray) -> set[bytes]:
    """The objects of an instance image, independent of their ids."""
    return {np.flatnonzero(labels.ravel() == i).tobytes() for i in np.unique(labels) if i}


@pytest.fixture(scope="module")
def fallback():
    return ModelManager.load("fallback")


def test_a_tile_keeps_the_objects_whose_box_centre_is_in_its_core_and_that_no_inner_edge_cuts():
    grid = TileGrid((500, 500), 200, 50)  # tile (1, 1): core (200, 200)-(400, 400), view (150, 150)-(450, 450)
    view, core = grid.view((1, 1)), grid.core((1, 1))
    masks = np.zeros((4, *view.shape), bool)
    masks[0, 40:60, 40:60] = True  # centre (200, 200) in full coordinates: the core's first pixel
    masks[1, 30:48, 30:48] = True  # centre (189, 189): the top-left neighbour's core
    masks[2, 0:20, 100:120] = True  # touches the view's top edge, which lies inside the image: cut
    masks[3, 100:290, 100:120] = True  # centre inside, long but inside the view
    assert owned(masks, view, core, (500, 500)).tolist() == [True, False, False, True]
    corner = grid.view((0, 0))  # its top and left edges are the image's: an object there is whole
    edge = np.zeros((1, *corner.shape), bool)
    edge[0, 0:10, 0:10] = True
    assert owned(edge, corner, grid.core((0, 0)), (500, 500)).tolist() == [True]


def test_fallback_tiled_finds_every_disc_once_and_whole_as_the_whole_image_does(fallback):
    image, truth = _discs()
    whole = segment_everything(fallback, image, tiled=False)
    seen = []
    tiled = segment_everything(fallback, image, tiled=True, tile=200, halo=40,
                               progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (12, 12) and len(seen) == 12  # a 4 x 3 grid of 200-px tiles
    assert instance_scores(tiled, truth)["f1"] == instance_scores(whole, truth)["f1"]
    scores = instance_scores(tiled, truth)
    assert scores["tp"] == scores["n_pred"] == scores["n_truth"] == 36
    assert scores["mean_iou"] >= 0.99
    against_whole = instance_scores(tiled, whole)  # the same objects (the threshold is chosen per view: ±1 px)
    assert against_whole["f1"] == 1.0 and against_whole["mean_iou"] >= 0.99
    assert set(np.unique(tiled)) == set(range(int(tiled.max()) + 1))  # ids 1..n, each used


def test_an_object_wider_than_the_halo_allows_is_dropped_not_cut(fallback):
    image, _ = _discs(shape=(800, 800), centres=[(400, 400)], radius=60)  # crosses 4 cores, 60 px beyond each
    assert segment_everything(fallback, image, tiled=True, tile=200, halo=100).max() == 1  # the halo holds it
    assert segment_everything(fallback, image, tiled=True, tile=200, halo=30).max() == 0  # nowhere whole


def test_sam_tiled_on_one_tile_gives_the_untiled_objects(tmp_path):
    manager = ModelManager.load("sam_tiny", allow_random_weights=True)
    image, _ = _discs(shape=(300, 260), centres=[(80, 70), (200, 180), (150, 60)], radius=25)
    options = AutomaticOptions(points_per_side=4, pred_iou_thresh=-1.0, stability_score_thresh=0.0)
    whole = segment_everything(manager, image, options=options, tiled=False)
    one_tile = segment_everything(manager, image, options=options, tiled=True, tile=300, halo=0)
    assert whole.max() > 0
    # the same masks; where masks overlap, both paint a smaller mask over a larger one
    assert _partition(one_tile) == _partition(whole)


def test_large_images_are_tiled_by_default_and_out_can_be_a_zarr_array(tmp_path, fallback):
    zarr = pytest.importorskip("zarr")
    manager = ModelManager.load("sam_tiny", allow_random_weights=True)
    image = np.zeros((2100, 300), np.uint8)  # longer than twice SAM's 1024: tiled (3 x 1 tiles of 768)
    seen = []
    options = AutomaticOptions(points_per_side=2, pred_iou_thresh=-1.0, stability_score_thresh=0.0)
    segment_everything(manager, image, options=options, progress=lambda done, total: seen.append(total))
    assert set(seen) == {3}
    image, _ = _discs()
    out = zarr.open(str(tmp_path / "labels.zarr"), mode="w", shape=image.shape, chunks=(128, 128), dtype="u4")
    result = segment_everything_tiled(fallback, image, tile=200, halo=40, out=out)
    assert result is out
    np.testing.assert_array_equal(out[:], segment_everything_tiled(fallback, image, tile=200, halo=40))
    with pytest.raises(ValueError, match=r"out has shape \(10, 10\)"):
        segment_everything_tiled(fallback, image, tile=200, halo=40, out=np.zeros((10, 10), np.uint32))
    with pytest.raises(ValueError, match="smaller than its halo"):
        segment_everything_tiled(fallback, image, tile=20, halo=40)


def test_cancel_stops_between_tiles(fallback):
    image, _ = _discs()
    token = CancelToken()

    def progress(done: int, total: int) -> None:
        if done == 2:
            token.cancel()

    with pytest.raises(Cancelled):
        segment_everything_tiled(fallback, image, tile=200, halo=40, cancel=token, progress=progress)


def test_the_automatic_command_tiles_on_request_and_refuses_bad_tiles(tmp_path, capsys):
    import tifffile

    from napari_focsam.cli import main

    image, truth = _discs()
    path = tmp_path / "discs.tif"
    tifffile.imwrite(path, image)
    out = tmp_path / "labels.tif"
    assert main(["automatic", str(path), "--out", str(out), "--tiles", "on", "--tile", "200", "--halo", "40"]) == 0
    assert "36 objects written" in capsys.readouterr().out
    assert instance_scores(tifffile.imread(out), truth)["f1"] == 1.0
    assert main(["automatic", str(path), "--out", str(out), "--overwrite", "--tiles", "on", "--tile", "10",
                 "--halo", "40"]) == 2
    assert "smaller than its halo" in capsys.readouterr().err
