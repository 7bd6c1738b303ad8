"""Where tiling starts to matter: small objects on canvases of growing size, resized whole vs through tiles.

    python benchmarks/bench_tiles_threshold.py [--radius 6] [--objects 12]

The weight-free fallback (the only model here whose masks mean something without downloaded weights; it works at a
512 px side, so its "input side" is 512) segments bright discs of ``radius`` px placed on a textured canvas of
1, 2, 4 and 8 times its input side, one click at each disc's centre: once on the whole canvas (resized to the
model's side, the untiled pipeline) and once through :class:`~napari_focsam.engine.tiles.TiledImage` (default tile
and halo). Prints the mean IoU with the true discs for both: the size at which the resized IoU falls is where the
default threshold (twice the model's input side) sits.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from napari_focsam import ModelManager
from napari_focsam.engine.tiles import TiledImage


def canvas(side: int, radius: int, n: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 60, (side, side), dtype=np.uint8)
    centres = [(int(y), int(x)) for y, x in rng.integers(4 * radius, side - 4 * radius, (n, 2))]
    yy, xx = np.ogrid[:side, :side]
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 220
    return image, centres


def disc(shape: tuple[int, int], centre: tuple[int, int], radius: int, region: tuple[slice, slice]) -> np.ndarray:
    yy, xx = np.ogrid[region[0], region[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--radius", type=int, default=6)
    parser.add_argument("--objects", type=int, default=12)
    parser.add_argument("--factors", default="1,2,4,8")
    args = parser.parse_args()
    manager = ModelManager.load("fallback")
    side0 = manager.predictor.max_side
    print(f"fallback (input side {side0}), discs of radius {args.radius} px, {args.objects} per canvas; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'canvas':>8}{'x input':>8}{'IoU resized':>13}{'IoU tiled':>11}")
    for factor in (float(f) for f in args.factors.split(",")):
        side = int(round(side0 * factor))
        image, centres = canvas(side, args.radius, args.objects, seed=side)
        embedding = manager.embed(image)
        tiled = TiledImage(manager, image, prefetch=0)
        resized, tiles = [], []
        for cy, cx in centres:
            window = (slice(max(0, cy - 40), min(side, cy + 41)), slice(max(0, cx - 40), min(side, cx + 41)))
            truth = disc(image.shape, (cy, cx), args.radius, window)
            resized.append(iou(manager.segment(embedding, [(cy, cx)])[window], truth))
            view_mask = tiled.new_object().click(cy, cx)
            y0, x0 = view_mask.region[:2]
            local = (slice(window[0].start - y0, window[0].stop - y0), slice(window[1].start - x0, window[1].stop - x0))
            tiles.append(iou(view_mask.mask[local], truth))
        print(f"{side:>8}{factor:>8g}{np.mean(resized):>13.3f}{np.mean(tiles):>11.3f}")


if __name__ == "__main__":
    main()
