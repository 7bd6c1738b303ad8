"""Sample data: offline, napari LayerData tuples, sensible arrays; no napari or Qt imported."""

from __future__ import annotations

import socket
import subprocess
import sys

import numpy as np
import pytest

from napari_focsam.sample_data import SAMPLES, synthetic_nuclei
from napari_focsam.synthetic_tissue import synthetic_tissue

EXPECTED = {
    "coins": ((303, 384), np.uint8),
    "cell": ((660, 550), np.uint8),
    "ihc": ((512, 512, 3), np.uint8),
    "coffee": ((400, 600, 3), np.uint8),
    "nuclei_3d": ((32, 128, 128), np.uint16),
}


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("key", list(EXPECTED))
def test_samples_are_layer_data_and_work_offline(key, no_network):
    sample = SAMPLES[key]
    assert sample.description and sample.display_name
    layers = sample.function()
    assert len(layers) == 1
    data, meta, kind = layers[0]
    shape, dtype = EXPECTED[key]
    assert kind == "image" and isinstance(meta["name"], str) and meta["name"]
    assert isinstance(data, np.ndarray) and data.shape == shape and data.dtype == dtype
    assert data.std() > 0
    assert meta.get("rgb", False) == (data.ndim == 3 and data.shape[-1] == 3)


def test_synthetic_nuclei_are_deterministic_and_look_like_nuclei():
    image, labels = synthetic_nuclei()
    again, _ = synthetic_nuclei()
    assert np.array_equal(image, again)
    assert not np.array_equal(image, synthetic_nuclei(seed=1)[0])
    assert labels.dtype == np.int32 and labels.max() == 24
    assert set(np.unique(labels)) == set(range(25))
    inside, outside = image[labels > 0].astype(float), image[labels == 0].astype(float)
    assert inside.mean() > 3 * outside.mean()  # bright nuclei on a dark background
    sizes = np.bincount(labels.ravel())[1:]
    assert sizes.min() > 200  # every nucleus spans several planes and many pixels
    small, small_labels = synthetic_nuclei((8, 48, 40), n_nuclei=3, radius=(4, 6))
    assert small.shape == small_labels.shape == (8, 48, 40) and small_labels.max() == 3


def test_sample_data_imports_neither_napari_nor_qt():
    code = ("import sys\nfrom napari_focsam.sample_data import SAMPLES\n"
            "for s in SAMPLES.values(): s.function()\n"
            "bad = [m for m in ('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_large_tissue_sample_is_one_layer_per_channel_made_at_load_time(no_network):
    (data, meta, kind), = SAMPLES["tissue_8k"].function()
    assert kind == "image" and data.shape == (3, 8192, 8192) and data.dtype == np.uint16
    assert meta["channel_axis"] == 0 and len(meta["name"]) == len(meta["colormap"]) == 3
    corner = data[:, :1024, :1024]
    assert (corner.max(axis=(1, 2)) > 2000).all() and (np.median(corner, axis=(1, 2)) < 600).all()  # sparse, bright


def test_synthetic_tissue_is_deterministic_with_small_bright_nuclei():
    image, labels = synthetic_tissue(512, labels=True)
    assert np.array_equal(image, synthetic_tissue(512)[0]) and labels is not None
    assert not np.array_equal(image, synthetic_tissue(512, seed=1)[0])
    sizes = np.bincount(labels.ravel())[1:]
    assert 150 < len(sizes) < 250 and sizes.min() > 10 and sizes.max() < 150   # ~0.7 of 256 cells, small nuclei
    nuclei, membranes = image[0].astype(float), image[1].astype(float)
    assert nuclei[labels > 0].mean() > 3 * nuclei[labels == 0].mean()
    assert membranes[labels > 0].mean() < membranes[labels == 0].mean() * 3  # rings outside the nuclei
    with pytest.raises(ValueError, match="multiple of the cell side"):
        synthetic_tissue(100)
    with pytest.raises(ValueError, match="radius must be"):
        synthetic_tissue(512, radius=(3.0, 12.0))
