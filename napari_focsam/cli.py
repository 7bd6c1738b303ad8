"""The ``napari-focsam`` command."""

from __future__ import annotations

import argparse
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        return _open_viewer()
    return int(args.func(args))


def _open_viewer() -> int:
    """``napari-focsam`` with no command: napari with the FocSAM annotator docked."""
    import napari

    viewer = napari.Viewer()
    viewer.window.add_plugin_dock_widget("napari-focsam", "FocSAM annotator")
    napari.run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
