"""``napari-focsam embed`` and ``napari-focsam segment``: the stack tools on the command line.

Wire them into the main command with :func:`register` (``register(subparsers)``), or run this module directly
(``python -m napari_focsam.stack.cli embed ...``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXAMPLES_EMBED = """examples:
  napari-focsam embed nuclei.tif --store nuclei.embeddings.zarr --model sam_vit_b
  napari-focsam embed movie.zarr --store movie.embeddings.zarr --model focsam_vit_h --workers 4
  napari-focsam embed big.tif --store big.zarr --scheduler tcp://10.0.0.5:8786   (the store on a shared disk)
  napari-focsam embed slide.ome.zarr --store slide.tiles.zarr --tiles --model sam_vit_b   (a large image in tiles)
"""
EXAMPLES_SEGMENT = """examples:
  napari-focsam segment nuclei.tif --prompts clicks.csv --output labels.tif
  napari-focsam segment nuclei.tif --prompts clicks.csv --output labels.zarr --propagate --store nuclei.zarr
  napari-focsam segment nuclei.tif --prompts clicks.csv --output labels.tif --results objects.csv --stability

prompts file (CSV; JSON also works, see the README):
  slice,object_id,y,x,label
  12,1,40.5,33,positive
  12,1,44,38,negative
  20,1,41,30,negative        (with --propagate: object 1 is absent on slice 20; propagation stops there)
"""


def _model_arguments(parser: argparse.ArgumentParser) -> Any:
    """The model, Dask and stack options of both commands; returns the Dask group (for options of one command)."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", default="fallback",
                       help="model name: sam_vit_b/l/h, focsam_vit_h, ..., or 'fallback' (default; no weights needed)")
    group.add_argument("--checkpoint", type=Path, default=None,
                       help="checkpoint file (default: the model cache, downloaded there if needed)")
    group.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    group.add_argument("--allow-random-weights", action="store_true",
                       help="build SAM/FocSAM with seeded random weights (tests and benchmarks: masks mean nothing)")
    dask = parser.add_argument_group("parallel (Dask)")
    where = dask.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=0,
                       help="run on a local Dask cluster of N worker processes (127.0.0.1); 0 = serial (default)")
    where.add_argument("--scheduler", default=None,
                       help="run on an existing Dask cluster (scheduler address, e.g. tcp://host:8786); its workers "
                            "must see the same files")
    dask.add_argument("--torch-threads", type=int, default=None,
                      help="torch threads per Dask task (default: each host's cores / the worker threads on it)")
    stack = parser.add_argument_group("stack")
    stack.add_argument("stack", type=Path, help="the stack: .tif/.tiff, .zarr or .npy; (Z, Y, X), (Z, Y, X, RGB) or "
                                                "(T, Z, Y, X)")
    stack.add_argument("--key", default=None, help="the array inside a zarr group")
    colour = stack.add_mutually_exclusive_group()
    colour.add_argument("--rgb", dest="rgb", action="store_true", default=None,
                        help="the last axis holds colour channels")
    colour.add_argument("--gray", dest="rgb", action="store_false", help="the last axis is x (no colour)")
    stack.add_argument("--contrast-limits", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                       help="map LOW..HIGH to the model's 0..255, as napari shows it (default: 8-bit as is, else "
                            "robust percentiles per slice); use the same values in the widget to reuse a store")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output (never a foreign path)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return dask


def add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``embed`` options."""
    parser.add_argument("--store", type=Path, required=True, help="the zarr store of the embeddings (made or resumed)")
    parser.add_argument("--quick-verify", action="store_true",
                        help="trust the checksums of slices already written without re-reading their features")
    tiles = parser.add_argument_group("large images (tiles)")
    tiles.add_argument("--tiles", action="store_true",
                       help="embed every tile of every slice into an embedding cache store (the store the widget's "
                            "cache folder and ModelManager.load(store=...) use) instead of whole slices")
    tiles.add_argument("--tile", type=int, default=None, metavar="PX",
                       help="tile core side (default: the model's input minus two halos, 768 for SAM)")
    tiles.add_argument("--halo", type=int, default=None, metavar="PX", help="halo (default: 1/8 of the model's input)")
    dask = _model_arguments(parser)
    dask.add_argument("--slices-per-task", type=int, default=None, metavar="N",
                      help="slices one Dask task embeds (default: from the first slice's time, so that a task takes "
                           "about a second: several for fast models or GPUs, one for ViT models on a CPU)")


def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``segment`` options."""
    parser.add_argument("--prompts", type=Path, required=True, help="prompts file (.csv or .json)")
    parser.add_argument("--output", type=Path, required=True, help="the label stack to write (.tif/.tiff or .zarr)")
    parser.add_argument("--store", type=Path, default=None, help="precomputed embeddings (napari-focsam embed)")
    res = parser.add_argument_group("per-object results")
    res.add_argument("--results", type=Path, default=None, metavar="FILE",
                     help="write one row per object and slice (area, bounding box, centroid, prompts, source) to "
                          "FILE (.csv or .json)")
    res.add_argument("--stability", action="store_true",
                     help="add each object's stability (Stable-SAM's ST over jittered copies of its prompts, 0..1) "
                          "on its prompted slices to the results (costs about B decoder passes per object)")
    res.add_argument("--stability-copies", type=int, default=None, metavar="B",
                     help="jittered copies for --stability (default 8; at least 2)")
    res.add_argument("--stability-noise", type=float, default=None, metavar="S",
                     help="relative noise level for --stability, in (0, 1] (default 0.1)")
    prop = parser.add_argument_group("propagation through z")
    prop.add_argument("--propagate", action="store_true",
                      help="segment the prompted slices, then propagate every object through z")
    prop.add_argument("--strategy", default="auto",
                      help="prompt from the previous slice: point, points, box, mask or a '+' combination "
                           "(auto: box+point for SAM, point for click-only models)")
    prop.add_argument("--iou-threshold", type=float, default=None,
                      help="stop when the IoU with the previous slice drops below this (default 0.3)")
    prop.add_argument("--min-contrast", type=float, default=None,
                      help="stop when the object's contrast with its surroundings drops below this fraction of its "
                           "contrast on the prompted slice (default 0.5; 0 = off)")
    prop.add_argument("--max-distance", type=int, default=None, help="at most N slices from a prompted slice")
    _model_arguments(parser)


def _config(args: argparse.Namespace) -> Any:
    from .worker import ModelConfig

    return ModelConfig(args.model, None if args.checkpoint is None else str(args.checkpoint), args.device,
                       args.allow_random_weights, args.torch_threads)


def _progress(args: argparse.Namespace, unit: str) -> tuple[Any, Any]:
    if args.no_progress:
        return None, None
    from tqdm import tqdm

    bar = tqdm(unit=unit, dynamic_ncols=True)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar


def _os_error_line(exc: OSError) -> str:
    import errno

    where = f"{exc.filename}: " if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"{where}no space left on the device; nothing partial was left behind (free space or write elsewhere)"
    return f"{where}{exc.strerror or exc}"


def _run(args: argparse.Namespace, job: Any) -> int:
    from ..weights.checkpoint import CheckpointError
    from .prompts_file import PromptsFileError
    from .reader import StackInputError
    from .store import StoreError

    try:
        return job()
    except (StackInputError, StoreError, PromptsFileError, CheckpointError, FileExistsError, ValueError) as exc:
        print(f"napari-focsam {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"napari-focsam {args.command}: error: {_os_error_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"napari-focsam {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def embed_command(args: argparse.Namespace) -> int:
    from .precompute import precompute_stack

    if args.tiles or args.tile is not None or args.halo is not None:
        return _run(args, lambda: _embed_tiles(args))

    def job() -> int:
        update, bar = _progress(args, "slice")
        try:
            result = precompute_stack(args.stack, args.store, _config(args), rgb=args.rgb,
                                      contrast_limits=args.contrast_limits, key=args.key, overwrite=args.overwrite,
                                      verify_features=not args.quick_verify, workers=args.workers or None,
                                      scheduler=args.scheduler, slices_per_task=args.slices_per_task, progress=update)
        finally:
            if bar is not None:
                bar.close()
        print(f"{result.store}: {result.n_slices} slices; computed {result.computed}, verified {result.verified}"
              f"{f', repaired {result.repaired}' if result.repaired else ''} in {result.seconds:.1f} s"
              f"{f' ({result.slices_per_second:.2f} slices/s)' if result.computed else ''}"
              f"{f', {result.slices_per_task} slices per task' if result.workers and result.computed else ''}")
        return 0

    return _run(args, job)


def _embed_tiles(args: argparse.Namespace) -> int:
    from ..engine.tile_grid import check_tiling
    from .tiles_precompute import precompute_tiles

    if not args.tiles:
        raise ValueError("--tile and --halo need --tiles")
    if args.workers or args.scheduler:
        raise ValueError("--tiles runs in this process; drop --workers / --scheduler")
    if args.tile is not None or args.halo is not None:
        check_tiling(args.tile if args.tile is not None else max(1, args.halo or 0),
                     args.halo if args.halo is not None else 0)
    update, bar = _progress(args, "tile")
    try:
        result = precompute_tiles(args.stack, args.store, _config(args), tile=args.tile, halo=args.halo,
                                  rgb=args.rgb, contrast_limits=args.contrast_limits, key=args.key, progress=update)
    finally:
        if bar is not None:
            bar.close()
    print(f"{result.store}: {result.n_slices} slice(s) x {result.n_tiles} tiles; computed {result.computed}, "
          f"found {result.found} in {result.seconds:.1f} s")
    return 0


def _stability_jitter(args: argparse.Namespace) -> Any:
    """The :class:`~napari_focsam.engine.stability.Jitter` of ``--stability`` (None without it)."""
    from ..engine.stability import DEFAULT_COPIES, DEFAULT_NOISE, Jitter

    if not args.stability:
        if args.stability_copies is not None or args.stability_noise is not None:
            raise ValueError("--stability-copies and --stability-noise need --stability")
        return None
    if args.results is None:
        raise ValueError("--stability writes into the per-object results: add --results FILE (.csv or .json)")
    return Jitter(copies=DEFAULT_COPIES if args.stability_copies is None else args.stability_copies,
                  noise=DEFAULT_NOISE if args.stability_noise is None else args.stability_noise)


def segment_command(args: argparse.Namespace) -> int:
    from .batch import segment_from_prompts
    from .propagate_prompts import segment_with_propagation

    def job() -> int:
        if args.output.expanduser().absolute().resolve() == args.stack.expanduser().absolute().resolve():
            raise ValueError(f"--output {args.output} is the input stack; choose another path")
        jitter = _stability_jitter(args)
        update, bar = _progress(args, "object" if args.propagate else "slice")
        common = dict(output=args.output, store=args.store, rgb=args.rgb, contrast_limits=args.contrast_limits,
                      key=args.key, overwrite=args.overwrite, workers=args.workers or None,
                      scheduler=args.scheduler, progress=update, results=args.results, stability=jitter)
        try:
            if args.propagate:
                extra = {name: getattr(args, name) for name in ("iou_threshold", "min_contrast")
                         if getattr(args, name) is not None}
                out = segment_with_propagation(args.stack, args.prompts, _config(args), strategy=args.strategy,
                                               max_distance=args.max_distance, **extra, **common)
            else:
                if args.strategy != "auto" or any(getattr(args, name) is not None for name in
                                                  ("iou_threshold", "min_contrast", "max_distance")):
                    raise ValueError("--strategy, --iou-threshold, --min-contrast and --max-distance need --propagate")
                out = segment_from_prompts(args.stack, args.prompts, _config(args), **common)
        finally:
            if bar is not None:
                bar.close()
        print(f"labels written to {out}")
        if args.results is not None:
            print(f"per-object results written to {args.results}")
        return 0

    return _run(args, job)


def register(subparsers: Any) -> None:
    """Add the ``embed`` and ``segment`` subcommands to the main command's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    embed = subparsers.add_parser(
        "embed", help="precompute the embeddings of every slice of a stack into a zarr store",
        description="Embed every slice of a stack with a model into a zarr store that the widget and the Python API "
                    "reuse. An interrupted run resumes; a finished store is verified, not recomputed; a store made "
                    "for another model, preprocessing or data is reported and never used.",
        epilog=EXAMPLES_EMBED, formatter_class=fmt)
    add_embed_arguments(embed)
    embed.set_defaults(func=embed_command)
    segment = subparsers.add_parser(
        "segment", help="segment a stack from a prompts file (optionally propagating through z) into labels",
        description="Segment every object of a prompts file (CSV or JSON) on its slices, or with --propagate from "
                    "its prompted slices through z, into a label stack (one id per object).",
        epilog=EXAMPLES_SEGMENT, formatter_class=fmt)
    add_segment_arguments(segment)
    segment.set_defaults(func=segment_command)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="napari-focsam")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
