"""Large images: time to the first mask after a click and peak memory, ours tiled vs ours resized vs micro-sam's
tiled path, on the same 8,192² image and the same random SAM ViT-B weights, in one run.

    python benchmarks/bench_tiles.py                      # 8,192², ViT-B, 2 clicks per variant
    python benchmarks/bench_tiles.py --model sam_tiny --side 4096 --micro-sam none   # quick check (CI)

Every variant runs in a fresh process (peak RSS is per process: ``ru_maxrss``; "working" is the peak minus the RSS
after loading the model, i.e. what the image and its embeddings cost) and starts from nothing cached:

* **ours, tiled**: :class:`~napari_focsam.engine.tiles.TiledImage` on the image opened as a memory map (only the
  tile under the click is read and embedded; prefetch off, so the first mask is not slowed by it);
* **ours, resized**: the whole image prepared and resized to the model's 1024² input (the untiled pipeline);
* **micro-sam**: ``precompute_image_embeddings(predictor, image, tile_shape, halo)`` with the same tile and halo
  (768 + 2 x 128) and ``segment_from_points`` (its annotator's click path) in micro-sam's own environment
  (``--micro-sam PATH/TO/python``, default ``~/.cache/microsam-venv/bin/python``). Its annotator embeds *every*
  tile before the first click; on this machine that is hours of CPU for a ViT-B on 121 tiles, so the run embeds the
  tiles under the click only (micro-sam's own ``mask=`` option skips the others) and the annotator's time to the
  first mask is reported as measured per-tile time x tile count (marked "extrapolated").

Second clicks on the same object are timed too (cached embedding). The load average is printed with the figures;
the machine is shared, so timings are noisy (one run each, interleaved variants would need hours here).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TILE, HALO = 768, 128


def make_image(side: int, seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """A dim textured background with small bright nuclei (radius 6-10 px); returns it and two nucleus centres."""
    rng = np.random.default_rng(seed)
    image = rng.integers(10, 40, (side, side), dtype=np.uint8)
    centres = rng.integers(20, side - 20, (max(50, side * side // 40_000), 2))
    for cy, cx in centres:
        r = int(rng.integers(6, 11))
        y0, x0 = cy - r, cx - r
        yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
        image[y0 : y0 + 2 * r + 1, x0 : x0 + 2 * r + 1][yy**2 + xx**2 <= r * r] = 200
    return image, [(int(y), int(x)) for y, x in centres[:1]] + [(int(centres[0][0]) + 2, int(centres[0][1]) + 2)]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_ours(variant: str, model: str, image_path: str, clicks: list[list[int]]) -> dict:
    from napari_focsam import ModelManager
    from napari_focsam.engine.tiles import TiledImage

    manager = ModelManager.load(model, device="cpu", allow_random_weights=True)
    loaded = rss_mb()
    image = np.load(image_path, mmap_mode="r")
    times = []
    start = time.perf_counter()
    if variant == "tiled":
        tiled = TiledImage(manager, image, tile=TILE, halo=HALO, prefetch=0)
        obj = tiled.new_object()
        for y, x in clicks:
            obj.click(y, x, positive=True)
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
        extra = {"tiles_embedded": len(tiled.computed), "tiles": len(tiled.grid)}
    else:
        embedding = manager.embed(np.asarray(image))
        session = manager.new_object(embedding)
        for y, x in clicks:
            session.click(y, x)
            times.append(time.perf_counter() - start)
            start = time.perf_counter()
        extra = {}
    return {"first": times[0], "next": times[1:], "peak_mb": rss_mb(), "loaded_mb": loaded, **extra}


def worker_microsam(checkpoint: str, image_path: str, clicks: list[list[int]]) -> dict:
    import micro_sam
    from micro_sam.prompt_based_segmentation import segment_from_points
    from micro_sam.util import get_sam_model, precompute_image_embeddings

    predictor = get_sam_model(model_type="vit_b", device="cpu", checkpoint_path=checkpoint)
    loaded = rss_mb()
    image = np.load(image_path)
    side = image.shape[0]
    times = []
    start = time.perf_counter()
    mask = np.zeros(image.shape, bool)  # the tiles under the click only (see the module docstring)
    y, x = clicks[0]
    mask[y, x] = True
    n_tiles = (-(-side // TILE)) ** 2  # one batch: micro-sam 1.8.14 splits a mask's tiles into n_tiles batches
    embeddings = precompute_image_embeddings(predictor, image, tile_shape=(TILE, TILE), halo=(HALO, HALO),
                                             verbose=False, mask=mask, batch_size=n_tiles)
    embed_seconds = time.perf_counter() - start
    points, labels = [], []
    for y, x in clicks:
        points.append([y, x])
        labels.append(1)
        segment_from_points(predictor, np.asarray(points, float), np.asarray(labels), image_embeddings=embeddings)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
    computed = sum(1 for _ in embeddings["features"].keys()) if hasattr(embeddings["features"], "keys") else 1
    return {"first": times[0], "next": times[1:], "peak_mb": rss_mb(), "loaded_mb": loaded, "version":
            micro_sam.__version__, "embed_seconds": embed_seconds, "tiles_embedded": computed, "tiles": n_tiles}


def run_worker(python: str, args: list[str]) -> dict:
    out = subprocess.run([python, str(Path(__file__).resolve()), "--worker", *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(HERE.parent)}, check=False)
    if out.returncode:
        raise RuntimeError(f"worker {args[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--model", default="sam_vit_b")
    parser.add_argument("--clicks", type=int, default=2)
    parser.add_argument("--micro-sam", default=os.environ.get("MICROSAM_PYTHON",
                                                             str(Path.home() / ".cache/microsam-venv/bin/python")))
    parser.add_argument("--worker", nargs="*")
    args = parser.parse_args()
    if args.worker is not None:
        kind, *rest = args.worker
        clicks = json.loads(rest[-1])
        result = (worker_microsam(rest[0], rest[1], clicks) if kind == "micro-sam"
                  else worker_ours(kind, rest[0], rest[1], clicks))
        print(json.dumps(result))
        return
    image, clicks = make_image(args.side)
    clicks = clicks[: max(1, args.clicks)]
    use_microsam = args.micro_sam != "none" and Path(args.micro_sam).exists() and args.model == "sam_vit_b"
    with tempfile.TemporaryDirectory() as tmp:
        image_path = str(Path(tmp) / "image.npy")
        np.save(image_path, image)
        del image
        results = {}
        for variant in ("tiled", "resized"):
            results[f"ours, {variant}"] = run_worker(sys.executable, [variant, args.model, image_path,
                                                                      json.dumps(clicks)])
            print(f"ours, {variant}: {json.dumps(results[f'ours, {variant}'])}", flush=True)
        if use_microsam:
            from napari_focsam import ModelManager

            sys.path.insert(0, str(HERE))
            from bench_widget import write_sam_checkpoint

            checkpoint = str(Path(tmp) / "sam_vit_b_random.pth")
            write_sam_checkpoint(ModelManager.load(args.model, device="cpu", allow_random_weights=True),
                                 Path(checkpoint))
            results["micro-sam, tiled"] = run_worker(args.micro_sam, ["micro-sam", checkpoint, image_path,
                                                                      json.dumps(clicks)])
    load = os.getloadavg()
    print(f"{args.side}² uint8 image, {args.model} random weights, tile {TILE} + halo {HALO}, {len(clicks)} "
          f"click(s) on one nucleus; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{'variant':<22}{'first mask s':>13}{'next click s':>13}{'peak MiB':>10}{'working MiB':>12}  notes")
    tiled = results["ours, tiled"]
    for name, r in results.items():
        nxt = f"{np.median(r['next']):.3f}" if r["next"] else "-"
        notes = f"{r['tiles_embedded']} of {r['tiles']} tiles embedded" if "tiles" in r else "one 1024² embedding"
        print(f"{name:<22}{r['first']:>13.2f}{nxt:>13}{r['peak_mb']:>10.0f}{r['peak_mb'] - r['loaded_mb']:>12.0f}  "
              f"{notes}")
    for name, r in results.items():
        if name != "ours, tiled":
            print(f"ratio ours tiled / {name}: first mask {tiled['first'] / r['first']:.2f}, working memory "
                  f"{(tiled['peak_mb'] - tiled['loaded_mb']) / max(1.0, r['peak_mb'] - r['loaded_mb']):.2f}")
    if "micro-sam, tiled" in results:
        m = results["micro-sam, tiled"]
        per_tile = m["embed_seconds"] / max(1, m["tiles_embedded"])
        annotator = per_tile * m["tiles"] + (m["first"] - m["embed_seconds"])
        print(f"micro-sam {m['version']}: {per_tile:.1f} s per tile; its annotator embeds all {m['tiles']} tiles "
              f"before the first click: first mask ≈ {annotator:.0f} s (extrapolated); ratio ours tiled / that "
              f"{tiled['first'] / annotator:.4f}")


if __name__ == "__main__":
    main()
