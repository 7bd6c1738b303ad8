"""Engine speed against segment-anything's ``SamPredictor``, measured in one run on the same weights.

    python benchmarks/bench_engine.py                 # ViT-B sized model, random weights
    python benchmarks/bench_engine.py --model sam_vit_h --embed-repeats 1

Prints one table: the ViT embedding (ours vs ``SamPredictor.set_image``, fp32 and, where the CPU supports it, bf16
autocast with its deviation from fp32), the per-click latency with a cached embedding up to the mask at image
resolution (ours vs ``SamPredictor.predict``, single-mask and SAM's default multi-mask), and the FocSAM refiner's
time per object (an object inside 4 windows, and one covering all 16).
Random weights give meaningless masks but the same arithmetic as real ones.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

from napari_focsam.engine.sam_predictor import SamFamilyPredictor
from napari_focsam.engine.session import ObjectSession
from napari_focsam.engine.types import ImageEmbedding
from napari_focsam.models.loader import load_model
from napari_focsam.models.refiner import FocusRefiner


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def test_image(height: int = 768, width: int = 1024, seed: int = 0) -> np.ndarray:
    """A smooth image with a few bright blobs (random weights do not care, but post-processing sizes do)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = np.zeros((height, width, 3), np.float32)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(40, 160)
        image += (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)[..., None] * rng.uniform(40, 120, 3)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def bench_embedding(loaded, image, repeats: int, rows: list) -> ImageEmbedding:
    model = loaded.model
    reference = SamPredictor(Sam(model.image_encoder, model.prompt_encoder, model.mask_decoder).eval())
    with torch.inference_mode():
        ref_times = timed(lambda: reference.set_image(image), repeats, warmup=0)
    ours = SamFamilyPredictor(loaded)
    our_times = timed(lambda: ours.embed(image), repeats, warmup=0)
    features, geometry = ours.embed(image)
    ref_t, our_t = min(ref_times), min(our_times)
    rows.append(("embedding fp32 (s)", our_t, ref_t))
    if torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX512_BF16") or torch.cuda.is_available():
        bf16 = SamFamilyPredictor(loaded, encoder_autocast=torch.bfloat16)
        bf_times = timed(lambda: bf16.embed(image), repeats, warmup=0)
        bf_features, _ = bf16.embed(image)
        rel = float((bf_features - features).norm() / features.norm())
        rows.append((f"embedding bf16 autocast (s) [rel. L2 diff {rel:.2%}]", min(bf_times), ref_t))
    return ImageEmbedding(features, geometry, "bench")


def bench_clicks(loaded, embedding: ImageEmbedding, image, n: int, rows: list) -> None:
    model = loaded.model
    reference = SamPredictor(Sam(model.image_encoder, model.prompt_encoder, model.mask_decoder).eval())
    reference.features = embedding.features
    reference.original_size = image.shape[:2]
    reference.input_size = embedding.geometry.resized_size
    reference.is_image_set = True
    ours = SamFamilyPredictor(loaded)
    rng = np.random.default_rng(1)
    clicks = np.stack([rng.uniform(0, image.shape[0] - 1, n), rng.uniform(0, image.shape[1] - 1, n)], 1)

    def reference_clicks(multimask: bool) -> list[float]:
        times, low_res = [], None
        for i in range(n):
            coords = clicks[: i + 1, ::-1]
            labels = np.ones(i + 1, int)
            start = time.perf_counter()
            with torch.inference_mode():
                _, _, low = reference.predict(coords, labels, mask_input=low_res, multimask_output=multimask)
            times.append(time.perf_counter() - start)
            low_res = low[:1]
        return times

    def our_clicks() -> list[float]:
        session = ObjectSession(ours, embedding)
        times = []
        for y, x in clicks:
            start = time.perf_counter()
            session.click(y, x)
            times.append(time.perf_counter() - start)
        return times

    reference_clicks(False)  # warm-up
    our_clicks()
    ref_single = statistics.median(reference_clicks(False))
    ref_multi = statistics.median(reference_clicks(True))
    our = statistics.median(our_clicks())
    rows.append(("click, cached embedding → mask (s) vs predict(multimask_output=False)", our, ref_single))
    rows.append(("click, cached embedding → mask (s) vs predict() default multimask", our, ref_multi))


def bench_refiner(rows: list, repeats: int) -> None:
    refiner = FocusRefiner().eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in refiner.named_parameters():
            if "gamma" in name:
                p.normal_(0, 0.1)
    embeds = torch.randn(1, 256, 64, 64)
    token = torch.randn(1, 1, 256)
    for label, (y0, y1, x0, x1) in (("object inside 4 windows", (300, 420, 300, 420)),
                                    ("object covering all 16 windows", (100, 900, 100, 900))):
        logits = torch.full((1, 1, 256, 256), -5.0)
        logits[..., y0 // 4: y1 // 4, x0 // 4: x1 // 4] = 5.0
        with torch.inference_mode():
            times = timed(lambda: refiner(embeds, logits, token), repeats)
        rows.append((f"refiner per object, {label} (s)", min(times), None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sam_vit_b", help="architecture (random weights)")
    parser.add_argument("--embed-repeats", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}, model {args.model} (random weights)")
    loaded = load_model(args.model, device="cpu")
    image = test_image()
    rows: list = []
    embedding = bench_embedding(loaded, image, args.embed_repeats, rows)
    bench_clicks(loaded, embedding, image, args.clicks, rows)
    bench_refiner(rows, repeats=5)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure':<{width}}  {'ours':>9}  {'SamPredictor':>12}  {'ratio':>6}")
    for name, ours, ref in rows:
        ref_s = f"{ref:12.4f}" if ref is not None else f"{'-':>12}"
        ratio = f"{ours / ref:6.2f}" if ref else f"{'-':>6}"
        print(f"{name:<{width}}  {ours:9.4f}  {ref_s}  {ratio}")


if __name__ == "__main__":
    main()
