"""Precomputing a stack's embeddings: the store, its reuse by ModelManager.embed, resume, verification, refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr
from _stack_support import ThresholdPredictor, stardist_3d, threshold_manager

from napari_focsam.engine.image import to_model_rgb
from napari_focsam.engine.manager import ModelManager
from napari_focsam.stack import (
    ModelConfig,
    StackStore,
    StackStoreWarning,
    StoreError,
    StoreMismatchError,
    attach_store,
    open_stack,
    precompute_stack,
)
from napari_focsam.stack.common import local_manager
from napari_focsam.stack.precompute import MAX_SLICES_PER_TASK, slices_per_task_for
from napari_focsam.stack.worker import thread_count_invariant

TINY = ModelConfig("sam_tiny", device="cpu", allow_random_weights=True)
N_TINY = 2


@pytest.fixture(scope="module")
def stardist_slices() -> np.ndarray:
    return stardist_3d()[0][12:12 + N_TINY]


@pytest.fixture(scope="module")
def tiny_store(stardist_slices, tmp_path_factory) -> Path:
    """The first few stardist slices precomputed with random-weight tiny SAM (reference for several tests)."""
    path = tmp_path_factory.mktemp("tiny") / "emb.zarr"
    result = precompute_stack(stardist_slices, path, TINY)
    assert (result.computed, result.verified, result.n_slices) == (N_TINY, 0, N_TINY)
    return path


def test_store_layout_and_reuse_by_embed(tiny_store, stardist_slices) -> None:
    group = zarr.open_group(tiny_store, mode="r")
    assert group["features"].shape == (N_TINY, 1, 256, 64, 64)
    assert group["features"].chunks == (1, 1, 256, 64, 64)  # one slice per chunk
    store = StackStore.open(tiny_store)
    assert store.complete and store.spec.model == "sam_tiny"
    manager = ModelManager(local_manager(TINY).predictor)  # a fresh cache: nothing in memory yet
    assert attach_store(manager, store) is store
    try:
        before = manager.cache.stats.hits_source
        embedding = manager.embed(stardist_slices[1])  # what the widget and the API call
        assert manager.last_embed.from_cache and manager.cache.stats.hits_source == before + 1
        with thread_count_invariant():  # how stack jobs compute (oneDNN off): bit for bit the same
            direct, _ = manager.predictor.embed(to_model_rgb(stardist_slices[1]))
        assert torch.equal(embedding.features, direct)
        interactive, _ = manager.predictor.embed(to_model_rgb(stardist_slices[1]))  # oneDNN on: float noise only
        assert torch.allclose(embedding.features, interactive, atol=1e-4)
        assert store.keys()[1] == manager.key_for(to_model_rgb(stardist_slices[1]))
    finally:
        manager.cache.remove_source(store)


def test_finished_store_is_verified_not_recomputed(tiny_store, stardist_slices, monkeypatch) -> None:
    manager = local_manager(TINY)
    monkeypatch.setattr(manager.predictor, "embed", lambda *a, **k: pytest.fail("recomputed"))
    seen = []
    result = precompute_stack(stardist_slices, tiny_store, manager, progress=lambda d, t: seen.append((d, t)))
    assert (result.computed, result.verified) == (0, N_TINY)
    assert seen[0] == (0, N_TINY) and seen[-1] == (N_TINY, N_TINY)


def test_interrupted_run_resumes_and_equals_an_uninterrupted_one(tiny_store, stardist_slices, tmp_path) -> None:
    path = tmp_path / "resumed.zarr"

    def stop_after_one(done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        precompute_stack(stardist_slices, path, TINY, progress=stop_after_one)
    assert not StackStore.open(path).complete
    result = precompute_stack(stardist_slices, path, TINY)
    assert (result.computed, result.verified) == (N_TINY - 1, 1)
    a, b = zarr.open_group(tiny_store, mode="r"), zarr.open_group(path, mode="r")
    assert np.array_equal(a["features"][...], b["features"][...]) and np.array_equal(a["meta"][...], b["meta"][...])
    assert StackStore.open(path).complete


class SlowThreshold(ThresholdPredictor):
    """The test predictor, slowed down so that a run can be killed in the middle."""

    def embed(self, image, *, cancel=None):
        time.sleep(0.15)
        return super().embed(image, cancel=cancel)


KILLED_RUN = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np
from napari_focsam.engine.image import to_model_rgb
from napari_focsam.engine.manager import ModelManager
from napari_focsam.stack import precompute_stack
from test_stack_precompute import SlowThreshold
stack = np.load({stack!r})
precompute_stack(stack, {store!r}, ModelManager(SlowThreshold()), progress=lambda d, t: print(d, flush=True))
"""


def test_resume_after_a_killed_process(tmp_path) -> None:
    image = stardist_3d()[0][:8]
    np.save(tmp_path / "stack.npy", image)
    store = tmp_path / "killed.zarr"
    code = KILLED_RUN.format(tests=str(Path(__file__).parent), stack=str(tmp_path / "stack.npy"), store=str(store))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # kill it (SIGKILL, no clean-up) once a few slices are written
            if int(line) >= 3:
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    written = sum(k is not None for k in StackStore.open(store).keys())
    assert 3 <= written < len(image)
    result = precompute_stack(store=store, stack=image, model=threshold_manager())
    assert result.verified == written and result.computed == len(image) - written
    fresh = tmp_path / "fresh.zarr"
    precompute_stack(image, fresh, threshold_manager())
    a, b = zarr.open_group(store, mode="r"), zarr.open_group(fresh, mode="r")
    assert np.array_equal(a["features"][...], b["features"][...]) and np.array_equal(a["meta"][...], b["meta"][...])


def test_damaged_slice_is_reported_and_recomputed(tmp_path) -> None:
    image = stardist_3d()[0][:4]
    path = tmp_path / "damaged.zarr"
    precompute_stack(image, path, threshold_manager())
    chunk = next(p for p in (path / "features" / "c" / "2").rglob("*") if p.is_file())  # slice 2's chunk
    chunk.write_bytes(chunk.read_bytes()[:-10] + b"0123456789")
    store = StackStore.open(path)
    manager = threshold_manager()
    attach_store(manager, store)
    with pytest.warns(StackStoreWarning, match="unreadable|checksum"):
        manager.embed(image[2])  # the cache source refuses it; the slice is computed instead
    assert not manager.last_embed.from_cache
    with pytest.warns(StackStoreWarning, match="damaged"):
        result = precompute_stack(image, path, threshold_manager())
    assert (result.computed, result.verified, result.repaired) == (1, 3, 1)
    assert StackStore.open(path).check_slice(2, store.keys()[2]) == "ok"


def test_stores_for_other_models_data_or_preprocessing_are_refused(tmp_path) -> None:
    image = stardist_3d()[0][:3]
    path = tmp_path / "s.zarr"
    precompute_stack(image, path, threshold_manager())
    with pytest.raises(StoreMismatchError, match="model"):
        precompute_stack(image, path, TINY)
    with pytest.raises(StoreMismatchError, match="other pixels"):
        precompute_stack(image[::-1], path, threshold_manager())
    with pytest.raises(StoreMismatchError, match="contrast limits"):
        precompute_stack(image, path, threshold_manager(), contrast_limits=(100, 300))
    with pytest.raises(StoreMismatchError, match="stack shape"):
        precompute_stack(image[:2], path, threshold_manager())
    with pytest.warns(StackStoreWarning, match="not used"):
        assert attach_store(local_manager(TINY), path) is None
    result = precompute_stack(image[::-1], path, threshold_manager(), overwrite=True)
    assert result.computed == 3


def test_foreign_paths_are_never_touched(tmp_path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("precious")
    image = stardist_3d()[0][:2]
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="not a napari-focsam stack store"):
            precompute_stack(image, foreign, threshold_manager(), overwrite=overwrite)
    assert (foreign / "data.txt").read_text() == "precious"
    with pytest.raises(StoreError):
        StackStore.open(foreign)


def test_4d_and_rgb_stacks_and_tiff_input(tmp_path) -> None:
    image = stardist_3d()[0][:6]
    movie = image.reshape(2, 3, *image.shape[1:])  # (T, Z, Y, X)
    rgb = np.stack([image[:3].astype(np.uint8)] * 3, axis=-1)  # (Z, Y, X, 3)
    tifffile.imwrite(tmp_path / "movie.tif", movie, photometric="minisblack", metadata={"axes": "TZYX"})
    manager = threshold_manager()
    for stack, n in ((tmp_path / "movie.tif", 6), (rgb, 3)):
        reader = open_stack(stack)
        path = tmp_path / f"s{n}.zarr"
        result = precompute_stack(stack, path, manager)
        assert result.computed == n
        keys = StackStore.open(path).keys()
        for i in range(n):
            assert keys[i] == manager.key_for(to_model_rgb(reader.read(i), rgb=reader.rgb))
    assert open_stack(tmp_path / "movie.tif").leading_shape == (2, 3) and open_stack(rgb).rgb


def test_memory_stays_bounded_with_lazy_reading(tmp_path) -> None:
    """An 80-slice TIFF (10 MB of pixels, 42 MB of features) is processed holding about one slice at a time."""
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 4000, (80, 256, 256), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "long.tif", stack)
    del stack
    manager = ModelManager(ThresholdPredictor())
    tracemalloc.start()
    try:
        precompute_stack(tmp_path / "long.tif", tmp_path / "long.zarr", manager)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12e6, f"peak traced memory {peak / 1e6:.1f} MB"


def test_automatic_tasks_take_about_a_second_and_shrink_towards_the_end(tmp_path) -> None:
    assert [slices_per_task_for(s, 1000) for s in (5.0, 1.0, 0.6, 0.26, 0.1)] == [1, 1, 2, 4, 10]
    assert slices_per_task_for(0.0, 10**6) == MAX_SLICES_PER_TASK  # a GPU or a stand-in: capped (memory)
    assert [slices_per_task_for(0.1, left, threads=2) for left in (100, 40, 15, 8, 3)] == [10, 5, 2, 1, 1]
    with pytest.raises(ValueError, match="slices_per_task"):
        precompute_stack(stardist_3d()[0][:2], tmp_path / "s.zarr", threshold_manager(), slices_per_task=0)
    assert precompute_stack(stardist_3d()[0][:2], tmp_path / "s.zarr", threshold_manager()).slices_per_task == 1

