"""Automatic segmentation of a 1024² image: ours vs segment-anything's and micro-sam's automatic mask generators.

    python benchmarks/bench_automatic.py                      # SAM ViT-B-sized random weights, 32 x 32 points
    python benchmarks/bench_automatic.py --model sam_tiny --points 8     # smoke run

One run of each, on the same random weights (ours seeded; the same state dict goes to segment-anything's
``SamAutomaticMaskGenerator`` in this process and to micro-sam's ``AutomaticMaskGenerator`` in a subprocess of its
own virtual environment, ``--microsam-python``), the same grid (``points_per_side`` x ``points_per_side``, 64 points
per batch) and thresholds (segment-anything's defaults unless given). Times: the generator alone on an embedding
computed beforehand ("embedding excluded") and the embedding plus the generator ("included"). Ours twice: in
float32 with segment-anything's encoder (the parity settings: the same masks) and as the plugin loads the model
(fast encoder and decoder, bfloat16 products on CPUs with native bfloat16). The load average is printed: other
processes inflate every time, the ratios are the figures to read.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_focsam.engine.automatic import AutomaticOptions, generate_masks
from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.sam_predictor import SamFamilyPredictor
from napari_focsam.engine.types import ImageEmbedding

MICROSAM = """
import json, sys, time
import numpy as np, torch
from segment_anything import SamPredictor, sam_model_registry
from micro_sam import util
from micro_sam.instance_segmentation import AutomaticMaskGenerator
weights, image_path, kind, points, kw = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), json.loads(sys.argv[5])
torch.set_num_threads(int(sys.argv[6]))
sam = sam_model_registry[kind]()
sam.load_state_dict(torch.load(weights, weights_only=True))
predictor = SamPredictor(sam.eval())
image = np.load(image_path)
start = time.perf_counter()
embeddings = util.precompute_image_embeddings(predictor, image, verbose=False)
embed = time.perf_counter() - start
amg = AutomaticMaskGenerator(predictor, points_per_side=points, points_per_batch=64)
start = time.perf_counter()
amg.initialize(image, image_embeddings=embeddings)
labels = amg.generate(**kw)
generate = time.perf_counter() - start
print(json.dumps({"embed": embed, "generate": generate, "objects": int(len(np.unique(labels)) - 1)}))
"""


def test_image(size: int = 1024, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size, 3), 30.0, np.float32)
    for _ in range(40):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(15, 90)
        image[((yy - cy) ** 2 + (xx - cx) ** 2) < r * r] = rng.uniform(60, 250, 3)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sam_vit_b")
    parser.add_argument("--points", type=int, default=32)
    parser.add_argument("--iou", type=float, default=0.88)
    parser.add_argument("--stability", type=float, default=0.95)
    parser.add_argument("--microsam-python", default=os.environ.get(
        "MICROSAM_PYTHON", str(Path.home() / ".cache/microsam-venv/bin/python")),
                        help="python of an environment with micro-sam (default: $MICROSAM_PYTHON)")
    args = parser.parse_args()
    from segment_anything import SamAutomaticMaskGenerator
    from segment_anything.modeling import Sam

    image = test_image()
    thresholds = dict(pred_iou_thresh=args.iou, stability_score_thresh=args.stability, box_nms_thresh=0.7)
    options = AutomaticOptions(points_per_side=args.points, points_per_batch=64, **thresholds)
    plugin = ModelManager.load(args.model, allow_random_weights=True, device="cpu")
    loaded = plugin.predictor._loaded
    parity = SamFamilyPredictor(loaded)  # float32, segment-anything's encoder, our fast decoder in float32
    m = loaded.model
    sam = Sam(m.image_encoder, m.prompt_encoder, m.mask_decoder).eval()
    rows = {}

    def report(name, row):  # each row as soon as it is measured (a long micro-sam run loses nothing)
        rows[name] = row
        print(f"measured {name}: embed {row['embed']:.1f} s, generate {row['generate']:.1f} s, {row['objects']} "
              f"objects, load average {os.getloadavg()[0]:.1f}", flush=True)

    def ours(name, predictor):
        start = time.perf_counter()
        features, geometry = predictor.embed(image)[:2]
        embed = time.perf_counter() - start
        start = time.perf_counter()
        result = generate_masks(predictor, ImageEmbedding(features, geometry, "bench"), options)
        report(name, {"embed": embed, "generate": time.perf_counter() - start, "objects": len(result),
                      "stats": result.stats})

    ours("ours float32 (parity settings)", parity)
    start = time.perf_counter()
    reference = SamAutomaticMaskGenerator(sam, points_per_side=args.points, points_per_batch=64, **thresholds)
    reference.predictor.set_image(image)
    embed = time.perf_counter() - start
    # generate() sets the image again: time the generator on the embedding by skipping that second encoder pass
    reference.predictor.set_image = lambda *a, **k: None
    reference.predictor.reset_image = lambda: None
    start = time.perf_counter()
    records = reference.generate(image)
    report("segment-anything SamAutomaticMaskGenerator", {"embed": embed, "generate": time.perf_counter() - start,
                                                          "objects": len(records)})
    ours("ours as the plugin loads it (fast, bf16 where native)", plugin.predictor)
    if Path(args.microsam_python).exists():
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(sam.state_dict(), Path(tmp) / "w.pt")
            np.save(Path(tmp) / "image.npy", image)
            kind = {"sam_vit_b": "vit_b", "sam_vit_l": "vit_l", "sam_vit_h": "vit_h"}.get(args.model)
            if kind is not None:
                done = subprocess.run([args.microsam_python, "-c", MICROSAM, str(Path(tmp) / "w.pt"),
                                       str(Path(tmp) / "image.npy"), kind, str(args.points), json.dumps(thresholds),
                                       str(torch.get_num_threads())], capture_output=True, text=True, check=False)
                if done.returncode == 0:
                    report("micro-sam AutomaticMaskGenerator", json.loads(done.stdout.strip().splitlines()[-1]))
                else:
                    print("micro-sam failed:", done.stderr[-2000:], file=sys.stderr)
    base = rows["segment-anything SamAutomaticMaskGenerator"]
    print(f"{args.model}, 1024x1024, {args.points}x{args.points} points, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'':58} {'embed':>8} {'generate':>9} {'ratio':>6} {'total':>8} {'ratio':>6} objects")
    for name, row in rows.items():
        total = row["embed"] + row["generate"]
        print(f"{name:58} {row['embed']:8.1f} {row['generate']:9.1f} {row['generate'] / base['generate']:6.2f} "
              f"{total:8.1f} {total / (base['embed'] + base['generate']):6.2f} {row['objects']}")
    for name, row in rows.items():
        if "stats" in row:
            print(f"{name}: {row['stats']}")


if __name__ == "__main__":
    main()
