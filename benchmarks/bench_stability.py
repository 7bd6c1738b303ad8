"""The cost of prompt stability (ST over B jittered copies) and of a robust step, against one plain click.

    python benchmarks/bench_stability.py [--model sam_vit_b sam_vit_h] [--copies 8] [--clicks 20] [--threads N]
                                         [--quick]

Random weights and a random embedding (the decoder's cost does not depend on the embedding's values), a 768 × 1024
image, the default numerics of ``ModelManager.load``. Every click is timed in lockstep: one batch-1 decoder call on
its prompts (``decoder``), the plain step (``click``), the stability of that step (``ST``, the copies through
:class:`~napari_focsam.models.variant_decoder.VariantDecoder`), the same stability through the batched ordinary
decoder (``ST batched``, the path before it) and a robust step of the same prompts, so the machine's drift falls on
all alike. The ratios to read: ``ST/dec`` (the target of issue 19 is 2) and ``robust/click``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch


def run(model: str, copies: int, clicks: int, size: tuple[int, int]) -> dict[str, float]:
    from napari_focsam.engine.manager import ModelManager
    from napari_focsam.engine.session import ObjectSession
    from napari_focsam.engine.stability import Jitter
    from napari_focsam.engine.types import ImageEmbedding

    manager = ModelManager.load(model, device="cpu", allow_random_weights=True)
    predictor = manager.predictor
    geometry = predictor.transform.geometry(size)
    torch.manual_seed(0)
    features = torch.randn(1, 256, 64, 64, dtype=predictor.dtype)
    embedding = ImageEmbedding(features, geometry, key="bench")
    jitter = Jitter(copies=copies)
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {"decoder": [], "click": [], "stability": [], "batched": [], "robust": []}
    plain = ObjectSession(predictor, embedding)
    robust = ObjectSession(predictor, embedding, robust=jitter)
    for i in range(clicks + 1):
        y, x = rng.uniform(0, size[0] - 1), rng.uniform(0, size[1] - 1)
        positive = i % 3 != 2
        start = time.perf_counter()
        plain.click(y, x, positive)
        t_click = time.perf_counter() - start
        t_decoder = _one_decoder_call(predictor, embedding, plain)
        start = time.perf_counter()
        plain.stability(jitter)
        t_st = time.perf_counter() - start
        variant_decoder, predictor._variant_decoder = predictor._variant_decoder, None
        try:
            start = time.perf_counter()
            plain.stability(jitter)
            t_batched = time.perf_counter() - start
        finally:
            predictor._variant_decoder = variant_decoder
        start = time.perf_counter()
        robust.click(y, x, positive)
        t_robust = time.perf_counter() - start
        if i:  # the first click warms the caches and buffers
            times["decoder"].append(t_decoder)
            times["click"].append(t_click)
            times["stability"].append(t_st)
            times["batched"].append(t_batched)
            times["robust"].append(t_robust)
    return {k: statistics.median(v) for k, v in times.items()}


def _one_decoder_call(predictor, embedding, session) -> float:
    """The time of one batch-1 decoder call on the session's current prompts and mask input (what a click costs
    without prompt encoding, post-processing and bookkeeping)."""
    from napari_focsam.engine.types import ObjectState

    step = session.current
    history = session._history
    state = history[session._cursor - 2].prediction.state if session._cursor >= 2 else ObjectState()
    points, labels, box, mask_input, _ = predictor._model_inputs(step.prompts, embedding.geometry, state)
    with torch.inference_mode():
        sparse, dense = predictor._encode_prompts(points, labels, box, embedding.geometry, mask_input)
        start = time.perf_counter()
        predictor._decode(embedding.features, sparse, dense, embedding.extras)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", nargs="+", default=["sam_vit_b", "sam_vit_h"])
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="tiny model, 3 clicks (a smoke test)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models, clicks = (["sam_tiny"], 3) if args.quick else (args.model, args.clicks)
    print(f"torch threads {torch.get_num_threads()}; B = {args.copies}; median of {clicks} clicks (768 x 1024); "
          f"load average before {os.getloadavg()[0]:.2f}")
    print(f"{'model':<12} {'decoder':>9} {'click':>9} {'ST':>9} {'ST/dec':>7} {'ST/click':>9} {'ST batched':>11} "
          f"{'batched/dec':>12} {'robust':>9} {'robust/click':>13}")
    for model in models:
        r = run(model, args.copies, clicks, (768, 1024))
        print(f"{model:<12} {1e3 * r['decoder']:>7.1f}ms {1e3 * r['click']:>7.1f}ms "
              f"{1e3 * r['stability']:>7.1f}ms {r['stability'] / r['decoder']:>7.2f} "
              f"{r['stability'] / r['click']:>9.2f} {1e3 * r['batched']:>9.1f}ms {r['batched'] / r['decoder']:>12.2f}"
              f" {1e3 * r['robust']:>7.1f}ms {r['robust'] / r['click']:>13.2f}")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
