"""``napari-focsam automatic IMAGE --out labels.tif``: segment everything in an image or a stack."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

HELP = "segment everything: an instance label image of an image (or of each slice of a stack) with any model"


def _read_image(path: Path) -> np.ndarray:
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB") if image.mode in ("RGBA", "P", "CMYK") else image)
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image this command reads (TIFF, PNG, JPEG, .npy)") from None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("automatic", help=HELP, description=HELP)
    parser.add_argument("image", type=Path, help="a 2D image (TIFF, PNG, JPEG, .npy; gray or RGB) or, with "
                                                 "--stack, a (Z, Y, X[, RGB]) stack (TIFF, zarr, .npy)")
    parser.add_argument("--out", "--output", dest="out", type=Path, required=True, help="the labels (.tif)")
    parser.add_argument("--stack", action="store_true", help="the image is a stack: segment each slice")
    parser.add_argument("--model", default="fallback", help="model name (default: the weight-free fallback)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint file (default: the model cache)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--allow-random-weights", action="store_true", help="seeded random weights (tests only)")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-thresh", type=float, default=0.95)
    parser.add_argument("--nms-thresh", type=float, default=0.7)
    parser.add_argument("--min-area", type=int, default=0, help="drop masks smaller than this (pixels)")
    parser.add_argument("--workers", type=int, default=0, help="with --stack: a local Dask cluster of N workers")
    parser.add_argument("--tiles", choices=("auto", "on", "off"), default="auto",
                        help="segment a 2D image tile by tile (auto: images larger than twice the model's input "
                             "side; the fallback: over 4096² pixels)")
    parser.add_argument("--tile", type=int, default=None, help="tile side in pixels (default: the model's)")
    parser.add_argument("--halo", type=int, default=None, help="halo around each tile in pixels (default: the "
                                                               "model's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=automatic_command)


def automatic_command(args: argparse.Namespace) -> int:
    from .engine.automatic import AutomaticOptions
    from .engine.everything import segment_everything
    from .stack.everything import segment_everything_stack

    try:
        out = args.out.expanduser()
        if out.suffix.lower() not in (".tif", ".tiff"):
            raise ValueError(f"--out {args.out}: write a .tif or .tiff file")
        if out.absolute().resolve() == args.image.expanduser().absolute().resolve():
            raise ValueError(f"--out {args.out} is the input image; choose another path")
        if out.exists() and not args.overwrite:
            raise ValueError(f"--out {args.out} exists (--overwrite replaces it)")
        if not out.parent.is_dir():
            raise ValueError(f"--out {args.out}: the folder {out.parent} does not exist")
        options = AutomaticOptions(points_per_side=args.points_per_side, points_per_batch=args.points_per_batch,
                                   pred_iou_thresh=args.pred_iou_thresh,
                                   stability_score_thresh=args.stability_thresh, box_nms_thresh=args.nms_thresh,
                                   min_area=args.min_area)
        from .stack.worker import ModelConfig

        config = ModelConfig(args.model, None if args.checkpoint is None else str(args.checkpoint), args.device,
                             args.allow_random_weights)
        if args.stack:
            labels = segment_everything_stack(config, args.image, options=options, workers=args.workers or None)
        else:
            image = _read_image(args.image)
            if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (3, 4)):
                raise ValueError(f"{args.image}: a 2D gray or RGB image is (Y, X) or (Y, X, 3), got shape "
                                 f"{image.shape} (a stack? add --stack)")
            from .stack.common import local_manager

            tiled = {"auto": None, "on": True, "off": False}[args.tiles]
            labels = segment_everything(local_manager(config), image, options=options, tiled=tiled, tile=args.tile,
                                        halo=args.halo)
        import tifffile

        partial = out.with_name(out.name + ".partial")
        tifffile.imwrite(partial, labels.astype(np.uint32), description="napari-focsam automatic labels")
        partial.replace(out)
    except (ValueError, OSError) as exc:  # bad input, unreadable file, missing weights (CheckpointError)
        print(f"napari-focsam automatic: error: {exc}", file=sys.stderr)
        return 2
    n = len(np.unique(labels)) - int((labels == 0).any())
    print(f"{n} objects written to {out}")
    return 0
