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
