"""``napari-focsam evaluate``: the click protocol of the FocSAM paper on a dataset folder, with any model.

Wire it into the main command with :func:`register` (``register(subparsers)``), or run it directly with
:func:`main` (``python -m napari_focsam.evaluation.cli --dataset ... --model ...``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .protocol import IGNORE_MODES, TIE_BREAKS, Protocol

ORACLE = "oracle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``evaluate`` options."""
    parser.add_argument("--dataset", required=True, type=Path,
                        help="dataset folder: images/<id>.<ext>, masks/<id>.<ext>, optional ids.txt")
    parser.add_argument("--model", default="fallback",
                        help="model name (e.g. focsam_vit_h, sam_vit_h, fallback; 'oracle' checks the pipeline)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint file of the model")
    parser.add_argument("--clicks", type=int, default=20, help="clicks per object (20; 100 for the NoC@95 variant)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder, shared by the backends to compare (default: evaluation/<dataset>)")
    parser.add_argument("--name", default=None, help="label of this backend in the output folder (default: model)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (ids.txt order)")
    parser.add_argument("--ids", nargs="+", default=None, help="only these image ids (or <id>#<label> objects)")
    parser.add_argument("--max-instances", type=int, default=None, help="at most N objects per instance mask")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps ...")
    parser.add_argument("--ignore-mode", choices=IGNORE_MODES, default="clicks",
                        help="mask value 255: 'clicks' never clicked, IoU as the paper (default); 'none' the "
                             "official FocSAM code (255 = background everywhere); 'all' also left out of the IoU")
    parser.add_argument("--tie-break", choices=TIE_BREAKS, default="random",
                        help="among equidistant click candidates: seeded uniform choice per object, or row-major first")
    parser.add_argument("--seed", type=int, default=42, help="seed of the tie-breaking choice")
    parser.add_argument("--official", action="store_true",
                        help="the official FocSAM protocol exactly (same as --ignore-mode none)")
    parser.add_argument("--float32", action="store_true",
                        help="float32 throughout (encoder and decoder), instead of the device's fast "
                             "defaults (bfloat16 on CPUs with native bfloat16); for comparisons with published figures")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="build SAM/FocSAM with random weights when no checkpoint is given (tests only)")
    parser.add_argument("--overwrite", action="store_true", help="discard this backend's previous results")
    parser.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def load_predictor(args: argparse.Namespace):  # noqa: ANN201  (a Predictor)
    """The predictor named by ``--model`` (the oracle, the fallback, or SAM/FocSAM through the model manager)."""
    if args.model == ORACLE:
        from .oracle import OracleBackend

        return OracleBackend()
    from ..engine.manager import ModelManager

    manager = ModelManager.load(args.model, args.checkpoint, device=args.device,
                                precision="float32" if args.float32 else "fast",
                                allow_random_weights=args.allow_random_weights)
    return manager.predictor


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the comparison table, write the plots; returns the exit status."""
    from .datasets import SegmentationDataset
    from .runner import evaluate
    from .summary import COMPARISON_MD

    dataset = SegmentationDataset(args.dataset)
    protocol = Protocol(n_clicks=args.clicks, ignore_mode="none" if args.official else args.ignore_mode,
                        tie_break=args.tie_break, seed=args.seed)
    out = args.out or Path("evaluation") / dataset.name
    predictor = load_predictor(args)
    if getattr(predictor, "is_fallback", False):
        print(f"note: {predictor.display_name} is the weight-free fallback, not SAM/FocSAM", file=sys.stderr)
    metadata = {"model": args.model, "checkpoint": str(args.checkpoint) if args.checkpoint else None}
    result = evaluate(predictor, dataset, out, protocol, name=args.name, limit=args.limit, ids=args.ids,
                      max_instances=args.max_instances, progress=not args.no_progress, overwrite=args.overwrite,
                      metadata=metadata)
    print(f"{result.computed} objects evaluated, {result.reused} reused from {result.folder}")
    if not result.computed and not result.reused:
        print(f"napari-focsam evaluate: error: no object of {args.dataset} could be evaluated (masks must be 2D "
              "label or binary images, one per image; see the warnings above)", file=sys.stderr)
        return 1
    if result.failed:
        print(f"{len(result.failed)} objects failed: {result.failed[:5]}", file=sys.stderr)
    table = out / COMPARISON_MD
    if table.is_file():
        print(table.read_text())
    if not args.no_plots:
        from .plots import plot_folder

        try:
            for path in plot_folder(out, dataset.name):
                print(f"wrote {path}")
        except ImportError:  # matplotlib is optional
            print("matplotlib is not installed: no plots (pip install napari-focsam[plot])", file=sys.stderr)
    return 1 if result.failed and not result.summary.get("n_objects") else 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``evaluate`` sub-command to a parser's subparsers (the ``napari-focsam`` command)."""
    parser = subparsers.add_parser(
        "evaluate", help="simulated-click evaluation (NoC, mIoU, ΔIoU, SPC) of a model on a dataset folder",
        description=__doc__.splitlines()[0],
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="napari-focsam evaluate", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
