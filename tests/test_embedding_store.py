"""Tests of the embedding cache's on-disk store, on real zarr stores in tmp_path: round trips, layout, corruption
(foreign stores: ``test_embedding_store_foreign.py``; the memory side: ``test_cache.py``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from _cache_support import FINGERPRINT, GEOMETRY, Problems, assert_same, chunk_files, key_of, make_embedding

from napari_focsam.engine.cache import CacheWarning, EmbeddingCache
from napari_focsam.engine.embedding_store import FORMAT, FORMAT_VERSION
from napari_focsam.engine.types import ImageEmbedding, ImageGeometry

# ---------------------------------------------------------------------- disk round trip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.bfloat16])
def test_disk_round_trip_is_identical(tmp_path, dtype):
    store = tmp_path / "store"
    image = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    key = key_of(image)
    embedding = make_embedding(key, seed=5, dtype=dtype)
    problems = Problems()
    EmbeddingCache(store=store, on_problem=problems).put(embedding)

    fresh = EmbeddingCache(store=store, on_problem=problems)  # a second instance on the same store
    assert fresh.store_usable and fresh.store_path == store.absolute()
    assert key in fresh
    got = fresh.get(key)
    assert got is not None
    assert_same(got, embedding)
    assert fresh.stats.hits_disk == 1 and fresh.stats.misses == 0
    assert fresh.get(key) is got  # promoted into memory
    assert fresh.stats.hits_memory == 1
    assert problems == []

    changed = image.copy()
    changed[0, 0, 0] ^= 0xFF
    assert fresh.get(key_of(changed)) is None  # changed data: a new signature misses
    assert fresh.get(key_of(image, FINGERPRINT + "-other-weights")) is None  # another model misses too
    assert fresh.stats.misses == 2


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((), torch.float32),
        ((0, 4), torch.float32),
        ((5,), torch.int64),
        ((3, 4), torch.bool),
        ((2, 0, 3, 3), torch.uint8),
    ],
)
def test_disk_round_trip_of_odd_shapes_and_dtypes(tmp_path, shape, dtype):
    store = tmp_path / "store"
    features = (torch.arange(int(np.prod(shape)), dtype=torch.float64).reshape(shape) % 3).to(dtype)
    embedding = ImageEmbedding(features=features, geometry=GEOMETRY, key="odd")
    problems = Problems()
    EmbeddingCache(store=store, on_problem=problems).put(embedding)
    got = EmbeddingCache(store=store, on_problem=problems).get("odd")
    assert problems == [] and got is not None
    assert_same(got, embedding)


def test_non_contiguous_features_round_trip(tmp_path):
    store = tmp_path / "store"
    features = torch.randn(1, 4, 6, 8).transpose(2, 3)
    assert not features.is_contiguous()
    embedding = ImageEmbedding(features=features, geometry=GEOMETRY, key="nc")
    EmbeddingCache(store=store).put(embedding)
    assert_same(EmbeddingCache(store=store).get("nc"), embedding)


def test_on_disk_layout(tmp_path):
    store = tmp_path / "store"
    cache = EmbeddingCache(store=store)
    embedding = make_embedding("k1", shape=(2, 3, 4, 5))
    cache.put(embedding)
    root = zarr.open_group(store, mode="r")
    assert root.metadata.zarr_format == 3
    assert dict(root.attrs) == {"format": FORMAT, "format_version": FORMAT_VERSION}
    entry = root["k1"]
    attrs = dict(entry.attrs)
    assert attrs["key"] == "k1"
    assert ImageGeometry.from_attrs(attrs["geometry"]) == GEOMETRY
    assert attrs["dtype"] == "float32" and attrs["shape"] == [2, 3, 4, 5]
    assert attrs["torch_dtype"] == "float32" and "package_version" in attrs
    assert len(attrs["checksum"]) == 32
    features = entry["features"]
    assert features.chunks == (1, 3, 4, 5)  # one chunk per leading index for >= 4-D
    np.testing.assert_array_equal(features[...], embedding.features.numpy())
    assert not [p for p in os.listdir(store) if p.startswith(".staging")]


def test_device_on_disk_hit(tmp_path):
    store = tmp_path / "store"
    EmbeddingCache(store=store).put(make_embedding("k"))
    got = EmbeddingCache(store=store).get("k", device="meta")
    assert got.features.device.type == "meta"


def test_get_or_compute_uses_disk_then_memory(tmp_path):
    store = tmp_path / "store"
    calls = []

    def compute():
        calls.append(1)
        return make_embedding("x", seed=9).features, GEOMETRY

    first = EmbeddingCache(store=store).get_or_compute("kk", compute)
    second_cache = EmbeddingCache(store=store)
    second = second_cache.get_or_compute("kk", compute)
    assert len(calls) == 1
    assert_same(first, second)
    assert second_cache.get_or_compute("kk", compute) is second
    assert second_cache.stats.hits_disk == 1 and second_cache.stats.hits_memory == 1


def test_discard_and_clear(tmp_path):
    store = tmp_path / "store"
    cache = EmbeddingCache(store=store)
    for name in ("a", "b", "c"):
        cache.put(make_embedding(name))
    (store / "notes.txt").write_text("mine")
    cache.discard("a")
    assert "a" not in cache and not (store / "a").exists()
    cache.clear()  # memory only
    assert cache.memory_bytes == 0 and "b" in cache  # still on disk
    cache.clear(memory_only=False)
    assert "b" not in cache and "c" not in cache
    assert (store / "notes.txt").read_text() == "mine"
    assert dict(zarr.open_group(store, mode="r").attrs)["format"] == FORMAT  # the store itself stays
    cache.put(make_embedding("d"))
    assert "d" in EmbeddingCache(store=store)


def test_unsafe_keys_stay_in_memory(tmp_path):
    problems = Problems()
    cache = EmbeddingCache(store=tmp_path / "store", on_problem=problems)
    cache.put(make_embedding("../Evil"))
    cache.put(make_embedding("Also Bad"))
    assert cache.get("../Evil") is not None
    assert len(problems) == 1 and "memory only" in problems[0]
    assert os.listdir(tmp_path) == ["store"]
    assert sorted(os.listdir(tmp_path / "store")) == ["zarr.json"]


# ---------------------------------------------------------------------- corruption


def _corrupt_flip(store: Path, key: str) -> None:
    path = chunk_files(store, key)[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _corrupt_truncate(store: Path, key: str) -> None:
    path = chunk_files(store, key)[0]
    path.write_bytes(path.read_bytes()[:7])


def _corrupt_delete_chunk(store: Path, key: str) -> None:
    chunk_files(store, key)[0].unlink()


def _corrupt_remove_checksum(store: Path, key: str) -> None:
    meta = store / key / "zarr.json"
    doc = json.loads(meta.read_text())
    del doc["attributes"]["checksum"]
    meta.write_text(json.dumps(doc))


def _corrupt_rewrite_values(store: Path, key: str) -> None:
    features = zarr.open_group(store / key, mode="r+")["features"]
    values = features[...]
    values.flat[0] += 1.0
    features[...] = values  # a perfectly readable chunk with the wrong values


def _corrupt_wrong_key(store: Path, key: str) -> None:
    zarr.open_group(store / key, mode="r+").attrs["key"] = "someone-else"


def _corrupt_delete_array(store: Path, key: str) -> None:
    (store / key / "features" / "zarr.json").unlink()


def _edit_attribute(store: Path, key: str, name: str, value) -> None:
    meta = store / key / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"][name] = value
    meta.write_text(json.dumps(doc))


def _corrupt_geometry(store: Path, key: str) -> None:
    geometry = json.loads((store / key / "zarr.json").read_text())["attributes"]["geometry"]
    geometry["original_size"] = [150, 200]
    _edit_attribute(store, key, "geometry", geometry)


def _corrupt_torch_dtype(store: Path, key: str) -> None:
    _edit_attribute(store, key, "torch_dtype", "float16")


@pytest.mark.parametrize(
    "corrupt",
    [
        _corrupt_flip,
        _corrupt_truncate,
        _corrupt_delete_chunk,
        _corrupt_remove_checksum,
        _corrupt_rewrite_values,
        _corrupt_wrong_key,
        _corrupt_delete_array,
        _corrupt_geometry,
        _corrupt_torch_dtype,
    ],
)
def test_corrupt_entry_is_reported_recomputed_and_rewritten(tmp_path, corrupt):
    store = tmp_path / "store"
    key = key_of(np.arange(100, dtype=np.uint8))
    original = make_embedding(key, seed=11)
    EmbeddingCache(store=store).put(original)
    corrupt(store, key)

    problems = Problems()
    cache = EmbeddingCache(store=store, on_problem=problems)
    assert problems == []
    calls = []

    def compute():
        calls.append(1)
        return original.features.clone(), GEOMETRY

    got = cache.get_or_compute(key, compute)
    assert calls == [1]  # recomputed, not silently used
    assert_same(got, original)
    assert len(problems) == 1
    assert "corrupt" in problems[0] and key in problems[0] and "recomputing" in problems[0]
    assert cache.stats.corrupt == 1 and cache.stats.misses == 1

    # rewritten correctly: a new instance reads it back from disk without complaint
    again = EmbeddingCache(store=store, on_problem=problems)
    reread = again.get(key)
    assert reread is not None and again.stats.hits_disk == 1
    assert_same(reread, original)
    assert len(problems) == 1


def test_corrupt_entry_reported_through_warning_by_default(tmp_path):
    store = tmp_path / "store"
    EmbeddingCache(store=store).put(make_embedding("k"))
    _corrupt_flip(store, "k")
    cache = EmbeddingCache(store=store)
    with pytest.warns(CacheWarning, match="corrupt"):
        assert cache.get("k") is None
    assert not (store / "k").exists()  # ours: deleted
    assert "k" not in cache


def test_contains_does_not_count_an_interrupted_entry(tmp_path):
    store = tmp_path / "store"
    EmbeddingCache(store=store).put(make_embedding("k"))
    _corrupt_remove_checksum(store, "k")
    assert "k" not in EmbeddingCache(store=store)
