"""What the annotation controller's parts (its mixins) use of the controller and of each other.

:class:`~napari_focsam.plugin.controller.AnnotationController` is assembled from mixins (:mod:`.image_source`,
:mod:`.zoom_view`, :mod:`.prompt_input`, :mod:`.shape_input`, :mod:`.stability_view`, :mod:`.label_edits`,
:mod:`.gui_jobs`). :class:`ControllerParts`, their
common base, declares for type checkers the state and the methods they share; at run time it is empty, so it never
hides a method of a mixin.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from napari.layers import Image, Labels, Points, Shapes
    from napari.viewer import Viewer
    from psygnal import SignalInstance

    from ..engine.jobs import Job, JobRunner
    from ..engine.manager import ModelManager
    from ..engine.session import ObjectSession
    from ..engine.types import CancelToken, Prompts
    from ..engine.work import TileSettings
    from ..engine.zoom import ZoomedObject


class ControllerParts:
    """The common base of the controller's mixins (declarations only)."""

    if TYPE_CHECKING:
        viewer: Viewer
        manager: ModelManager | None
        image: Image | None
        points: Points | None
        labels: Labels | None
        boxes: Shapes | None
        object_id: int
        overwrite: bool
        next_positive: bool
        prefetch: bool
        tiles: TileSettings
        last_embed_seconds: float | None
        jobs: JobRunner
        status: SignalInstance
        changed: SignalInstance
        progress: SignalInstance
        auto_zoom: bool
        zooms: dict[tuple[tuple[int, ...], int], ZoomedObject]
        _keys: dict[tuple[int, ...], str]
        _known: dict[tuple[Any, ...], str]
        _bases: dict[tuple[tuple[int, ...], int], np.ndarray]
        _committing: set[int]
        _muted: bool
        _boxes_warned: bool

        @property
        def index(self) -> tuple[int, ...]: ...

        @property
        def ready(self) -> bool: ...

        def run_job(self, func: Callable[[CancelToken], Any], on_done: Callable[[Any], None], *,
                    key: Hashable | None = None, token: CancelToken | None = None, progress: str | None = None,
                    steps: int | None = None, on_finished: Callable[[], None] | None = None,
                    supersede: bool = True) -> Job: ...

        def session(self) -> ObjectSession | None: ...

        def model_source(self) -> tuple[Any, bool, tuple[float, float], tuple[Any, ...]]: ...

        def _submit_click(self, index: tuple[int, ...], object_id: int, work: Callable[[CancelToken], Any]) -> None: ...

        def _prompts(self, index: tuple[int, ...]) -> Prompts: ...

        def _base(self, index: tuple[int, ...], object_id: int) -> Any: ...

        def _zoom_work(self, index: tuple[int, ...], object_id: int, prompts: Prompts) -> Any | None: ...

        def _may_zoom(self, index: tuple[int, ...]) -> bool: ...

        def is_tiled(self, index: tuple[int, ...] | None = None) -> bool: ...

        def _on_result(self, result: Any) -> None: ...

        def _stability_ticket(self) -> int: ...

        def cancel_stability(self) -> None: ...

        def request_stability(self, index: tuple[int, ...] | None = None, object_id: int | None = None,
                              ticket: int | None = None) -> None: ...

        def _job_finished(self, object_id: int) -> None: ...

        def _on_error(self, exc: BaseException) -> None: ...

        def _on_image_data(self, event: Any = None) -> None: ...

        def embed_current(self) -> None: ...

        def update(self) -> None: ...

        def commit(self) -> None: ...

        def wait(self, timeout: float = 60.0, match: Callable[[Any], bool] | None = None) -> None: ...

        def _start_new_object(self) -> None: ...

        def _mute(self) -> AbstractContextManager[None]: ...

        def _shape_prompts(self, prompts: Prompts, index: tuple[int, ...]) -> Prompts: ...

        def _shapes_valid(self, index: tuple[int, ...]) -> bool: ...

        def _toggle_shape_signs(self) -> bool: ...
