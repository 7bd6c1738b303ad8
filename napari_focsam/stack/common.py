"""Shared by the stack jobs: model resolution, slice preparation, progress and cancellation."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.image import to_model_rgb
from ..engine.manager import ModelManager
from ..engine.signature import data_signature, embedding_key
from ..engine.types import CancelToken, check_cancel
from .distributed import DaskRunner, Runner, SerialRunner, dask_client
from .reader import StackReader
from .store import StackStore, StackStoreWarning
from .worker import ModelConfig, manager_for

#: ``progress(done, total)``, called after every slice; it may raise to interrupt the job (the store stays resumable)
ProgressCallback = Callable[[int, int], None]

ModelLike = ModelManager | ModelConfig | str


def as_config(model: ModelLike, device: str = "auto") -> ModelConfig | None:
    """The :class:`ModelConfig` of a name or config; None for a ready :class:`ModelManager`."""
    if isinstance(model, ModelManager):
        return None
    if isinstance(model, str):
        return ModelConfig(model, device=device)
    if isinstance(model, ModelConfig):
        return model
    raise TypeError(f"model must be a name, a ModelConfig or a ModelManager, got {type(model).__name__}")


def local_manager(model: ModelLike) -> ModelManager:
    """A manager in this process: the one given, or the config's (loaded once per process)."""
    if isinstance(model, ModelManager):
        return model
    config = as_config(model)
    assert config is not None  # a name or a config
    return manager_for(config)


def normalise_limits(contrast_limits: Sequence[float] | None) -> tuple[float, float] | None:
    if contrast_limits is None:
        return None
    low, high = (float(v) for v in contrast_limits)
    if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
        raise ValueError(f"contrast limits must be two finite numbers, low < high; got {tuple(contrast_limits)}")
    return low, high


def prepare(reader: StackReader, index: int, contrast_limits: tuple[float, float] | None) -> np.ndarray:
    """Slice ``index`` as the (H, W, 3) uint8 RGB image the model sees (what ``ModelManager.embed`` prepares)."""
    return to_model_rgb(reader.read(index), rgb=reader.rgb, contrast_limits=contrast_limits)


def slice_key(image: np.ndarray, fingerprint: str) -> str:
    """The embedding key of a prepared slice: the same as ``ModelManager.key_for`` with that model."""
    return embedding_key(data_signature(image), fingerprint)


@contextlib.contextmanager
def runner_for(
    client: Any, workers: int | None, scheduler: str | None, window: int | None = None
) -> Iterator[Runner]:
    """A serial runner, or a Dask runner on ``client`` / a new cluster (``workers``) / ``scheduler``."""
    if client is not None:
        yield DaskRunner(client, window)
    elif workers or scheduler:
        with dask_client(workers, scheduler) as new_client:
            yield DaskRunner(new_client, window)
    else:
        yield SerialRunner()


def dask_config(model: ModelLike, runner: Runner) -> ModelConfig:
    """The config the Dask workers load; a ready manager cannot travel to them."""
    config = as_config(model)
    if config is None:
        raise ValueError("running on Dask needs the model as a name or ModelConfig (each worker loads it), "
                         "not a loaded ModelManager")
    if config.torch_threads is None and isinstance(runner, DaskRunner):
        from .distributed import cluster_torch_threads

        config = config.with_threads(cluster_torch_threads(runner.client))  # share each host's cores
    return config


def describe_model(manager: ModelManager | None, runner: Runner, config: ModelConfig | None) -> dict[str, Any]:
    """Name, fingerprint and abilities of the model: from the local manager, or asked of a Dask worker."""
    if manager is not None:
        predictor = manager.predictor
        return {"name": predictor.name, "display_name": predictor.display_name,
                "fingerprint": predictor.fingerprint, "supports_boxes": bool(predictor.supports_boxes)}
    from .worker import model_info

    assert isinstance(runner, DaskRunner)  # no manager here: the model is on the Dask workers
    return runner.client.submit(model_info, config, pure=False).result()


@dataclass(frozen=True)
class JobSetup:
    """What every stack job sets up: where it runs, the model there and what the model is."""

    runner: Runner
    manager: ModelManager | None  #: the model in this process (serial runs only)
    config: ModelConfig | None  #: what the Dask workers load (Dask runs only)
    info: dict[str, Any]  #: name, display_name, fingerprint, supports_boxes (see :func:`describe_model`)

    @property
    def serial(self) -> bool:
        return self.manager is not None


@contextlib.contextmanager
def job_setup(model: ModelLike, client: Any, workers: int | None, scheduler: str | None,
              window: int | None = None) -> Iterator[JobSetup]:
    """The runner (serial or Dask, see :func:`runner_for`), the model loaded where the work runs, its description."""
    with runner_for(client, workers, scheduler, window) as runner:
        serial = isinstance(runner, SerialRunner)
        manager = local_manager(model) if serial else None
        config = None if serial else dask_config(model, runner)
        yield JobSetup(runner, manager, config, describe_model(manager, runner, config))


def open_store_for(store: str | os.PathLike[str] | None, fingerprint: str) -> StackStore | None:
    """The precomputed store, if given and made with the model of ``fingerprint`` (else reported and not used)."""
    if store is None:
        return None
    opened = StackStore.open(store)
    if opened.spec.fingerprint != fingerprint:
        warnings.warn(f"{opened.path} holds embeddings of {opened.spec.display_name}, not of this model; "
                      "it is not used", StackStoreWarning, stacklevel=4)
        return None
    return opened


@contextlib.contextmanager
def store_in_use(setup: JobSetup, store: str | os.PathLike[str] | None) -> Iterator[StackStore | None]:
    """The precomputed store for the job's model (see :func:`open_store_for`); a serial run's manager reuses it
    until the block ends."""
    opened = open_store_for(store, setup.info["fingerprint"])
    if setup.manager is None or opened is None:
        yield opened
        return
    setup.manager.cache.add_source(opened)
    try:
        yield opened
    finally:
        setup.manager.cache.remove_source(opened)


class Progress:
    """Counts finished slices, calls the user's callback and checks the cancel token between slices."""

    def __init__(self, total: int, callback: ProgressCallback | None, cancel: CancelToken | None) -> None:
        self.total = int(total)
        self.done = 0
        self._callback = callback
        self._cancel = cancel
        self.report(0)

    def report(self, n: int = 1) -> None:
        self.done += n
        if self._callback is not None:
            self._callback(self.done, self.total)

    @property
    def cancel(self) -> CancelToken | None:
        """The cancel token checked between slices (passed on to the encoder by serial runs)."""
        return self._cancel

    def check(self) -> None:
        check_cancel(self._cancel)
