"""``napari-focsam [IMAGE ...]``: napari with the annotator docked, the images (or a sample) open and a model loaded.

The model is the one asked for, else the most accurate one already cached (:mod:`napari_focsam.weights.preference`),
else the weight-free fallback with a one-line hint on how to get weights; nothing is downloaded unless a model that
is not cached is asked for by name. Bad input raises :class:`LaunchError` before any window stays open.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

PLUGIN = "napari-focsam"
WIDGET = "FocSAM annotator"


class LaunchError(Exception):
    """A launch request that cannot be met (unknown model or sample, unreadable image); the message is one line."""


def check_request(images: Sequence[str], model: str | None, sample: str | None) -> tuple[str, str]:
    """Validate the request without napari; returns ``(model name, hint)`` (the hint is empty unless the fallback
    was chosen)."""
    from ..sample_data import SAMPLES
    from ..weights.preference import WEIGHTS_HINT, best_cached_model
    from ..weights.registry import FALLBACK_NAME, REGISTRY

    if model is not None and model not in REGISTRY:
        raise LaunchError(f"unknown model {model!r} (known: {', '.join(REGISTRY)})")
    if sample is not None and sample not in SAMPLES:
        raise LaunchError(f"unknown sample {sample!r} (known: {', '.join(SAMPLES)})")
    for image in images:
        if "://" not in image and not Path(image).exists():
            raise LaunchError(f"no such file or folder: {image}")
    name = model if model is not None else best_cached_model()[0]
    return name, (WEIGHTS_HINT if name == FALLBACK_NAME else "")


def launch(images: Sequence[str] = (), model: str | None = None, sample: str | None = None) -> tuple[Any, Any]:
    """Open the viewer as described in the module docstring and return ``(viewer, widget)`` (no event loop)."""
    name, hint = check_request(images, model, sample)
    import napari
    from napari.utils.notifications import show_info

    viewer = napari.Viewer()
    try:
        for image in images:
            try:
                viewer.open(image)
            except Exception as exc:  # napari's readers raise many kinds: one line for the user
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise LaunchError(f"cannot open {image}: {detail}") from exc
        if sample is not None or not images:
            from ..sample_data import SAMPLES

            viewer.open_sample(PLUGIN, sample if sample is not None else next(iter(SAMPLES)))
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    except BaseException:
        viewer.close()
        raise
    widget.select_model(name, load=True, hint=hint)
    if hint:
        show_info(hint)
    return viewer, widget
