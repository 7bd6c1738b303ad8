"""Real mouse events on a napari viewer's canvas, as a hand gives them (Qt press, move and release events on the
canvas widget, through vispy and napari's own mouse handling): for tests and benchmarks that must see what a user's
click does, not a shortcut around it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QMouseEvent
from qtpy.QtWidgets import QApplication

__all__ = ["canvas_position", "mouse_click", "mouse_move", "mouse_press", "mouse_release", "world_of"]

_BUTTONS = {"left": Qt.MouseButton.LeftButton, "right": Qt.MouseButton.RightButton}
_MODIFIERS = {"Shift": Qt.KeyboardModifier.ShiftModifier, "Control": Qt.KeyboardModifier.ControlModifier,
              "Alt": Qt.KeyboardModifier.AltModifier}


def _canvases(viewer: Any) -> tuple[Any, Any]:
    """(napari's canvas, the Qt widget it draws in)."""
    canvas = viewer.window._qt_viewer.canvas
    return canvas, canvas._scene_canvas.native


def canvas_position(viewer: Any, world: Sequence[float]) -> QPointF:
    """The canvas pixel (logical) where the displayed dimensions of the world point ``world`` (all dimensions of
    the viewer) are drawn; 2D views."""
    canvas, native = _canvases(viewer)
    view, _ = canvas._get_viewbox_at((native.width() / 2, native.height() / 2))
    displayed = [float(world[d]) for d in viewer.dims.displayed]
    x, y = (view.transform * view.scene.transform).map(displayed[::-1])[:2]
    return QPointF(float(x), float(y))


def _send(viewer: Any, kind: QMouseEvent.Type, pos: QPointF, button: str, held: bool,
          modifiers: Sequence[str]) -> None:
    _, native = _canvases(viewer)
    mods = Qt.KeyboardModifier.NoModifier
    for name in modifiers:
        mods |= _MODIFIERS[name]
    which = _BUTTONS[button] if kind != QMouseEvent.Type.MouseMove else Qt.MouseButton.NoButton
    buttons = _BUTTONS[button] if held else Qt.MouseButton.NoButton
    event = QMouseEvent(kind, pos, native.mapToGlobal(pos), which, buttons, mods)
    QApplication.sendEvent(native, event)


def mouse_press(viewer: Any, world: Sequence[float], button: str = "left", modifiers: Sequence[str] = ()) -> None:
    """Press ``button`` over the world point ``world``."""
    _send(viewer, QMouseEvent.Type.MouseButtonPress, canvas_position(viewer, world), button, True, modifiers)


def mouse_move(viewer: Any, world: Sequence[float], button: str | None = "left",
               modifiers: Sequence[str] = ()) -> None:
    """Move the mouse over ``world`` (with ``button`` held; None: no button)."""
    _send(viewer, QMouseEvent.Type.MouseMove, canvas_position(viewer, world), button or "left", button is not None,
          modifiers)


def mouse_release(viewer: Any, world: Sequence[float], button: str = "left", modifiers: Sequence[str] = ()) -> None:
    """Release ``button`` over ``world``."""
    _send(viewer, QMouseEvent.Type.MouseButtonRelease, canvas_position(viewer, world), button, False, modifiers)


def mouse_click(viewer: Any, world: Sequence[float], button: str = "left", modifiers: Sequence[str] = ()) -> None:
    """Press and release at once over ``world``."""
    mouse_press(viewer, world, button, modifiers)
    mouse_release(viewer, world, button, modifiers)


def world_of(layer: Any, data: Sequence[float]) -> np.ndarray:
    """The world coordinates of a point in ``layer``'s data coordinates."""
    return np.asarray(layer.data_to_world(np.asarray(data, dtype=float)), dtype=float)
