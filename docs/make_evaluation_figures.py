"""Regenerate the README's evaluation figures: the weight-free fallback on GrabCut, Berkeley and DAVIS.

    python docs/make_evaluation_figures.py [--datasets grabcut berkeley davis] [--shared ../shared] [--out evaluation]

For each dataset it runs exactly ``napari-focsam evaluate --dataset <shared>/datasets/<name> --model fallback
--out <out>/<name>`` (resumable: an interrupted run continues), prints the summary table, and copies the three plots
to ``docs/images/eval_<name>_{miou_vs_clicks,noc,delta_iou}.png``. Add another backend to a dataset's folder (e.g.
``--model sam_vit_h --checkpoint ...``) and rerun this script to get the comparison plots.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from napari_focsam.evaluation import cli

REPO = Path(__file__).resolve().parents[1]
PLOTS = ("miou_vs_clicks", "noc", "delta_iou")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["grabcut", "berkeley", "davis"])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared data folder")
    parser.add_argument("--out", type=Path, default=REPO / "evaluation", help="results folder (one per dataset)")
    parser.add_argument("--images", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args(argv)
    for name in args.datasets:
        dataset = args.shared / "datasets" / name
        if not dataset.is_dir():
            print(f"{dataset} is missing; skipped", file=sys.stderr)
            continue
        out = args.out / name
        status = cli.main(["--dataset", str(dataset), "--model", "fallback", "--out", str(out)])
        if status:
            return status
        args.images.mkdir(parents=True, exist_ok=True)
        for plot in PLOTS:
            shutil.copyfile(out / f"{plot}.png", args.images / f"eval_{name}_{plot}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
