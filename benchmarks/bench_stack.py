"""Stack precompute throughput (serial vs Dask at the same total threads) and peak memory for a 1,000-slice stack.

    python benchmarks/bench_stack.py                       # tiny model + a short ViT-B run + RSS for 1,000 slices
    python benchmarks/bench_stack.py --vit-b-slices 0      # skip the ViT-B part
    python benchmarks/bench_stack.py --strategies          # also: propagation strategies on the stardist 3D fixture

Throughput: slices/second of ``precompute_stack`` (read, prepare, embed, write, per slice) serially with T torch
threads, and on a Dask LocalCluster of 1 worker x T threads and 2 workers x T/2 threads (T = the cores here). The
models are loaded (and warmed up) before the clock starts, on every worker; the stores are checked to be identical.
Random weights: the arithmetic of real ones, meaningless masks.

Control for the 2-worker case: 2 plain processes (no Dask) with T/2 torch threads each, each precomputing half of the
stack serially. "Dask 2 x T/2 / plain 2 x T/2" is then what Dask itself costs, and "plain 2 x T/2 / serial T" what
the hardware does to two embeddings running at once (shared caches and memory bandwidth) against one on all cores.

Peak RSS: a fresh process precomputes a TIFF stack read lazily, with a stand-in predictor that returns SAM-sized
features (1 x 256 x 64 x 64 float32, 4 MiB per slice: 4 GiB for 1,000 slices) at no compute cost, so the number is
the pipeline's own memory (reading, preparing, hashing, writing) and shows whether it grows with the stack.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_focsam.engine.manager import ModelManager
from napari_focsam.engine.types import ImageGeometry
from napari_focsam.stack import ModelConfig, precompute_stack
from napari_focsam.stack.distributed import dask_client
from napari_focsam.stack.worker import manager_for


def synthetic_stack(n: int, size: int = 256, seed: int = 0) -> np.ndarray:
    """Distinct uint16 slices with blobs (slices must differ, or they would share one embedding key)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size), np.uint16)
    for i in range(n):
        image = rng.normal(300, 20, (size, size))
        for _ in range(5):
            cy, cx, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(8, 30)]
            image += 400 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r)
        out[i] = np.clip(image, 0, 65535)
    return out


def warm(config: ModelConfig) -> int:
    """Load the model in this process (a worker) and run one embedding, so timing excludes loading."""
    manager = manager_for(config)
    manager.predictor.embed(np.zeros((64, 64, 3), np.uint8))
    return torch.get_num_threads()


def _plain_start(config: ModelConfig, ready: multiprocessing.Queue) -> None:
    """Initialise one plain process of the control: load and warm the model, then say so."""
    ready.put(warm(config))


def _plain_half(config: ModelConfig, half: np.ndarray, out: Path) -> tuple[int, float]:
    """Precompute one half of the stack in this plain process (the serial path, as a Dask-free worker would)."""
    start = time.perf_counter()
    precompute_stack(half, out, manager_for(config))
    return os.getpid(), time.perf_counter() - start


def plain_processes(pool: multiprocessing.pool.Pool, config: ModelConfig, stack: np.ndarray,
                    outs: list[Path]) -> float:
    """Slices/s of 2 plain processes precomputing a half of ``stack`` each, at once (the clock: both halves)."""
    middle = len(stack) // 2
    start = time.perf_counter()
    done = pool.starmap(_plain_half, [(config, stack[:middle], outs[0]), (config, stack[middle:], outs[1])],
                        chunksize=1)
    seconds = time.perf_counter() - start
    if len({pid for pid, _ in done}) != 2:
        print("  (the control's two halves ran in one process: its figure is not a 2-process one)")
    return len(stack) / seconds


def _features(paths: list[Path]) -> np.ndarray:
    import zarr

    return np.concatenate([zarr.open_group(p, mode="r")["features"][...] for p in paths])


def throughput(name: str, n: int, cores: int, rounds: int, folder: Path) -> dict[str, float]:
    """Best-of-``rounds`` slices/s per configuration; the configurations alternate within each round, so that a
    change of load on a shared machine hits them alike, and only the one being timed is running."""
    import contextlib

    stack = synthetic_stack(n)
    base = ModelConfig(name, device="cpu", allow_random_weights=True)
    torch.set_num_threads(cores)
    manager = base.load()
    manager.predictor.embed(np.zeros((64, 64, 3), np.uint8))
    rates: dict[str, float] = {}
    same: dict[str, bool] = {}
    per_task: dict[str, int] = {}
    half = max(1, cores // 2)
    labels = {"serial": f"serial        {cores} threads       ",
              "plain2": f"plain 2 processes x {half} thread{'s' if half > 1 else ' '}"}
    configurations = ("serial", "dask1", "dask2", "plain2")
    for workers in (1, 2):
        labels[f"dask{workers}"] = f"Dask {workers} worker{'s' if workers > 1 else ' '} x {cores // workers} threads"
    context = multiprocessing.get_context("spawn")

    @contextlib.contextmanager
    def started(label: str):
        """The cluster or process pool of one configuration, started and warmed up (the clock excludes this); one
        at a time, so that no idle cluster takes CPU from the configuration being timed (serial included)."""
        if label == "serial":
            yield None
        elif label == "plain2":
            ready = context.Queue()
            with context.Pool(2, initializer=_plain_start, initargs=(base.with_threads(half), ready)) as pool:
                for _ in range(2):
                    ready.get(timeout=600)
                yield pool
        else:
            workers = int(label[-1])
            config = base.with_threads(max(1, cores // workers))
            with dask_client(workers) as client:
                client.run(warm, config)
                yield client, config

    for r in range(rounds):
        outs = {label: [folder / f"{name}-{label}-{r}.zarr"] for label in configurations}
        outs["plain2"] = [folder / f"{name}-plain2-{r}-{k}.zarr" for k in (0, 1)]
        for label in configurations:
            with started(label) as running:
                if label == "serial":
                    rate = precompute_stack(stack, outs[label][0], manager).slices_per_second
                elif label == "plain2":
                    rate = plain_processes(running, base.with_threads(half), stack, outs[label])
                else:
                    client, config = running
                    result = precompute_stack(stack, outs[label][0], config, client=client)
                    rate, per_task[label] = result.slices_per_second, result.slices_per_task
            rates[label] = max(rates.get(label, 0.0), rate)
            same[label] = same.get(label, True) and bool(
                np.array_equal(_features(outs[label]), _features(outs["serial"])))
        for paths in outs.values():
            for path in paths:
                shutil.rmtree(path, ignore_errors=True)
    for label in configurations:
        ratio = "" if label == "serial" else f"   x{rates[label] / rates['serial']:.2f} of serial"
        task = f"   {per_task[label]} slice{'s' if per_task[label] > 1 else ''}/task" if label in per_task else ""
        print(f"  {name:<10} {labels[label]}  {rates[label]:7.3f} slices/s{ratio}   identical to serial: "
              f"{same[label]}{task}")
    print(f"  {name:<10} Dask 2 workers / plain 2 processes: x{rates['dask2'] / rates['plain2']:.2f} (Dask's own "
          f"cost); plain 2 processes / serial: x{rates['plain2'] / rates['serial']:.2f} (the hardware: two "
          "embeddings at once)")
    return rates


class SamSizedStub:
    """Returns deterministic SAM-sized features at no compute cost (for the memory measurement only)."""

    name = "stub"
    display_name = "SAM-sized stand-in (memory benchmark)"
    is_fallback = False
    supports_boxes = True
    uses_refiner = False
    fingerprint = "sam-sized-stub-v1"
    device = torch.device("cpu")

    def embed(self, image: np.ndarray, *, cancel=None):
        seed = int(image[::16, ::16].sum()) % (2**31)
        features = torch.from_numpy(np.random.default_rng(seed).standard_normal((1, 256, 64, 64), np.float32))
        h, w = image.shape[:2]
        return features, ImageGeometry((h, w), (h, w), (1024, 1024))

    def predict(self, *args, **kwargs):  # pragma: no cover - not used here
        raise NotImplementedError


def _status_mib(field: str) -> float:
    """VmRSS / VmHWM of this process in MiB (Linux), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(n: int, folder: Path) -> None:
    """Run in a fresh process: write an n-slice TIFF, precompute it lazily, print RSS figures (MiB)."""
    import tifffile

    path = folder / f"stack{n}.tif"
    with tifffile.TiffWriter(path) as tif:  # written slice by slice: the stack is never in memory here either
        for i in range(0, n, 50):
            tif.write(synthetic_stack(min(50, n - i), seed=i), contiguous=True)
    manager = ModelManager(SamSizedStub())
    before = _status_mib("VmRSS")
    try:  # reset the peak (VmHWM) to the current RSS, so the peak below is the precompute's own
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    start = time.perf_counter()
    result = precompute_stack(path, folder / f"stack{n}.zarr", manager)
    peak = _status_mib("VmHWM")
    store_bytes = sum(f.stat().st_size for f in (folder / f"stack{n}.zarr").rglob("*") if f.is_file())
    print(f"{n} {before:.0f} {peak:.0f} {time.perf_counter() - start:.1f} {store_bytes / 2**30:.2f} {result.computed}")


def peak_rss(counts: list[int], folder: Path) -> None:
    print("\nPeak RSS, lazy TIFF reading, SAM-sized features (4 MiB/slice), fresh process each:")
    for n in counts:
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(n), "--folder", str(folder)],
                             capture_output=True, text=True, check=True).stdout.split()
        slices, before, peak, seconds, gib, computed = out[-6:]
        print(f"  {slices:>5} slices: peak RSS {peak} MiB during the precompute (RSS before it {before} MiB), "
              f"{float(seconds):.0f} s, store {gib} GiB, {computed} slices computed")
        shutil.rmtree(folder / f"stack{n}.zarr", ignore_errors=True)


def strategies() -> None:
    """Mean 3D IoU of propagation per strategy on the stardist 3D fixture (each nucleus from its middle slice)."""
    import tifffile

    from napari_focsam.stack.propagate import propagate_object

    root = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "stardist_fixture"
    image = tifffile.imread(root / "images" / "nuclei3d.tif")
    truth = tifffile.imread(root / "masks" / "nuclei3d.tif")
    try:
        manager = ModelManager.load("fallback")
    except ImportError:
        print("\n(propagation strategies: the fallback is not available in this checkout)")
        return
    print(f"\nPropagation on the stardist 3D fixture with {manager.display_name} (mean 3D IoU over nuclei):")
    ids = [i for i in np.unique(truth) if i]
    runs = [(s, t, 0.5) for s in ("point", "points", "box", "box+point", "box+points") for t in (0.2, 0.3, 0.5)]
    runs += [("box+points", 0.3, c) for c in (0.0, 0.3, 0.7)]
    for strategy, threshold, min_contrast in runs:
        ious, extra, start = [], [], time.perf_counter()
        for object_id in ids:
            volume = truth == object_id
            zs = np.flatnonzero(volume.any((1, 2)))
            middle = int(zs[len(zs) // 2])
            result = propagate_object(image, {middle: volume[middle]}, manager, strategy=strategy,
                                      iou_threshold=threshold, min_contrast=min_contrast)
            got = result.volume(len(truth))
            ious.append((got & volume).sum() / max(1, (got | volume).sum()))
            extra.append(len(result.masks) - len(zs))
        print(f"  {strategy:<10} IoU threshold {threshold:.1f}, min contrast {min_contrast:.1f}: mean 3D IoU "
              f"{np.mean(ious):.3f} (median {np.median(ious):.3f}); slices found - true slices: mean "
              f"{np.mean(extra):+.1f}, max {max(extra):+d}; {len(ids)} nuclei, {time.perf_counter() - start:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-slices", type=int, default=64,
                        help="slices of the tiny model's stack (~15 s a run: a short run measures start-up)")
    parser.add_argument("--rounds", type=int, default=2, help="best of N alternating rounds (tiny model)")
    parser.add_argument("--vit-b-slices", type=int, default=4, help="0 skips the ViT-B part")
    parser.add_argument("--rss-slices", type=int, nargs="*", default=[50, 1000])
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--strategies", action="store_true")
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child is not None:
        rss_child(args.rss_child, args.folder)
        return
    folder = Path(tempfile.mkdtemp(prefix="bench-stack-"))
    try:
        print(f"torch {torch.__version__}, {args.cores} cores here; load average {os.getloadavg()[0]:.1f}")
        if args.tiny_slices or args.vit_b_slices:
            print("Precompute throughput, best of alternating rounds (models loaded and warm before timing):")
        if args.tiny_slices:
            throughput("sam_tiny", args.tiny_slices, args.cores, args.rounds, folder)
        if args.vit_b_slices:
            throughput("sam_vit_b", args.vit_b_slices, args.cores, 1, folder)
        if args.rss_slices:
            peak_rss(args.rss_slices, folder)
        if args.strategies:
            strategies()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
