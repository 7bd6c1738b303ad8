"""Engine speed against segment-anything's ``SamPredictor``, measured in one run on the same weights.

    python benchmarks/bench_engine.py                 # ViT-B sized model, random weights
    python benchmarks/bench_engine.py --model sam_vit_h --embed-repeats 1

Prints one table: the ViT embedding, every variant against ``SamPredictor.set_image`` (fp32) timed interleaved in
the same run (reference, fast fp32, fast bf16 where the device has native bf16, and the reference under bf16
autocast), each with its relative L2 deviation from SamPredictor's embedding and the pixel agreement of the masks
its embedding gives after a few clicks (decoded by the same fp32 decoder); the per-click latency with a cached
embedding up to the mask at image resolution (ours vs ``SamPredictor.predict``, single-mask and SAM's default
multi-mask), with the fused decoder (its default: output upscaling and folded attention in bf16 on CPUs with native
bf16; the upscaling alone in bf16; all in fp32),
segment-anything's decoder forward and the fused decoder under bf16 autocast, each with the pixel agreement of its
masks with the fused fp32 decoder's over the 20 clicks (logits fed back, so differences compound); and the FocSAM
refiner's time per object (objects in 4 plain windows, in 4 shifted windows, and covering all 16) against the
official algorithm with a standard deformable-convolution kernel.
Random weights give meaningless masks but the same arithmetic as real ones; the relative-position tables, which
segment-anything initialises to zero, are drawn at random (``--rel-pos-std``) so that their term is exercised.
Times are the minimum over the repeats; the load average is printed because other processes inflate them.
"""

from __future__ import annotations

import argparse
import os
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
from napari_focsam.models.fast_decoder import default_decoder_dtype
from napari_focsam.models.fast_encoder import default_encoder_dtype
from napari_focsam.models.refiner import FocusRefiner
from napari_focsam.weights.loader import load_model


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a time taken without this measures nothing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def test_image(height: int = 768, width: int = 1024, seed: int = 0) -> np.ndarray:
    """A smooth image with a few bright blobs (random weights do not care, but post-processing sizes do)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    image = np.zeros((height, width, 3), np.float32)
    for _ in range(6):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(40, 160)
        image += (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)[..., None] * rng.uniform(40, 120, 3)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def mask_agreement(predictor: SamFamilyPredictor, reference: ImageEmbedding, other: ImageEmbedding,
                   image: np.ndarray, n: int = 5) -> tuple[float, float]:
    """The smallest pixel agreement over ``n`` clicks between the masks of two embeddings (same decoder, same
    clicks, logits fed back), and the mean foreground fraction of the reference masks (0 or 1 would make the
    agreement meaningless)."""
    rng = np.random.default_rng(2)
    clicks = [(rng.uniform(0, image.shape[0] - 1), rng.uniform(0, image.shape[1] - 1), bool(i % 3 != 1))
              for i in range(n)]
    ref_session, other_session = ObjectSession(predictor, reference), ObjectSession(predictor, other)
    agreement, foreground = [], []
    for y, x, positive in clicks:
        a = ref_session.click(y, x, positive=positive)
        b = other_session.click(y, x, positive=positive)
        agreement.append(float((a == b).mean()))
        foreground.append(float(a.mean()))
    return min(agreement), float(np.mean(foreground))


def bench_embedding(loaded, image, repeats: int, rows: list, autocast: bool = True) -> ImageEmbedding:
    model = loaded.model
    reference = SamPredictor(Sam(model.image_encoder, model.prompt_encoder, model.mask_decoder).eval())
    device = loaded.model.image_encoder.pos_embed.device
    fast_dtype = default_encoder_dtype(device)
    variants: dict[str, Callable[[], object]] = {}
    ours: dict[str, SamFamilyPredictor] = {
        "reference fp32 (segment-anything blocks)": SamFamilyPredictor(loaded, encoder_attention="reference"),
        "fast fp32": SamFamilyPredictor(loaded, encoder_attention="fast", encoder_dtype=torch.float32),
    }
    if fast_dtype != torch.float32:
        name = str(fast_dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float16", "fp16")
        ours[f"fast {name} (default)"] = SamFamilyPredictor(loaded, encoder_attention="fast",
                                                          encoder_dtype=fast_dtype)
        if autocast:
            ours[f"reference, {name} autocast"] = SamFamilyPredictor(loaded, encoder_autocast=fast_dtype)

    def set_image() -> None:
        with torch.inference_mode():
            reference.set_image(image)

    for label, predictor in ours.items():
        if predictor.fast_encoder is not None:
            start = time.perf_counter()
            predictor.fast_encoder.prepare()
            print(f"{label}: derived weights made in {time.perf_counter() - start:.2f} s (once per model load)")
    variants["SamPredictor.set_image fp32"] = set_image
    results: dict[str, tuple[torch.Tensor, object]] = {}
    for label, predictor in ours.items():
        def run(label=label, predictor=predictor) -> None:
            results[label] = predictor.embed(image)
        variants[label] = run
    times: dict[str, list[float]] = {label: [] for label in variants}
    for _ in range(repeats):  # interleaved, so that a change in the machine's load hits every variant alike
        for label, fn in variants.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[label].append(time.perf_counter() - start)
    ref_t = min(times["SamPredictor.set_image fp32"])
    ref_features = reference.features
    decoder = ours["reference fp32 (segment-anything blocks)"]
    geometry = results["reference fp32 (segment-anything blocks)"][1]
    ref_embedding = ImageEmbedding(ref_features, geometry, "reference")
    for label, (features, geometry) in results.items():
        rel = float((features.double() - ref_features.double()).norm() / ref_features.double().norm())
        agree, fg = mask_agreement(decoder, ref_embedding, ImageEmbedding(features, geometry, label), image)
        rows.append((f"embedding (s), {label} [rel. L2 {rel:.2e}, masks ≥{agree:.2%} (fg {fg:.0%})]",
                     min(times[label]), ref_t))
    return ref_embedding


def bench_clicks(loaded, embedding: ImageEmbedding, image, n: int, rows: list) -> None:
    """Median time per click over ``n`` clicks (fed-back logits), the mask at image resolution, all variants and the
    reference timed in lockstep."""
    model = loaded.model
    reference = SamPredictor(Sam(model.image_encoder, model.prompt_encoder, model.mask_decoder).eval())
    reference.features = embedding.features
    reference.original_size = image.shape[:2]
    reference.input_size = embedding.geometry.resized_size
    reference.is_image_set = True
    fp32 = "fused decoder, fp32"
    variants = {}
    device = embedding.features.device
    if default_decoder_dtype(device) != torch.float32:
        variants["fused decoder, bf16 upscaling + attention (default here)"] = SamFamilyPredictor(
            loaded, decoder_upscale_dtype="auto", decoder_attention_dtype="auto")
        variants["fused decoder, bf16 upscaling only"] = SamFamilyPredictor(loaded, decoder_upscale_dtype="auto")
    variants[fp32 if variants else fp32 + " (default here)"] = SamFamilyPredictor(loaded)
    variants["segment-anything's decoder forward, fp32"] = SamFamilyPredictor(loaded, decoder="reference")
    if default_encoder_dtype(device) == torch.bfloat16:
        variants["fused decoder, bf16 autocast"] = SamFamilyPredictor(loaded, decoder_autocast=torch.bfloat16)
    rng = np.random.default_rng(1)
    clicks = np.stack([rng.uniform(0, image.shape[0] - 1, n), rng.uniform(0, image.shape[1] - 1, n)], 1)

    def reference_click(i: int, multimask: bool, low_res: np.ndarray | None) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        with torch.inference_mode():
            _, _, low = reference.predict(clicks[: i + 1, ::-1], np.ones(i + 1, int), mask_input=low_res,
                                          multimask_output=multimask)
        return time.perf_counter() - start, low[:1]

    def our_click(session: ObjectSession, y: float, x: float) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        mask = session.click(y, x).copy()
        return time.perf_counter() - start, mask

    # lockstep: every click is timed for each variant in turn, so that the machine's drift (large on shared VMs)
    # falls on all of them alike; round 0 is the warm-up
    single, multi = [], []
    ours: dict[str, list[float]] = {name: [] for name in variants}
    masks: dict[str, list[np.ndarray]] = {}
    for round_ in range(3):
        sessions = {name: ObjectSession(predictor, embedding) for name, predictor in variants.items()}
        masks = {name: [] for name in variants}
        low_single = low_multi = None
        for i, (y, x) in enumerate(clicks):
            t_single, low_single = reference_click(i, False, low_single)
            t_multi, low_multi = reference_click(i, True, low_multi)
            if round_:
                single.append(t_single)
                multi.append(t_multi)
            for name, session in sessions.items():
                elapsed, mask = our_click(session, y, x)
                masks[name].append(mask)
                if round_:
                    ours[name].append(elapsed)
    ref_single, ref_multi = statistics.median(single), statistics.median(multi)
    exact = next(masks[name] for name in masks if name.startswith(fp32))
    for name, times in ours.items():
        agree = min(float((a == b).mean()) for a, b in zip(masks[name], exact))
        label = f"click → mask at image size (s), {name} [masks ≥{agree:.3%} of fused fp32]"
        rows.append((label + " vs predict(multimask_output=False)", statistics.median(times), ref_single))
    rows.append(("click, default vs predict() (SAM's default multimask)", statistics.median(ours[next(iter(ours))]),
                 ref_multi))


def bench_refiner(rows: list, repeats: int, device: torch.device) -> None:
    """The refiner per object: ours (gather DCN, the default) against the official algorithm's structure with a
    standard DCN kernel (``torchvision.ops.deform_conv2d``, the im2col algorithm of mmcv's CPU kernel that the
    official code calls), interleaved, same weights and inputs."""
    refiner = FocusRefiner().eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in refiner.named_parameters():
            if "gamma" in name:
                p.normal_(0, 0.1)
    refiner.to(device)
    embeds = torch.randn(1, 256, 64, 64).to(device)
    token = torch.randn(1, 1, 256).to(device)
    cases = (("object in 4 windows (4 plain + 1 shifted)", (480, 544, 480, 544)),
             ("object in 1 plain + 4 shifted windows", (300, 420, 300, 420)),
             ("object covering all 16 windows", (100, 900, 100, 900)))
    for label, (y0, y1, x0, x1) in cases:
        logits = torch.full((1, 1, 256, 256), -5.0, device=device)
        logits[..., y0 // 4: y1 // 4, x0 // 4: x1 // 4] = 5.0
        ours, official = [], []
        with torch.inference_mode():
            for round_ in range(repeats + 1):
                refiner.set_dcn_backend("gather")
                synchronize(device)
                start = time.perf_counter()
                out = refiner(embeds, logits, token)
                synchronize(device)
                if round_:
                    ours.append(time.perf_counter() - start)
                refiner.set_dcn_backend("torchvision")
                start = time.perf_counter()
                ref = refiner(embeds, logits, token)
                synchronize(device)
                if round_:
                    official.append(time.perf_counter() - start)
        refiner.set_dcn_backend("gather")
        diff = float((out - ref).abs().max())
        rows.append((f"refiner per object, {label} (s) vs official algorithm [max |diff| {diff:.1e}]",
                     min(ours), min(official)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sam_vit_b", help="architecture (random weights)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--embed-repeats", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--rel-pos-std", type=float, default=0.1,
                        help="std of the random relative-position tables (segment-anything initialises them to 0)")
    parser.add_argument("--refiner-repeats", type=int, default=5)
    parser.add_argument("--no-autocast", action="store_true", help="leave out the reference under bf16 autocast")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    where = (f"{torch.cuda.get_device_name(device)}" if device.type == "cuda"
             else f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {where}, "
          f"fast encoder dtype {default_encoder_dtype(device)}, decoder dtype {default_decoder_dtype(device)}, "
          f"model {args.model} (random weights, rel-pos std {args.rel_pos_std})")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())} ({os.cpu_count()} cpus)")
    loaded = load_model(args.model, device=device)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(0)
        for name, param in loaded.model.image_encoder.named_parameters():
            if "rel_pos" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * args.rel_pos_std)
    image = test_image()
    rows: list = []
    embedding = bench_embedding(loaded, image, args.embed_repeats, rows, autocast=not args.no_autocast)
    bench_clicks(loaded, embedding, image, args.clicks, rows)
    bench_refiner(rows, repeats=args.refiner_repeats, device=device)
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measure (peer: SamPredictor unless named)':<{width}}  {'ours':>9}  {'peer':>12}  {'ratio':>6}")
    for name, ours, ref in rows:
        ref_s = f"{ref:12.4f}" if ref is not None else f"{'-':>12}"
        ratio = f"{ours / ref:6.2f}" if ref else f"{'-':>6}"
        print(f"{name:<{width}}  {ours:9.4f}  {ref_s}  {ratio}")


if __name__ == "__main__":
    main()
