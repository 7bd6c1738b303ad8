"""The ``napari-focsam`` command."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from typing import NoReturn


def _info(_: argparse.Namespace) -> int:
    import torch

    from ._version import __version__
    from .models.specs import SPECS
    from .weights.loader import resolve_device

    print(f"napari-focsam {__version__}")
    print(f"torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available"
    print(f"cuda: {cuda}; default device (auto): {resolve_device('auto')}")
    print("models:")
    for spec in SPECS.values():
        checkpoint = f"  checkpoint file {spec.checkpoint_name}" if spec.checkpoint_name else "  (random weights only)"
        print(f"  {spec.name:<14} {spec.display_name:<40}{checkpoint}")
    print(f"  {'fallback':<14} {'weight-free fallback (scikit-image)':<40}  no checkpoint")
    return 0


VIEWER_USAGE = "napari-focsam [IMAGE ...] [--model NAME] [--sample NAME]"
VIEWER_HELP = ("Without a command, napari opens with the FocSAM annotator docked, the IMAGEs (any file napari reads; "
               "none: a sample) open, and the best cached model (else the weight-free fallback) loaded. A first "
               "argument that is a command name is the command (open a file named like one as ./NAME).")


class _OneLineParser(argparse.ArgumentParser):
    """Reports a bad argument in one line (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-focsam", usage=f"{VIEWER_USAGE}\n       napari-focsam COMMAND ...",
        description=f"Interactive FocSAM / SAM annotation. {VIEWER_HELP}")
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"napari-focsam {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a failure")
    sub = parser.add_subparsers(dest="command")
    info = sub.add_parser("info", help="versions, devices and the known models")
    info.set_defaults(func=_info)
    from .evaluation.cli import register as register_evaluate

    register_evaluate(sub)
    from .weights.cli import register as register_models

    register_models(sub)
    from .stack.cli import register as register_stack

    register_stack(sub)
    from .automatic_cli import register as register_automatic

    register_automatic(sub)
    parser.set_defaults(commands=tuple(sub.choices))
    return parser


def viewer_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="napari-focsam", usage=VIEWER_USAGE, description=VIEWER_HELP)
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders to open (e.g. TIFF, PNG, "
                        "zarr; OME-Zarr with a napari reader plugin such as napari-ome-zarr)")
    parser.add_argument("--model", metavar="NAME", help="the model to load (default: the best cached one, else "
                        "the fallback); see `napari-focsam models list`")
    parser.add_argument("--sample", metavar="NAME", help="open this sample too (default without IMAGE: the first; "
                        "coins, cell, ihc, coffee, nuclei_3d)")
    return parser


DEBUG_ENV = "NAPARI_FOCSAM_DEBUG"


def _error_line(exc: BaseException) -> str:
    """One line for an unexpected failure: the file and the OS's words for OS errors, else the exception."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return f"{where}no space left on the device (free some space, or write elsewhere)"
        return f"{where}{exc.strerror}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line: a subcommand, or napari with the annotator (``napari-focsam [IMAGE ...]``).

    A subcommand's failure prints one ``napari-focsam <command>: error: ...`` line and exits 1; ``--debug`` before
    the command (or the environment variable ``NAPARI_FOCSAM_DEBUG=1``) shows the full traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    first = next((a for a in argv if a != "--debug"), None)
    if first is None or not (first in parser.get_default("commands") or first in ("-h", "--help", "--version")):
        return _open_viewer(viewer_parser().parse_args(argv))
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:  # a command group without its subcommand
        parser.parse_args([*argv, "--help"])
    debug = bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("napari-focsam: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the command line prints one line, not a traceback
        if debug:
            raise
        print(f"napari-focsam {args.command}: error: {_error_line(exc)} (--debug shows the details)",
              file=sys.stderr)
        return 1


def _open_viewer(args: argparse.Namespace) -> int:
    """Napari with the FocSAM annotator docked, the images (or a sample) open and a model loaded; then its loop."""
    from .plugin.launch import LaunchError, launch

    try:
        launch(args.images, model=args.model, sample=args.sample)
    except LaunchError as exc:
        print(f"napari-focsam: error: {exc}", file=sys.stderr)
        return 2
    import napari

    napari.run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
