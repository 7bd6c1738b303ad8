"""The stack jobs on a real Dask LocalCluster (2 worker processes on 127.0.0.1) give what the serial run gives."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from _stack_support import stardist_3d

from napari_focsam.stack import ModelConfig, precompute_stack
from napari_focsam.stack.batch import segment_from_prompts
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
