"""How ``bench_widget.py`` clicks: the ways of clicking (real mouse events or the Points layer, with the button held
some milliseconds), the mouse moving over the canvas between clicks, and waiting with the Qt event loop running."""

from __future__ import annotations

import numpy as np


class MouseMoves:
    """Mouse moves over the canvas of every rig's viewer, 60 per second, sent by a Qt timer on the GUI thread (the
    events a moving hand gives napari: it updates the cursor position and the status bar for each)."""

    def __init__(self, rigs: list) -> None:
        from qtpy.QtCore import QTimer

        self.rigs, self.step = rigs, 0
        self.timer = QTimer()
        self.timer.timeout.connect(self._move)

    def _move(self) -> None:
        from qtpy.QtCore import QPointF, Qt
        from qtpy.QtGui import QMouseEvent
        from qtpy.QtWidgets import QApplication

        self.step += 1
        for rig in self.rigs:
            if rig.pressing:
                continue  # a hand holds still while it clicks (a move past 5 px would make the click a pan)
            native = rig.viewer.window._qt_viewer.canvas._scene_canvas.native
            w, h = native.width(), native.height()
            t = self.step / 60
            pos = QPointF(w * (0.5 + 0.3 * np.cos(t)), h * (0.5 + 0.3 * np.sin(1.3 * t)))
            event = QMouseEvent(QMouseEvent.Type.MouseMove, pos, native.mapToGlobal(pos), Qt.MouseButton.NoButton,
                                Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
            QApplication.sendEvent(native, event)

    def __enter__(self) -> MouseMoves:
        self.timer.start(16)
        return self

    def __exit__(self, *exc: object) -> None:
        self.timer.stop()


def wait(seconds: float) -> None:
    """Run the Qt event loop for ``seconds``, sleeping between events as Qt's own loop does."""
    if seconds <= 0:
        return
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(round(1000 * seconds), loop.quit)
    loop.exec()


def click_modes(text: str) -> list[tuple[str, float]]:
    """``mouse:MS`` (real mouse events on the canvas, the button held MS ms) or ``points:MS`` (the point added
    through the Points layer MS ms after the press, as napari adds it on the release, without the press: the path
    before the annotator started clicks at the press), comma-separated."""
    modes = []
    for item in text.split(","):
        how, _, hold = item.strip().partition(":")
        if how not in ("mouse", "points"):
            raise SystemExit(f"--clicks-as: 'mouse:MS' or 'points:MS', got {item!r}")
        modes.append((how, float(hold or 0) / 1000))
    return modes
