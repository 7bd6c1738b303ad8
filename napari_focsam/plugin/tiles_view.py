"""The widget's side of tiled slices (:mod:`napari_focsam.engine.tiles`): undo and redo of a tiled object.

A large slice is annotated in tiles (the controller's ``tiles``, a :class:`~napari_focsam.engine.work.TileSettings`):
clicks go through :func:`~napari_focsam.engine.work.compute_object` like any other, and undo/redo, which act on the
recorded steps of an object, go through the object's view session here.
"""

from __future__ import annotations

from typing import Any

from ..engine.work import tiled_step
from . import layers as L


def step_tiled(controller: Any, which: str) -> bool:
    """Undo or redo the current object of the shown slice if that slice is tiled; whether it was."""
    c = controller
    if c.manager is None or c.image is None or c.labels is None:
        return False
    index = c.index
    data, rgb, contrast, _ = c.model_source()
    if not c.tiles.applies(c.manager, data, index, rgb):
        return False
    result = tiled_step(c.manager, data, index, rgb, contrast, c.object_id, which, c.tiles)
    if result is None:
        return True
    mask, prompts = result
    with c._mute():
        L.replace_slice_points(c.points, c.image, index, prompts)
    base = c._bases.setdefault((index, c.object_id), L.slice_copy(c.labels, index))
    L.write_object(c.labels, index, mask, c.object_id, base, overwrite=c.overwrite)
    c.changed.emit()
    return True
