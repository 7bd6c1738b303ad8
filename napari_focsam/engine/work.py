"""What one click job and one embedding job of an interactive front-end do, off its GUI (or comm) thread.

Qt-free and Jupyter-free: the front-end (the napari controller, the notebook annotator) reads its inputs on its own
thread, passes plain data here, and writes the returned :class:`ClickResult` into its labels there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .channels import ChannelStack
from .image import take_slice
from .manager import ModelManager
from .types import CancelToken, Prompts


@dataclass
class ClickResult:
    manager: ModelManager
    index: tuple[int, ...]
    object_id: int
    mask: np.ndarray
    embedding_key: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    embedded: float | None = None  # seconds spent computing the embedding (None: it came from the cache)
    finished_at: float = 0.0  # time.perf_counter() when the worker was done


def model_slice(data: Any, index: tuple[int, ...], rgb: bool) -> tuple[np.ndarray, bool]:
    """Slice ``index`` of ``data`` (an image array, or a :class:`~napari_focsam.engine.channels.ChannelStack`, whose
    slice is the mixed RGB image) and whether it is RGB."""
    if isinstance(data, ChannelStack):
        return data.take(index), True
    return take_slice(data, index, rgb=rgb), rgb


def embed_slice(manager: ModelManager, data: Any, index: tuple[int, ...], rgb: bool,
                contrast: tuple[float, float], cancel: CancelToken | None = None,
                ) -> tuple[ModelManager, tuple[int, ...], str, float | None]:
    """Embed one slice (from the cache if it is there). Returns the manager, the slice, the key and the seconds
    spent computing (None: it came from the cache). ``cancel`` is polled between the encoder's blocks."""
    image, rgb = model_slice(data, index, rgb)
    embedding = manager.embed(image, rgb=rgb, contrast_limits=None if rgb else contrast, cancel=cancel)
    info = manager.last_embed
    seconds = info.seconds if info is not None and info.key == embedding.key and not info.from_cache else None
    return manager, index, embedding.key, seconds


def compute_object(manager: ModelManager, data: Any, index: tuple[int, ...], rgb: bool,
                   contrast: tuple[float, float], object_id: int, prompts: Prompts,
                   token: CancelToken, known_key: str | None = None) -> ClickResult:
    """One click job: the embedding (cached; computed to the end even if superseded, since the next job needs it),
    the object's session, and :meth:`~napari_focsam.engine.session.ObjectSession.sync` to the prompts (a superseded
    job stops between model steps and keeps the steps it completed).

    ``known_key`` is the slice's embedding key from an earlier job with the same image data and contrast: when that
    embedding (or the object's session) is still held, the slice is not converted and hashed again (a few
    milliseconds per click on a 1024² image)."""
    start = time.perf_counter()
    embedded = None
    session = _known_session(manager, known_key, object_id)
    if session is None:
        image, rgb = model_slice(data, index, rgb)
        embedding = manager.embed(image, rgb=rgb, contrast_limits=None if rgb else contrast)
        info = manager.last_embed
        embedded = info.seconds if info is not None and info.key == embedding.key and not info.from_cache else None
        token.raise_if_cancelled()
        session = manager.get_object(embedding, object_id) or manager.new_object(embedding, object_id)
    mask = session.sync(prompts, cancel=token)
    step = session.current
    timings = dict(step.prediction.timings) if step is not None else {}
    seconds = time.perf_counter() - start - (embedded or 0.0)
    return ClickResult(manager, index, object_id, mask, session.embedding.key, seconds, timings, embedded,
                       finished_at=time.perf_counter())


def _known_session(manager: ModelManager, key: str | None, object_id: int) -> Any:
    """The object's session on the embedding ``key`` (opened if the embedding is cached), or None."""
    if key is None:
        return None
    session = manager.get_object(key, object_id)
    if session is not None:
        return session
    embedding = manager.cache.get(key, device=manager.device)
    return None if embedding is None else manager.new_object(embedding, object_id)
