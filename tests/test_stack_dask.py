"""The stack jobs on a real Dask LocalCluster (2 worker processes on 127.0.0.1) give what the serial run gives."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import zarr
from _stack_support import stardist_3d

from napari_focsam.engine.types import Cancelled, CancelToken
from napari_focsam.stack import ModelConfig, StackStore, precompute_stack
from napari_focsam.stack.batch import segment_from_prompts
from napari_focsam.stack.distributed import MALLOC_TRIM, dask_client
from napari_focsam.stack.propagate import deepest_point
from napari_focsam.stack.propagate_prompts import segment_with_propagation
from napari_focsam.stack.worker import loads_in_this_process

distributed = pytest.importorskip("distributed")

TINY = ModelConfig("sam_tiny", device="cpu", allow_random_weights=True)
SLICES = slice(13, 17)


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as dask_client:
        yield dask_client


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    image, truth = stardist_3d()
    folder = tmp_path_factory.mktemp("dask")
    serial = precompute_stack(image[SLICES], folder / "serial.zarr", TINY)
    assert serial.computed == 4
    return image[SLICES], truth[SLICES], folder


def test_precompute_on_dask_equals_serial_and_loads_the_model_once_per_worker(client, data) -> None:
    stack, _, folder = data
    result = precompute_stack(stack, folder / "dask.zarr", TINY, client=client)
    assert (result.computed, result.workers) == (4, 2)
    serial, dask = zarr.open_group(folder / "serial.zarr", mode="r"), zarr.open_group(folder / "dask.zarr", mode="r")
    assert np.array_equal(serial["features"][...], dask["features"][...])
    assert np.array_equal(serial["meta"][...], dask["meta"][...])
    verified = precompute_stack(stack, folder / "dask.zarr", TINY, client=client)  # finished: verified only
    assert (verified.computed, verified.verified) == (0, 4)


def _same_store(a, b) -> bool:
    a, b = zarr.open_group(a, mode="r"), zarr.open_group(b, mode="r")
    return np.array_equal(a["features"][...], b["features"][...]) and np.array_equal(a["meta"][...], b["meta"][...])


def _executing(dask_worker) -> int:
    return dask_worker.state.executing_count


def _wait_until_idle(client) -> None:
    """A task cancelled while it runs still finishes (and writes) on its worker: let it, before resuming."""
    deadline = time.monotonic() + 60
    while any(client.run(_executing).values()) and time.monotonic() < deadline:
        time.sleep(0.05)


def test_several_slices_per_task_equal_serial_and_an_interrupted_run_resumes(client, data, tmp_path) -> None:
    stack, _, folder = data
    with distributed.get_task_stream(client) as stream:
        grouped = precompute_stack(stack, tmp_path / "grouped.zarr", TINY, client=client, slices_per_task=2)
    assert (grouped.computed, grouped.slices_per_task) == (4, 2)
    tasks = sorted(distributed.utils.key_split(task["key"]) for task in stream.data)
    # one slice per worker comes back to make the store (no worker waits for it), then slices 2 and 3 in one task
    assert tasks == ["model_info", "task_embed_return", "task_embed_return", "task_embed_write"]
    assert _same_store(folder / "serial.zarr", tmp_path / "grouped.zarr")
    seen = []

    def stop_after_the_first_task(done: int, total: int) -> None:
        seen.append(done)
        if done > 1:
            raise KeyboardInterrupt

    path = tmp_path / "interrupted.zarr"
    with pytest.raises(KeyboardInterrupt):
        precompute_stack(stack, path, TINY, client=client, slices_per_task=2, progress=stop_after_the_first_task)
    assert seen[:2] == [0, 1] and seen[2] in (2, 3)  # progress counts every slice of a finished task
    _wait_until_idle(client)
    assert not StackStore.open(path).complete
    resumed = precompute_stack(stack, path, TINY, client=client, slices_per_task=3)
    assert resumed.verified >= seen[2] and resumed.verified + resumed.computed == 4
    assert StackStore.open(path).complete and _same_store(folder / "serial.zarr", path)


def test_automatic_task_sizes_equal_serial(client, tmp_path) -> None:
    """12 fast slices on 2 workers: tasks of 2 slices while 9+ are left, then single slices (about a second each
    would be more, but the workers must finish together)."""
    stack = stardist_3d()[0][8:20]
    precompute_stack(stack, tmp_path / "serial.zarr", TINY)
    result = precompute_stack(stack, tmp_path / "dask.zarr", TINY, client=client)
    assert result.computed == 12 and result.slices_per_task in (1, 2)  # 1 only if a slice took over a second
    assert _same_store(tmp_path / "serial.zarr", tmp_path / "dask.zarr")


def test_cancelling_grouped_tasks_leaves_a_store_that_resumes_serially(client, data, tmp_path) -> None:
    stack, _, folder = data
    token = CancelToken()
    path = tmp_path / "cancelled.zarr"
    with pytest.raises(Cancelled):  # cancelled when the first task (after the store's first slice) is done
        precompute_stack(stack, path, TINY, client=client, slices_per_task=2, cancel=token,
                         progress=lambda done, total: token.cancel() if done > 1 else None)
    _wait_until_idle(client)
    assert not StackStore.open(path).complete
    written = sum(key is not None for key in StackStore.open(path).keys())
    resumed = precompute_stack(stack, path, TINY)
    assert (resumed.verified, resumed.computed) == (written, 4 - written)
    assert _same_store(folder / "serial.zarr", path)


@pytest.mark.filterwarnings("ignore:Port 8787 is already in use")  # the module's cluster has it
def test_local_cluster_workers_start_without_malloc_trim(monkeypatch) -> None:
    """Dask's MALLOC_TRIM_THRESHOLD_ makes torch fault in every large tensor afresh; our own cluster goes without."""
    monkeypatch.setenv(MALLOC_TRIM, "123456")  # this process's own value is left as it was
    with dask_client(1) as new_client:
        assert list(new_client.run(os.getenv, MALLOC_TRIM).values()) == [None]
    assert os.environ[MALLOC_TRIM] == "123456"


def test_batch_and_propagation_on_dask_equal_serial(client, data, tmp_path) -> None:
    stack, truth, folder = data
    rows = ["slice,object_id,y,x,label"]
    for z in (0, 3):
        object_id = int(np.unique(truth[z])[1])
        y, x = deepest_point(truth[z] == object_id)
        rows.append(f"{z},{object_id},{y:g},{x:g},positive")
    path = tmp_path / "p.csv"
    path.write_text("\n".join(rows) + "\n")
    store = folder / "serial.zarr"
    serial = segment_from_prompts(stack, path, TINY, store=store)
    on_dask = segment_from_prompts(stack, path, TINY, store=store, client=client)
    assert serial.any() and np.array_equal(serial, on_dask)
    options = dict(store=store, iou_threshold=0.0, max_distance=1)
    serial_z = segment_with_propagation(stack, path, TINY, **options)
    dask_z = segment_with_propagation(stack, path, TINY, client=client, **options)
    assert np.array_equal(serial_z, dask_z)
    loads = client.run(loads_in_this_process)  # after all these jobs: each worker loaded the model once
    assert sorted(loads.values()) == [1, 1], loads


def test_stack_jobs_compute_independently_of_the_thread_count() -> None:
    """oneDNN's 1x1 convolution (SAM's neck) depends on the thread count; inside stack jobs it is switched off."""
    import torch

    from napari_focsam.stack.worker import thread_count_invariant

    conv = torch.nn.Conv2d(768, 256, 1, bias=False)
    x = torch.randn(1, 768, 64, 64, generator=torch.Generator().manual_seed(0))
    threads, enabled = torch.get_num_threads(), torch.backends.mkldnn.enabled
    try:
        with thread_count_invariant():
            with thread_count_invariant():  # nested (concurrent jobs): still off
                pass
            assert not torch.backends.mkldnn.enabled
            outputs = []
            for n in (1, 2):
                torch.set_num_threads(n)
                with torch.inference_mode():
                    outputs.append(conv(x))
        assert torch.equal(outputs[0], outputs[1])
        assert torch.backends.mkldnn.enabled == enabled  # restored after the last job
    finally:
        torch.set_num_threads(threads)
