"""SegNext on this machine: embedding time and per-click latency, ours (default numerics) vs the official algorithm
in float32 on the same random weights, in one run, interleaved.

"Official algorithm in float32" is the network as the official code writes it: explicit ``softmax(q kᵀ/8) v``
attention, the head upsampling every scale to 256² before its fusion convolution, everything in float32. "Ours" is
what ``ModelManager.load("segnext_vitb_sa2")`` runs: the image encoder and the per-click network with bfloat16
products where the CPU has native bfloat16 (attention split by heads across single-threaded workers, the head
folded). Each image is embedded by both (alternating which goes first), then the clicks run click by click, one
predictor after the other; every step feeds each predictor its own previous prediction. Agreement with float32:
the largest logit and probability differences, and the IoU of the masks (threshold 0.5), per click.

Then ``--extra-clicks`` more clicks of ours alone (the official ones take many seconds each), for the absolute
per-click time. Every click is printed with the share of the machine's CPU time that *other* processes used while it
ran ("others": the machine's busy CPU time from ``/proc/stat`` minus this process's, over cores × wall time), so
that the figures of a shared machine can be read: a click with others near 0 % is an idle machine's.

    PYTHONPATH=. python benchmarks/bench_segnext.py --images 2 --clicks 3 --extra-clicks 10
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from napari_focsam.engine.cpu_load import read_proc_stat
from napari_focsam.engine.segnext_predictor import SegNextPredictor
from napari_focsam.engine.session import ObjectSession
from napari_focsam.engine.types import ImageEmbedding
from napari_focsam.weights.segnext import load_segnext

NAMES = ("official-f32", "ours")


def _timed(fn):
    """``fn()``, its wall and process CPU time, and the share of the machine's CPU that other processes used."""
    machine = read_proc_stat()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    after = read_proc_stat()
    others = float("nan")
    if machine is not None and after is not None and wall > 0:
        others = max(0.0, (after[0] - machine[0]) - cpu) / ((os.cpu_count() or 1) * wall)
    return out, wall, cpu, others


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random image with a few bright shapes, so that clicks land on structure and on background."""
    image = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
    for _ in range(3):
        y, x = int(rng.integers(0, h - h // 4)), int(rng.integers(0, w - w // 4))
        image[y:y + h // 4, x:x + w // 4] = rng.integers(150, 256, 3)
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="segnext_vitb_sa2")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640))
    parser.add_argument("--extra-clicks", type=int, default=10, help="clicks of ours alone afterwards")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    loaded = load_segnext(args.model, None, seed=0)
    predictors = {"official-f32": SegNextPredictor(loaded, lowp=None, encoder_lowp=None, attention="explicit",
                                                   folded_head=False),
                  "ours": SegNextPredictor(loaded)}
    ours = predictors["ours"]
    print(f"model {args.model}, {args.images} images {args.size[0]}x{args.size[1]}, {args.clicks} clicks each, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, ours: lowp={ours.lowp} "
          f"encoder_lowp={ours.encoder_lowp}; load average at start {os.getloadavg()}")
    rng = np.random.default_rng(0)
    h, w = args.size
    embed = {n: [] for n in NAMES}
    click = {n: [] for n in NAMES}
    click_cpu = {n: [] for n in NAMES}
    click_others = {n: [] for n in NAMES}
    rows = []
    for index in range(args.images):
        image = _image(rng, h, w)
        sessions = {}
        for name in (NAMES if index % 2 == 0 else NAMES[::-1]):
            (features, geometry), wall, _, _ = _timed(lambda p=predictors[name], im=image: p.embed(im))
            embed[name].append(wall)
            sessions[name] = ObjectSession(predictors[name], ImageEmbedding(features, geometry, key=name))
        for step in range(args.clicks):
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            for name in NAMES:
                _, wall, cpu, others = _timed(lambda s=sessions[name], c=(y, x, step % 2 == 0): s.click(*c))
                click[name].append(wall)
                click_cpu[name].append(cpu)
                click_others[name].append(others)
            a, b = (sessions[n].state.logits.float() for n in NAMES)
            ma, mb = torch.sigmoid(a) > 0.5, torch.sigmoid(b) > 0.5
            union = int((ma | mb).sum())
            iou = 1.0 if union == 0 else int((ma & mb).sum()) / union
            rows.append((index, step, float((a - b).abs().max()), float(a.abs().max()),
                         float((torch.sigmoid(a) - torch.sigmoid(b)).abs().max()), iou))
            print(f"image {index} click {step}: official {click['official-f32'][-1]:5.2f} s "
                  f"(others {click_others['official-f32'][-1]:.0%}), ours {click['ours'][-1]:5.2f} s, "
                  f"{click_cpu['ours'][-1]:.2f} CPU-s (others {click_others['ours'][-1]:.0%}) | "
                  f"max|Δlogit| {rows[-1][2]:.2e} (max|logit| {rows[-1][3]:.2f}), "
                  f"max|Δprob| {rows[-1][4]:.2e}, mask IoU {iou:.4f} | load {os.getloadavg()[0]:.1f}", flush=True)
    extra = []
    for step in range(args.extra_clicks):
        y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
        _, wall, cpu, others = _timed(lambda c=(y, x, step % 2 == 0): sessions["ours"].click(*c))
        extra.append((wall, cpu, others))
        print(f"ours alone, click {step}: {wall:.2f} s, {cpu:.2f} CPU-s, others {others:.0%}, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    for name in NAMES:
        print(f"{name:13s} embed median {np.median(embed[name]):6.2f} s ({', '.join(f'{t:.2f}' for t in embed[name])})"
              f"   per click median {np.median(click[name]):5.2f} s wall, {np.median(click_cpu[name]):5.2f} s "
              f"process CPU (range {min(click[name]):.2f}–{max(click[name]):.2f} s)")
    print(f"ours / official float32: per click {np.median(click['ours']) / np.median(click['official-f32']):.2f} "
          f"(wall), {np.median(click_cpu['ours']) / np.median(click_cpu['official-f32']):.2f} (CPU time); "
          f"embedding {np.median(embed['ours']) / np.median(embed['official-f32']):.2f}")
    print(f"agreement with float32 over {len(rows)} clicks: max|Δlogit| {max(r[2] for r in rows):.2e}, "
          f"max|Δprob| {max(r[4] for r in rows):.2e}, min mask IoU {min(r[5] for r in rows):.4f}")
    if extra:
        quiet = min(extra, key=lambda e: e[2])
        print(f"ours alone over {len(extra)} clicks: median {np.median([e[0] for e in extra]):.2f} s wall, "
              f"{np.median([e[1] for e in extra]):.2f} CPU-s; fastest {min(e[0] for e in extra):.2f} s; on the "
              f"quietest click (others {quiet[2]:.0%}) {quiet[0]:.2f} s")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
