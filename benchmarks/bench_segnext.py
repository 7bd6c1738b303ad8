"""SegNext on this machine: embedding time and per-click latency, ours (default numerics) vs the official algorithm
in float32 on the same random weights, in one run.

"Official algorithm in float32" is the network as the official code writes it: explicit ``softmax(q kᵀ/8) v``
attention, the head upsampling every scale to 256² before its fusion convolution, everything in float32. "Ours" is
what ``ModelManager.load("segnext_vitb_sa2")`` runs: fused attention, the folded head, and bfloat16 products where
the CPU has native bfloat16. The two are interleaved click by click; agreement with float32 is the largest
probability difference and the share of mask pixels that differ.

    PYTHONPATH=. python benchmarks/bench_segnext.py --clicks 3
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from napari_focsam.engine.segnext_predictor import SegNextPredictor
from napari_focsam.engine.session import ObjectSession
from napari_focsam.engine.types import ImageEmbedding
from napari_focsam.weights.segnext import load_segnext


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="segnext_vitb_sa2")
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    loaded = load_segnext(args.model, None, seed=0)
    ours = SegNextPredictor(loaded)
    official = SegNextPredictor(loaded, lowp=None, encoder_lowp=None, attention="explicit", folded_head=False)
    rng = np.random.default_rng(0)
    h, w = args.size
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    clicks = [(int(rng.integers(0, h)), int(rng.integers(0, w)), i % 2 == 0) for i in range(args.clicks)]
    print(f"model {args.model}, image {h}x{w}, {args.clicks} clicks, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, ours: lowp={ours.lowp} encoder_lowp={ours.encoder_lowp}")
    results = {}
    for name, predictor in (("official-f32", official), ("ours", ours)):
        start = time.perf_counter()
        features, geometry = predictor.embed(image)
        results[name] = {"embed": time.perf_counter() - start,
                         "session": ObjectSession(predictor, ImageEmbedding(features, geometry, key=name)),
                         "clicks": []}
    worst_prob, worst_pixels = 0.0, 0.0
    for y, x, positive in clicks:
        for name in ("official-f32", "ours"):
            start = time.perf_counter()
            results[name]["session"].click(y, x, positive)
            results[name]["clicks"].append(time.perf_counter() - start)
        a, b = (torch.sigmoid(results[n]["session"].state.logits.float()) for n in ("official-f32", "ours"))
        worst_prob = max(worst_prob, float((a - b).abs().max()))
        worst_pixels = max(worst_pixels, float(((a > 0.5) != (b > 0.5)).float().mean()))
    for name, r in results.items():
        per = r["clicks"]
        print(f"{name:13s} embed {r['embed']:6.2f} s   per click: median {np.median(per):5.2f} s "
              f"(first {per[0]:.2f}, all {', '.join(f'{t:.2f}' for t in per)})")
    ratio = np.median(results["official-f32"]["clicks"]) / np.median(results["ours"]["clicks"])
    print(f"per-click speed-up vs official float32: {ratio:.2f}x; embed speed-up: "
          f"{results['official-f32']['embed'] / results['ours']['embed']:.2f}x")
    print(f"agreement with float32 (each step fed its own prediction): max |Δprob| {worst_prob:.2e}, "
          f"mask pixels differing (thr 0.5) {100 * worst_pixels:.3f} %")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
