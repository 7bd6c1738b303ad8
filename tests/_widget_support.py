"""Shared by the widget tests: a small test image and a docked annotator wired to a manager."""

from __future__ import annotations

import numpy as np


def disc_image(shape=(120, 160), centre=(60, 70), radius=25) -> np.ndarray:
    """A bright disc on a dark background (uint8)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.full(shape, 30, np.uint8)
    image[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2] = 200
    return image


def annotator(viewer, manager, image, **image_kwargs):
    """Add ``image`` to ``viewer``, open the FocSAM widget on it with ``manager`` and its default layers."""
    from napari_focsam.plugin.widget import FocsamWidget

    viewer.add_image(image, name="image", **image_kwargs)
    widget = FocsamWidget(viewer)
    widget.controller.set_manager(manager)
    widget.use_layers()
    widget.controller.wait()
    return widget


def overshooting_lasso(centre=(60.0, 70.0), radius=30.0, n=60) -> np.ndarray:
    """A freehand circle whose end runs past its start and cuts across the first stroke, inward."""
    end = 2 * np.pi + 0.3
    t = np.linspace(0, end, n)
    # the hand drifts outward before reaching the start, then comes back inward across the first edges
    r = np.interp(t, [0, 2 * np.pi - 0.4, 2 * np.pi + 0.05, end], [radius, radius, radius + 3, radius - 4])
    return np.stack([centre[0] + r * np.sin(t), centre[1] + r * np.cos(t)], 1)
