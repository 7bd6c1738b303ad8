"""The notebook controller's messages to the browser: the info line (object, model, undo and redo, progress,
status, zoom, tiles, stability), the prompts of the shown slice, results delivered from the job threads under the
controller's lock, and waiting for the jobs. Part of :class:`~napari_focsam.notebook.controller.NotebookController`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .controller_parts import NotebookParts

if TYPE_CHECKING:
    pass


class NotebookMessages(NotebookParts):
    """What the controller tells the browser (a mixin)."""

    def _deliver(self, callback: Callable[[], None]) -> None:
        """The job runner's results, on its threads, serialised with the actions."""
        with self._lock:
            try:
                callback()
            except Exception as exc:  # noqa: BLE001 - a job thread has no one to raise to: the widget says it
                self._set_status(f"internal error while showing a result: {type(exc).__name__}: {exc}", "error")

    def _progress(self, kind: str, text: str | None) -> None:
        if text is None:
            self._busy.pop(kind, None)
        else:
            self._busy[kind] = text
        self._update()

    def _set_status(self, text: str, level: str = "info", *, send: bool = True) -> None:
        self.status = (text, level)
        if send:
            self._update()

    def info(self) -> dict:
        can_undo, can_redo = self._can_step()
        return {"object_id": self.object_id, "selected": self.selected, "model": self.model_name,
                "model_display": self.manager.display_name if self.manager else None,
                "takes_boxes": self.takes_boxes, "can_undo": can_undo, "can_redo": can_redo,
                "busy": list(self._busy.values()), "status": self.status[0], "level": self.status[1],
                "last_click_ms": self.last_click_ms, "tiled": self.tiled(), **self.zoom_info(),
                **self.stability_info()}

    def _can_step(self) -> tuple[bool, bool]:
        """Whether the current object has a step to undo and one to redo on the shown slice (on its zoom, its
        tiles, or the whole slice)."""
        zoomed = self.zooms.get((self.index, self.object_id))
        if zoomed is not None:
            return True, bool(zoomed.session.can_redo)
        if self.manager is not None and self.tiled():
            from ..engine.tiles import tiled_image_for

            source = self.source
            tiled = tiled_image_for(self.manager, source.model_data, self.index, source.model_rgb,
                                    None if source.model_rgb else self.contrast, self.tiles.tile, self.tiles.halo)
            obj = tiled.object(self.object_id, create=False)
            return (obj.can_undo, obj.can_redo) if obj is not None else (False, False)
        session = self.session()
        return bool(session and session.can_undo), bool(session and session.can_redo)

    def prompt_state(self) -> dict:
        prompts = self.prompts()
        return {"z": self.z, "points": [[float(y), float(x), int(s)] for (y, x), s in zip(prompts.points,
                                                                                         prompts.labels)],
                "box": None if prompts.box is None else [float(v) for v in prompts.box]}

    def _update(self, prompts: bool = False) -> None:
        message = {"type": "update", "info": self.info()}
        if prompts:
            message["prompts"] = self.prompt_state()
        self._emit(message, [])

    def wait(self, timeout: float = 60.0, match: Callable[[Any], bool] | None = None) -> None:
        """Block until no job runs (or none of the keys ``match`` selects), results delivered."""
        deadline = time.monotonic() + timeout
        while self.jobs.busy if match is None else self.jobs.active(match):
            if time.monotonic() > deadline:
                raise TimeoutError("the annotator's jobs are still running")
            time.sleep(0.002)


__all__ = ["NotebookMessages"]
