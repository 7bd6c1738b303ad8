"""What the notebook controller's parts (its mixins) use of the controller and of each other.

:class:`~napari_focsam.notebook.controller.NotebookController` is assembled from mixins (:mod:`.messages`,
:mod:`.window`, :mod:`.tiled_writes`, :mod:`.slice_model`, :mod:`.zoom`, and the engine's shared ones).
:class:`NotebookParts`, their common base, declares for type checkers the state and the methods they share; at run
time it is empty, so it never hides a method of a mixin.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..engine.jobs import JobRunner
    from ..engine.manager import ModelManager
    from ..engine.session import ObjectSession
    from ..engine.types import CancelToken, Prompts
    from ..engine.work import TileSettings
    from ..engine.zoom import ZoomedObject
    from .geometry import Geometry
    from .source import ImageSource

#: a controller's job: called on a job runner's thread with the job's cancel token
Work = Callable[["CancelToken"], Any]


class NotebookParts:
    """The common base of the notebook controller's mixins (declarations only)."""

    if TYPE_CHECKING:
        source: ImageSource
        jobs: JobRunner
        manager: ModelManager | None
        model_name: str | None
        object_id: int
        selected: int
        z: int
        contrast: tuple[float, float]
        window: tuple[int, int, int, int]
        geometry: Geometry
        tiles: TileSettings
        status: tuple[str, str]
        last_click_ms: float | None
        zooms: dict[tuple[tuple[int, ...], int], ZoomedObject]
        _lock: threading.RLock
        _busy: dict[str, str]
        _emit: Callable[[dict, list], None]
        _keys: dict[tuple[int, ...], str]
        _known: dict[tuple, str]
        _prompts: dict[tuple[tuple[int, ...], int], Prompts]
        _bases: dict[tuple[tuple[int, ...], int], Any]

        @property
        def index(self) -> tuple[int, ...]: ...

        @property
        def takes_boxes(self) -> bool: ...

        def session(self) -> ObjectSession | None: ...

        def prompts(self) -> Prompts: ...

        def tiled(self, index: tuple[int, ...] | None = None) -> bool: ...

        def zoom_info(self) -> dict: ...

        def stability_info(self) -> dict: ...

        def view_state(self) -> dict: ...

        def send_image(self, labels: bool = True) -> None: ...

        def cancel_prefetch(self) -> None: ...

        def _need_model(self) -> ModelManager: ...

        def _view(self, index: tuple[int, ...]) -> np.ndarray: ...

        def _base(self, index: tuple[int, ...], object_id: int) -> Any: ...

        def _write(self, index: tuple[int, ...], mask: np.ndarray, object_id: int, base: Any, *,
                   seq: int | None = None, model_ms: float | None = None, overwrite: bool | None = None,
                   region: tuple[int, int, int, int] | None = None) -> None: ...

        def _submit_work(self, index: tuple[int, ...], object_id: int, work: Work,
                         done: Callable[[Any], None]) -> None: ...

        def _progress(self, kind: str, text: str | None) -> None: ...

        def _set_status(self, text: str, level: str = "info", *, send: bool = True) -> None: ...

        def _update(self, prompts: bool = False) -> None: ...

        def _forget_zooms(self, object_id: int | None = None) -> None: ...


__all__ = ["NotebookParts", "Work"]
