"""``napari-focsam evaluate``: the click protocol of the FocSAM paper on a dataset folder, with any model.

Wire it into the main command with :func:`register` (``register(subparsers)``), or run it directly with
:func:`main` (``python -m napari_focsam.evaluation.cli --dataset ... --model ...``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .first_prompts import FIRST_PROMPTS
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
    parser.add_argument("--seed", type=int, default=42,
                        help="seed of the tie-breaking choice and of the simulated first prompts")
    parser.add_argument("--first-prompt", nargs="+", choices=FIRST_PROMPTS, default=["click"], metavar="KIND",
                        help="the first prompt, simulated from the ground truth, before the clicks: "
                             f"{', '.join(FIRST_PROMPTS)} (several: one run each, compared in one table; "
                             "see docs/evaluation.md)")
    parser.add_argument("--official", action="store_true",
                        help="the official FocSAM protocol exactly (same as --ignore-mode none)")
    parser.add_argument("--float32", action="store_true",
                        help="float32 throughout (encoder and decoder), instead of the device's fast "
                             "defaults (bfloat16 on CPUs with native bfloat16); for comparisons with published figures")
    parser.add_argument("--frame", choices=("model", "stretch"), default="model",
                        help="the image frame: the model's own (SAM: aspect kept, padded), or 'stretch' to 1024² as "
                             "HQ-SAM's and PA-SAM's official evaluation does (see docs/models.md)")
    parser.add_argument("--allow-random-weights", action="store_true",
                        help="build SAM/FocSAM with random weights when no checkpoint is given (tests only)")
    parser.add_argument("--overwrite", action="store_true", help="discard this backend's previous results")
    parser.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    noisy = parser.add_argument_group("noisy prompts (--protocol noisy, Stable-SAM's Tables 1-2)")
    noisy.add_argument("--protocol", choices=("clicks", "noisy"), default="clicks",
                       help="'clicks': the FocSAM click protocol (default); 'noisy': one prompt of each type (GT "
                            "box, noisy box, 1/3/5 points) per object, scored by mIoU, mBIoU and mST")
    noisy.add_argument("--prompt-types", nargs="+", default=None, metavar="TYPE",
                       help="gt_box noisy_box 1_point 3_points 5_points (default: all)")
    noisy.add_argument("--draws", type=int, default=5, help="prompts per object and type; ST is over them (5)")
    noisy.add_argument("--box-noise", type=float, default=0.4, help="noisy-box level, fraction of the box (0.4)")
    noisy.add_argument("--no-robust", action="store_true", help="skip the robust-mode columns")
    noisy.add_argument("--robust-copies", type=int, default=8, help="jittered copies of a robust step (8)")
    noisy.add_argument("--robust-noise", type=float, default=0.1, help="jitter level of a robust step (0.1)")


def load_predictor(args: argparse.Namespace):  # noqa: ANN201  (a Predictor)
    """The predictor named by ``--model`` (the oracle, the fallback, or SAM/FocSAM through the model manager)."""
    if args.model == ORACLE:
        from .oracle import OracleBackend

        return OracleBackend()
    from ..engine.manager import ModelManager

    manager = ModelManager.load(args.model, args.checkpoint, device=args.device,
                                precision="float32" if args.float32 else "fast",
                                allow_random_weights=args.allow_random_weights,
                                preprocessing="stretch" if getattr(args, "frame", "model") == "stretch" else None)
    return manager.predictor


def run_noisy(args: argparse.Namespace) -> int:
    """``--protocol noisy``: Stable-SAM's noisy-prompt table for one model."""
    from ..engine.stability import Jitter
    from .datasets import SegmentationDataset
    from .noisy import NOISY_MD, PROMPT_TYPES, NoisyProtocol, evaluate_noisy, plot_noisy

    robust = None if args.no_robust else Jitter(copies=args.robust_copies, noise=args.robust_noise)
    protocol = NoisyProtocol(types=tuple(args.prompt_types or PROMPT_TYPES), draws=args.draws,
                             box_noise=args.box_noise, robust=robust, seed=args.seed)
    dataset = SegmentationDataset(args.dataset)
    out = args.out or Path("evaluation") / dataset.name
    predictor = load_predictor(args)
    summary = evaluate_noisy(predictor, dataset, out, protocol, name=args.name, limit=args.limit, ids=args.ids,
                             max_instances=args.max_instances, progress=not args.no_progress)
    from .runner import safe_name

    folder = out / safe_name(args.name or predictor.name)
    print((folder / NOISY_MD).read_text())
    if summary["failed"]:
        print(f"{len(summary['failed'])} objects failed: {summary['failed'][:5]}", file=sys.stderr)
    if not args.no_plots:
        try:
            print(f"wrote {plot_noisy(summary, folder / 'noisy.png')}")
        except ImportError:
            print("matplotlib is not installed: no plots (pip install napari-focsam[plot])", file=sys.stderr)
    return 0 if summary["results"] else 1


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the comparison table, write the plots; returns the exit status."""
    if getattr(args, "protocol", "clicks") == "noisy":
        return run_noisy(args)
    from .datasets import SegmentationDataset
    from .runner import evaluate
    from .summary import COMPARISON_MD

    dataset = SegmentationDataset(args.dataset)
    out = args.out or Path("evaluation") / dataset.name
    predictor = load_predictor(args)
    if getattr(predictor, "is_fallback", False):
        print(f"note: {predictor.display_name} is the weight-free fallback, not SAM/FocSAM", file=sys.stderr)
    metadata = {"model": args.model, "checkpoint": str(args.checkpoint) if args.checkpoint else None}
    status = 0
    for kind in dict.fromkeys(args.first_prompt):
        if kind == "box" and not getattr(predictor, "supports_boxes", True):
            print(f"skipped --first-prompt box: {predictor.display_name} takes no boxes", file=sys.stderr)
            status = 1
            continue
        protocol = Protocol(n_clicks=args.clicks, ignore_mode="none" if args.official else args.ignore_mode,
                            tie_break=args.tie_break, seed=args.seed, first_prompt=kind)
        label = args.name or args.model
        extra = {} if kind == "click" else {
            "display_name": f"{getattr(predictor, 'display_name', label)}, first prompt: {kind}"}
        result = evaluate(predictor, dataset, out, protocol, name=label if kind == "click" else f"{label}+{kind}",
                          limit=args.limit, ids=args.ids, max_instances=args.max_instances,
                          progress=not args.no_progress, overwrite=args.overwrite,
                          metadata={**metadata, "first_prompt": kind, **extra})
        print(f"{result.computed} objects evaluated, {result.reused} reused from {result.folder}")
        if not result.computed and not result.reused:
            print(f"napari-focsam evaluate: error: no object of {args.dataset} could be evaluated (masks must be 2D "
                  "label or binary images, one per image; see the warnings above)", file=sys.stderr)
            status = 1
        if result.failed:
            print(f"{len(result.failed)} objects failed: {result.failed[:5]}", file=sys.stderr)
        if result.failed and not result.summary.get("n_objects"):
            status = 1
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
    return status


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
