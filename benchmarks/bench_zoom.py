"""Zoom-in refinement on small objects: DSB2018 nuclei placed in a large canvas, segmented with the weight-free
fallback with and without zoom-in, mIoU after 1, 3 and 5 simulated clicks (the evaluation clicker).

    PYTHONPATH=. python benchmarks/bench_zoom.py                       # 8 images x 8 nuclei, 2048² canvas
    PYTHONPATH=. python benchmarks/bench_zoom.py --images 2 --nuclei 3 --canvas 1024   # quick check
    PYTHONPATH=. python benchmarks/bench_zoom.py --tiled                # the canvas in tiles (384 + 2 x 64 px)

Each DSB2018 image (../shared/datasets/dsb2018) is pasted at a seeded position into a canvas of ``--canvas`` px
filled with the image's median colour; the fallback works at 512 px, so on a 2048² canvas a nucleus shrinks 4x. For
every chosen nucleus (seeded, ``--nuclei`` per image), the clicker places click 1 on an empty prediction, then each
next click on the largest error of the current mask. Variants, on the same clicks protocol:

* **full**: every click decoded on the whole canvas (the untiled pipeline);
* **zoom**: click 1 on the whole canvas; then :class:`~napari_focsam.engine.zoom.ZoomedObject` zooms on the box of
  the coarse mask and the clicks (+50 % context), scaled up to the model's input side, and decodes the clicks there
  (the coarse mask only places the zoom: ``mask_input=False``);
* **zoom+mask**: the same with the coarse mask as the zoom's region prompt (``mask_input=True``).

With ``--tiled`` the canvas is annotated through tiles (:class:`~napari_focsam.engine.tiles.TiledImage`: every
view reaches the fallback at its 512 px, full resolution) and the zoom is taken inside the object's view: this is
the measurement behind "tiled slices are not zoomed" (docs/images.md).

The clicker looks at a 384-px window around the nucleus (the distance transforms of a whole canvas per click would
take hours here); the IoU is computed on the whole canvas (false positives anywhere count). Also printed: the
fraction of objects the automatic rule (:func:`~napari_focsam.engine.zoom.should_zoom`) would zoom after click 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from napari_focsam import ModelManager
from napari_focsam.engine.tiles import TiledImage
from napari_focsam.engine.types import Prompts
from napari_focsam.engine.zoom import ZoomedObject, should_zoom
from napari_focsam.evaluation.clicker import ClickSimulator

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "dsb2018"
WINDOW = 192  # half side of the clicker's window


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    union = np.count_nonzero(pred | gt)
    return np.count_nonzero(pred & gt) / union if union else 1.0


def simulate(gt: np.ndarray, clicks: int, decode) -> list[float]:
    """IoU after each of ``clicks`` simulated clicks on the object ``gt`` (the simulator sees a window around it);
    ``decode(step, prompts)`` returns the canvas-sized mask for the prompts so far."""
    ys, xs = np.nonzero(gt)
    cy, cx = int(ys.mean()), int(xs.mean())
    win = (slice(max(0, cy - WINDOW), cy + WINDOW), slice(max(0, cx - WINDOW), cx + WINDOW))
    offset = np.array([win[0].start, win[1].start], float)
    sim = ClickSimulator(gt[win])
    pred = np.zeros(gt.shape, bool)
    out: list[float] = []
    for step in range(clicks):
        if sim.step(pred[win]) is None:
            out.append(out[-1])
            continue
        pred = decode(step, Prompts(sim.points + offset, sim.labels))
        out.append(iou(pred, gt))
    return out


def run_object(manager, canvas, embedding, gt, clicks: int, variant: str) -> list[float]:
    if isinstance(embedding, TiledImage):
        return run_tiled(manager, canvas, embedding, gt, clicks, variant)
    session = manager.new_object(embedding)
    zoomed: ZoomedObject | None = None

    def decode(step: int, prompts: Prompts) -> np.ndarray:
        nonlocal zoomed
        if step == 0 or variant == "full":
            return session.sync(prompts)
        if zoomed is None:
            zoomed = ZoomedObject.open(manager, canvas, session.mask, prompts, rgb=True,
                                       mask_input=variant == "zoom+mask")
            return zoomed.mask
        return zoomed.sync(prompts)

    return simulate(gt, clicks, decode)


def run_tiled(manager, canvas, tiled: TiledImage, gt, clicks: int, variant: str) -> list[float]:
    """:func:`run_object` through tiles: click 1 on the object's tile; the zoom is opened on its view's crop."""
    obj = tiled.new_object()
    zoomed: ZoomedObject | None = None
    view = None

    def decode(step: int, prompts: Prompts) -> np.ndarray:
        nonlocal zoomed, view
        if step == 0 or variant == "full":
            return obj.sync(prompts).full()
        if view is None:
            view = obj.view
        local = Prompts(prompts.points - np.asarray(view.offset, float), prompts.labels)
        if zoomed is None:
            zoomed = ZoomedObject.open(manager, view.read(canvas, rgb=True), obj.mask.mask, local, rgb=True,
                                       mask_input=variant == "zoom+mask")
            inside = zoomed.mask
        else:
            inside = zoomed.sync(local)
        pred = np.zeros(gt.shape, bool)
        pred[view.slices] = inside
        return pred

    return simulate(gt, clicks, decode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--nuclei", type=int, default=8)
    parser.add_argument("--canvas", type=int, default=2048)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiled", action="store_true", help="annotate the canvas through tiles")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    manager = ModelManager.load("fallback")
    ids = (DATA / "ids.txt").read_text().split()
    chosen = sorted(rng.choice(len(ids), size=min(args.images, len(ids)), replace=False))
    variants = ("full", "zoom", "zoom+mask")
    ious: dict[str, list[list[float]]] = {v: [] for v in variants}
    auto, sizes = [], []
    start = time.perf_counter()
    for i in chosen:
        ident = ids[i]
        image = np.asarray(Image.open(next((DATA / "images").glob(f"{ident}.*"))).convert("RGB"))
        labels = np.asarray(Image.open(DATA / "masks" / f"{ident}.png"))
        h, w = image.shape[:2]
        if h > args.canvas or w > args.canvas:
            continue
        top, left = int(rng.integers(0, args.canvas - h + 1)), int(rng.integers(0, args.canvas - w + 1))
        canvas = np.empty((args.canvas, args.canvas, 3), np.uint8)
        canvas[:] = np.median(image.reshape(-1, 3), axis=0).astype(np.uint8)
        canvas[top: top + h, left: left + w] = image
        embedding = TiledImage(manager, canvas, rgb=True, prefetch=0) if args.tiled else manager.embed(canvas, rgb=True)
        ids_here = [v for v in np.unique(labels) if v]
        for value in rng.permutation(ids_here)[: args.nuclei]:
            gt = np.zeros(canvas.shape[:2], bool)
            gt[top: top + h, left: left + w] = labels == value
            if gt.sum() < 10:
                continue
            sizes.append(int(gt.sum()))
            for v in variants:
                ious[v].append(run_object(manager, canvas, embedding, gt, args.clicks, v))
            ys, xs = np.nonzero(gt)
            if isinstance(embedding, TiledImage):
                mask = embedding.new_object().click(float(np.median(ys)), float(np.median(xs)))
                auto.append(should_zoom(mask.mask, input_side=512))
            else:
                first = manager.new_object(embedding)
                auto.append(should_zoom(first.click(float(np.median(ys)), float(np.median(xs))), canvas.shape[:2],
                                        input_side=512))
        print(f"image {ident[:12]} {w}x{h}: {len(ious['full'])} nuclei so far", file=sys.stderr, flush=True)
    n = len(ious["full"])
    mode = " in tiles of 384 + 2 x 64 px" if args.tiled else ""
    print(f"DSB2018 nuclei in a {args.canvas}² canvas{mode}, fallback, {n} nuclei from {len(chosen)} images "
          f"(median {int(np.median(sizes))} px); {time.perf_counter() - start:.0f} s; load {os.getloadavg()[0]:.1f}")
    print("| variant | mIoU@1 | mIoU@3 | mIoU@5 |\n|---|---|---|---|")
    for v in variants:
        m = np.asarray(ious[v]).mean(axis=0)
        cells = " | ".join(f"{m[k - 1]:.3f}" if k <= len(m) else "-" for k in (1, 3, 5))
        print(f"| {v} | {cells} |")
    print(f"automatic rule (view over 512 px, box < {100 * 0.125:.1f} % of it after click 1): zooms "
          f"{np.mean(auto):.0%} of them")


if __name__ == "__main__":
    main()
