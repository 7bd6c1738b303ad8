"""What HQ-SAM and PA-SAM cost on top of plain SAM of the same size, measured in one run on random weights.

    python benchmarks/bench_hq.py                       # HQ-SAM ViT-B vs SAM ViT-B, PA-SAM ViT-L vs SAM ViT-L
    python benchmarks/bench_hq.py --no-pa               # HQ only (ViT-L embeddings are slow on a CPU)
    python benchmarks/bench_hq.py --hq sam_hq_tiny --base sam_tiny --pa pa_sam_tiny --pa-base sam_tiny   # smoke

Both are loaded as the plugin loads them (``ModelManager.load``, ``precision="fast"``: the fast encoder and, on
CPUs with native bfloat16, bf16 where the project uses it; HQ-SAM's 3x3 mask-feature convolutions follow the
decoder's upscaling dtype). Times are the minimum over the repeats, interleaved (SAM, then the other, then SAM ...)
so that machine load hits both alike; the load average is printed because other processes inflate them.

Rows: the embedding (HQ-SAM's includes its per-image HQ features from the early ViT tokens; PA-SAM's its guiding
branch: a resize, OpenCV's Canny and three convolutions), and one click up to the mask at image resolution (the
mean over ``--clicks`` clicks, logits fed back as in the plugin). For HQ-SAM also the agreement of its fast-path
masks with its float32 masks (the bf16 tolerance) and the plain SAM click with segment-anything's decoder forward
(HQ-SAM's transformer runs that way: it has a sixth output token the fused SAM decoder does not carry).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.session import ObjectSession
from napari_focsam.engine.types import ImageEmbedding


def test_image(height: int = 600, width: int = 800, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = np.zeros((height, width, 3), np.float32)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(40, 160)
        image += (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)[..., None] * rng.uniform(40, 120, 3)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def clicks(image: np.ndarray, n: int, seed: int = 1) -> list[tuple[float, float, bool]]:
    rng = np.random.default_rng(seed)
    h, w = image.shape[:2]
    return [(float(rng.uniform(0, h)), float(rng.uniform(0, w)), bool(i == 0 or rng.random() < 0.6)) for i in range(n)]


def embed(manager: ModelManager, image: np.ndarray) -> tuple[float, ImageEmbedding]:
    start = time.perf_counter()
    features, geometry, *extras = manager.predictor.embed(image)
    seconds = time.perf_counter() - start
    return seconds, ImageEmbedding(features, geometry, "bench", extras[0] if extras else {})


def click_run(manager: ModelManager, embedding: ImageEmbedding, sequence) -> tuple[float, list[np.ndarray]]:
    session = ObjectSession(manager.predictor, embedding)
    times, masks = [], []
    for y, x, positive in sequence:
        start = time.perf_counter()
        masks.append(session.click(y, x, positive=positive))
        times.append(time.perf_counter() - start)
    return float(np.mean(times)), masks


def compare(label: str, base: ModelManager, other: ModelManager, image, sequence, repeats: int, click_repeats: int,
            rows: list) -> dict:
    embed_times: dict[str, list[float]] = {"base": [], "other": []}
    click_times: dict[str, list[float]] = {"base": [], "other": []}
    embeddings = {}
    for _ in range(repeats):
        for role, manager in (("base", base), ("other", other)):
            seconds, embeddings[role] = embed(manager, image)
            embed_times[role].append(seconds)
    for _ in range(click_repeats):
        for role, manager in (("base", base), ("other", other)):
            seconds, _ = click_run(manager, embeddings[role], sequence)
            click_times[role].append(seconds)
    eb, eo = min(embed_times["base"]), min(embed_times["other"])
    cb, co = min(click_times["base"]), min(click_times["other"])
    rows.append((f"{label}: embedding (s)", base.display_name, eb, eo))
    rows.append((f"{label}: click → mask (s)", base.display_name, cb, co))
    return embeddings


def extra_time(manager: ModelManager, image: np.ndarray, repeats: int) -> float:
    """The per-image work HQ-SAM / PA-SAM add after the encoder (minimum over ``repeats``): more stable than the
    difference of two noisy embedding times."""
    from napari_focsam.models.hq_decoder import hq_image_features
    from napari_focsam.models.pa_decoder import guiding_features

    predictor = manager.predictor
    decoder = predictor.model.mask_decoder
    times = []
    with torch.inference_mode():
        x = predictor.transform.image_to_input(image, predictor.device, predictor.dtype)
        features = torch.randn(1, 256, 64, 64, dtype=predictor.dtype)
        width = predictor.spec.encoder.embed_dim
        early = torch.randn(1, 64, 64, width, dtype=predictor.dtype)
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            if predictor.head == "hq":
                hq_image_features(decoder, features, early)
            else:
                guiding_features(decoder, x)
            times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hq", default="sam_hq_vit_b")
    parser.add_argument("--base", default="sam_vit_b", help="plain SAM of HQ-SAM's size")
    parser.add_argument("--pa", default="pa_sam_vit_l")
    parser.add_argument("--pa-base", default="sam_vit_l", help="plain SAM of PA-SAM's size")
    parser.add_argument("--no-pa", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=1, help="embeddings per model")
    parser.add_argument("--click-repeats", type=int, default=5, help="click sequences per model")
    parser.add_argument("--clicks", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    image = test_image()
    sequence = clicks(image, args.clicks)

    def load(name: str, **kwargs) -> ModelManager:
        return ModelManager.load(name, allow_random_weights=True, device=args.device, **kwargs)

    rows: list[tuple[str, str, float, float]] = []
    base, hq = load(args.base), load(args.hq)
    embeddings = compare("HQ-SAM", base, hq, image, sequence, args.repeats, args.click_repeats, rows)
    reference = load(args.base, decoder="reference")
    times: dict[str, list[float]] = {"reference": [], "hq": []}
    for _ in range(args.click_repeats):
        times["reference"].append(click_run(reference, embeddings["base"], sequence)[0])
        times["hq"].append(click_run(hq, embeddings["other"], sequence)[0])
    rows.append(("HQ-SAM: click, SAM with segment-anything's decoder forward (s)", args.base,
                 min(times["reference"]), min(times["hq"])))
    # the bf16 tolerance: HQ-SAM's fast path against its own float32 path, masks click by click
    exact = load(args.hq, precision="float32")
    _, fast_masks = click_run(hq, embeddings["other"], sequence)
    _, exact_embedding = embed(exact, image)
    _, exact_masks = click_run(exact, exact_embedding, sequence)
    agreement = min(float((a == b).mean()) for a, b in zip(fast_masks, exact_masks, strict=True))
    hq_fast, hq_exact = embeddings["other"].extras["hq_features"], exact_embedding.extras["hq_features"]
    deviation = float(torch.linalg.vector_norm(hq_fast - hq_exact) / torch.linalg.vector_norm(hq_exact))
    sam_embed = next(row for row in rows if row[0] == "HQ-SAM: embedding (s)")[2]
    rows.append(("HQ-SAM: extra per embedding, HQ features alone (s)", args.base, sam_embed,
                 extra_time(hq, image, args.click_repeats)))
    if not args.no_pa:
        pa_base, pa = load(args.pa_base), load(args.pa)
        compare("PA-SAM", pa_base, pa, image, sequence, args.repeats, args.click_repeats, rows)
        sam_embed = next(row for row in rows if row[0] == "PA-SAM: embedding (s)")[2]
        rows.append(("PA-SAM: extra per embedding, guiding branch alone (s)", args.pa_base, sam_embed,
                     extra_time(pa, image, args.click_repeats)))

    print(f"load average {os.getloadavg()[0]:.2f} (other processes inflate times); threads {torch.get_num_threads()}; "
          f"device {args.device}; HQ-SAM encoder {hq.predictor.encoder_numerics}, decoder upscaling "
          f"{str(hq.predictor.decoder_upscale_dtype).replace('torch.', '')}")
    print(f"{'measure':<66} {'plain SAM':>10} {'HQ/PA':>10} {'ratio':>7}")
    for name, _, base_s, other_s in rows:
        print(f"{name:<66} {base_s:>10.4f} {other_s:>10.4f} {other_s / base_s:>7.2f}")
    print(f"HQ-SAM fast path vs its float32 path: hq_features rel. L2 {deviation:.2e}; "
          f"masks ≥{100 * agreement:.2f}% equal over {len(sequence)} clicks")


if __name__ == "__main__":
    main()
