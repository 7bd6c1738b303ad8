"""The ``napari-focsam`` command."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence


def _info(_: argparse.Namespace) -> int:
    import torch

    from ._version import __version__
    from .models.loader import resolve_device
    from .models.specs import SPECS

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-focsam", description="Interactive FocSAM / SAM annotation.")
    from ._version import __version__

    parser.add_argument("--version", action="version", version=f"napari-focsam {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of a failure")
    sub = parser.add_subparsers(dest="command")
    info = sub.add_parser("info", help="versions, devices and the known models")
    info.set_defaults(func=_info)
    from .evaluation.cli import register as register_evaluate

    register_evaluate(sub)
    from .models.models_cli import register as register_models

    register_models(sub)
    from .stack.cli import register as register_stack

    register_stack(sub)
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
    """Run the command line; failures print one ``napari-focsam: error: ...`` line and exit 1.

    ``--debug`` (or the environment variable ``NAPARI_FOCSAM_DEBUG=1``) shows the full traceback instead.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        return _open_viewer()
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


def _open_viewer() -> int:
    """``napari-focsam`` with no command: napari with the FocSAM annotator docked."""
    import napari

    viewer = napari.Viewer()
    viewer.window.add_plugin_dock_widget("napari-focsam", "FocSAM annotator")
    napari.run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
