"""Tests of the data signature and the embedding cache, on real zarr stores in tmp_path."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from napari_focsam._cancel import Cancelled
from napari_focsam.engine.cache import CacheWarning, EmbeddingCache
from napari_focsam.engine.embedding_store import FORMAT, FORMAT_VERSION
from napari_focsam.engine.signature import data_signature, embedding_key
from napari_focsam.engine.types import ImageEmbedding, ImageGeometry

GEOMETRY = ImageGeometry(original_size=(300, 400), padded_size=(320, 416), resized_size=(788, 1024))
FINGERPRINT = "sam_vit_b:weights=0123abcd:pre=rgb-imagenet-1024"


# ---------------------------------------------------------------------- helpers


def make_embedding(key: str, seed: int = 0, shape: tuple[int, ...] = (1, 8, 16, 16), dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return ImageEmbedding(features=torch.randn(shape, generator=gen).to(dtype), geometry=GEOMETRY, key=key)


def key_of(image: np.ndarray, fingerprint: str = FINGERPRINT) -> str:
    return embedding_key(data_signature(image), fingerprint)


class Problems(list):
    """An on_problem callback that records the messages."""

    def __call__(self, message: str) -> None:
        self.append(message)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its contents."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def chunk_files(store: Path, key: str) -> list[Path]:
    files = [p for p in (store / key / "features" / "c").rglob("*") if p.is_file()]
    assert files, "expected chunk files"
    return files


def assert_same(a: ImageEmbedding, b: ImageEmbedding) -> None:
    assert a.key == b.key
    assert a.geometry == b.geometry
    assert a.features.dtype == b.features.dtype
    assert a.features.shape == b.features.shape
    assert torch.equal(a.features.cpu(), b.features.cpu())


# ---------------------------------------------------------------------- signature


def test_signature_changes_with_one_pixel_dtype_and_shape():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    sig = data_signature(image)
    assert isinstance(sig, str) and len(sig) == 32 and int(sig, 16) >= 0

    changed = image.copy()
    changed[10, 20, 1] ^= 1
    assert data_signature(changed) != sig

    assert data_signature(image.view(np.int8)) != sig  # same bytes, other dtype
    assert data_signature(image.astype(np.uint16)) != sig
    assert data_signature(image.reshape(48, 64, 3)) != sig  # same bytes, other shape
    assert data_signature(image.reshape(-1)) != sig
    assert data_signature(np.zeros((2, 3), np.uint8)) != data_signature(np.zeros((3, 2), np.uint8))
    assert data_signature(np.zeros((0, 4), np.uint8)) != data_signature(np.zeros((4, 0), np.uint8))


def test_signature_equal_for_equal_arrays_whatever_the_layout():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    view = base[::2, 1::3]  # non-contiguous
    assert not view.flags.c_contiguous
    assert data_signature(view) == data_signature(np.ascontiguousarray(view))
    assert data_signature(base) == data_signature(base.copy())
    assert data_signature(np.asfortranarray(base)) == data_signature(base)
    assert data_signature(base[:, :, ::-1]) == data_signature(base[:, :, ::-1].copy())
    floats = rng.random((7, 9))
    assert data_signature(floats.astype(">f8")) == data_signature(floats)  # byte order is not content
    assert data_signature(np.float32(3.5)) == data_signature(np.array(3.5, np.float32))


def test_signature_refuses_object_arrays():
    with pytest.raises(TypeError):
        data_signature(np.array([1, "a"], dtype=object))


def test_signature_is_fast():
    image = np.random.default_rng(2).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    data_signature(image)
    best = min(_timed(data_signature, image) for _ in range(5))
    assert best < 0.05, f"signing a 1024x1024x3 uint8 image took {best * 1000:.1f} ms"


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def test_embedding_key_depends_on_both_parts():
    sig = data_signature(np.arange(12, dtype=np.uint8))
    key = embedding_key(sig, FINGERPRINT)
    assert key == embedding_key(sig, FINGERPRINT)
    assert len(key) == 32 and key == key.lower()
    assert key != embedding_key(sig, FINGERPRINT + "x")
    assert key != embedding_key(data_signature(np.arange(13, dtype=np.uint8)), FINGERPRINT)
    assert embedding_key("ab", "c") != embedding_key("a", "bc")  # parts are framed, not concatenated
    with pytest.raises(TypeError):
        embedding_key("", FINGERPRINT)


# ---------------------------------------------------------------------- memory LRU


def test_lru_respects_byte_bound_and_evicts_least_recently_used():
    one = make_embedding("a").nbytes
    cache = EmbeddingCache(max_bytes=3 * one)
    for name in "abc":
        cache.put(make_embedding(name))
    assert cache.memory_bytes == 3 * one and len(cache) == 3

    assert cache.get("a") is not None  # "a" is now the most recently used; "b" the least
    cache.put(make_embedding("d"))
    assert cache.memory_bytes == 3 * one <= cache.max_bytes
    assert "b" not in cache
    assert all(name in cache for name in "acd")
    assert cache.stats.evictions == 1

    cache.put(make_embedding("e"))  # evicts "c"
    assert "c" not in cache and "a" in cache
    assert cache.stats["evictions"] == 2


def test_lru_replacing_a_key_does_not_double_count():
    cache = EmbeddingCache(max_bytes=1 << 20)
    cache.put(make_embedding("a", seed=1))
    cache.put(make_embedding("a", seed=1))
    assert cache.memory_bytes == make_embedding("a").nbytes and len(cache) == 1


def test_oversize_item_is_not_kept_in_memory_but_written_to_disk(tmp_path):
    small = make_embedding("small", shape=(4, 4))
    big = make_embedding("big", shape=(1, 8, 64, 64))
    cache = EmbeddingCache(max_bytes=big.nbytes - 1, store=tmp_path / "store")
    cache.put(small)
    cache.put(big)
    assert cache.memory_bytes == small.nbytes  # the big one did not evict the small one either
    assert len(cache) == 1
    assert cache.stats.evictions == 0
    assert (tmp_path / "store" / "big" / "zarr.json").is_file()
    got = cache.get("big")
    assert got is not None and cache.stats.hits_disk == 1
    assert_same(got, big)
    assert cache.memory_bytes == small.nbytes


def test_zero_budget_keeps_nothing_in_memory():
    cache = EmbeddingCache(max_bytes=0)
    cache.put(make_embedding("a"))
    assert cache.memory_bytes == 0 and cache.get("a") is None
    with pytest.raises(ValueError):
        EmbeddingCache(max_bytes=-1)


def test_stats_count_hits_and_misses():
    cache = EmbeddingCache()
    assert cache.get("nope") is None
    cache.put(make_embedding("a"))
    assert cache.get("a") is not None
    stats = cache.stats
    assert (stats.hits_memory, stats.hits_disk, stats.misses, stats.evictions) == (1, 0, 1, 0)
    assert stats.as_dict()["misses"] == 1


def test_get_moves_to_device_without_changing_memory():
    cache = EmbeddingCache()
    embedding = make_embedding("a", dtype=torch.float64)
    cache.put(embedding)
    assert cache.get("a", device="cpu") is embedding  # already there: no copy
    meta = cache.get("a", device="meta")
    assert meta.features.device.type == "meta" and meta.key == "a" and meta.geometry == GEOMETRY
    assert cache.get("a") is embedding


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


# ---------------------------------------------------------------------- foreign stores


def _check_foreign(path: Path, problems: Problems, cache: EmbeddingCache, newer: bool = False) -> None:
    assert not cache.store_usable
    assert cache.store_path == path.absolute()
    assert len(problems) == 1
    assert str(path) in problems[0]
    if newer:
        assert "newer" in problems[0] and "format_version" in problems[0]
    else:
        assert "is not a napari-focsam embedding store" in problems[0]
    assert "memory only" in problems[0] and "nothing will be written there" in problems[0]


def _exercise(cache: EmbeddingCache) -> None:
    embedding = make_embedding("abc")
    cache.put(embedding)
    assert cache.get("abc") is embedding
    assert cache.get_or_compute("def", lambda: (embedding.features, GEOMETRY)).key == "def"
    cache.discard("abc")
    cache.clear(memory_only=False)
    assert "abc" not in cache and "def" not in cache and cache.get("zzz") is None


def test_foreign_directory_with_unrelated_file(tmp_path):
    path = tmp_path / "photos"
    path.mkdir()
    (path / "holiday.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (path / "abc").mkdir()  # even a directory named like a key is not ours
    (path / "abc" / "zarr.json").write_text("{}")
    before = snapshot(path)
    problems = Problems()
    cache = EmbeddingCache(store=path, on_problem=problems)
    _check_foreign(path, problems, cache)
    _exercise(cache)
    assert len(problems) == 1  # reported once
    assert snapshot(path) == before


def test_foreign_zarr_group_without_marker(tmp_path):
    path = tmp_path / "data.zarr"
    group = zarr.open_group(path, mode="w-", attributes={"owner": "someone"})
    group.create_array("abc", shape=(3,), dtype="int32")[...] = [1, 2, 3]
    before = snapshot(path)
    problems = Problems()
    cache = EmbeddingCache(store=path, on_problem=problems)
    _check_foreign(path, problems, cache)
    _exercise(cache)
    assert len(problems) == 1
    assert snapshot(path) == before


def test_foreign_zarr_v2_group_zarr_array_and_file(tmp_path):
    v2 = tmp_path / "v2.zarr"
    zarr.open_group(v2, mode="w", zarr_format=2, attributes={"format": FORMAT, "format_version": 1})
    arr = tmp_path / "arr.zarr"
    zarr.create_array(arr, shape=(2,), dtype="f4")
    file = tmp_path / "file.bin"
    file.write_bytes(b"hello")
    for path in (v2, arr, file):
        before = snapshot(path) if path.is_dir() else path.read_bytes()
        problems = Problems()
        cache = EmbeddingCache(store=path, on_problem=problems)
        _check_foreign(path, problems, cache)
        _exercise(cache)
        assert (snapshot(path) if path.is_dir() else path.read_bytes()) == before


def test_newer_format_version_is_foreign(tmp_path):
    path = tmp_path / "store"
    zarr.open_group(path, mode="w-", attributes={"format": FORMAT, "format_version": FORMAT_VERSION + 1})
    before = snapshot(path)
    problems = Problems()
    cache = EmbeddingCache(store=path, on_problem=problems)
    _check_foreign(path, problems, cache, newer=True)
    _exercise(cache)
    assert snapshot(path) == before


def test_foreign_store_warns_by_default(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.warns(CacheWarning, match="not a napari-focsam embedding store"):
        cache = EmbeddingCache(store=tmp_path)
    assert not cache.store_usable


def test_missing_and_empty_directories_become_stores(tmp_path):
    missing = tmp_path / "deep" / "new"
    empty = tmp_path / "empty"
    empty.mkdir()
    for path in (missing, empty):
        problems = Problems()
        cache = EmbeddingCache(store=path, on_problem=problems)
        assert cache.store_usable and problems == []
        assert dict(zarr.open_group(path, mode="r").attrs) == {"format": FORMAT, "format_version": FORMAT_VERSION}
    assert EmbeddingCache(store=None).store_usable is False and EmbeddingCache().store_path is None


def test_stale_staging_directories_are_removed_fresh_ones_kept(tmp_path):
    store = tmp_path / "store"
    EmbeddingCache(store=store)
    stale = store / ".staging-abc-1-dead"
    fresh = store / ".staging-abc-2-live"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    EmbeddingCache(store=store)
    assert not stale.exists() and fresh.exists()


def test_stray_file_at_an_entry_name_is_replaced(tmp_path):
    store = tmp_path / "store"
    cache = EmbeddingCache(store=store)
    (store / "k").write_text("a file under our key, inside our store")
    embedding = make_embedding("k")
    cache.put(embedding)
    assert cache.get("k") is embedding
    assert_same(EmbeddingCache(store=store).get("k"), embedding)


def test_failed_write_is_reported_and_memory_still_works(tmp_path):
    store = tmp_path / "store"
    problems = Problems()
    cache = EmbeddingCache(store=store, on_problem=problems)
    # the store vanishes after opening and the user puts a file there: writes fail and the file is left alone
    for child in store.iterdir():
        child.unlink()
    store.rmdir()
    store.write_text("the user's file")
    embedding = make_embedding("k")
    cache.put(embedding)
    assert len(problems) == 1 and "not a napari-focsam embedding store (a file)" in problems[0]
    assert cache.get("k") is embedding
    cache.discard("k")
    cache.clear(memory_only=False)
    assert store.read_text() == "the user's file"


def test_unstorable_dtype_stays_in_memory(tmp_path):
    problems = Problems()
    cache = EmbeddingCache(store=tmp_path / "store", on_problem=problems)
    cache.put(make_embedding("c", dtype=torch.complex64))
    assert len(problems) == 1 and "memory only" in problems[0]
    assert cache.get("c") is not None
    assert "c" in cache and not (tmp_path / "store" / "c").exists()


# ---------------------------------------------------------------------- single flight and threads


def test_single_flight_computes_once(tmp_path):
    cache = EmbeddingCache(store=tmp_path / "store")
    started = threading.Event()
    release = threading.Event()
    calls = []
    embedding = make_embedding("k")

    def compute():
        calls.append(threading.current_thread().name)
        started.set()
        assert release.wait(10)
        return embedding.features, GEOMETRY

    results = {}

    def worker(name):
        results[name] = cache.get_or_compute("k", compute)

    a = threading.Thread(target=worker, args=("a",), name="a")
    a.start()
    assert started.wait(10)
    b = threading.Thread(target=worker, args=("b",), name="b")
    b.start()
    time.sleep(0.2)  # b is now (almost surely) waiting for a's computation
    release.set()
    a.join(10)
    b.join(10)
    assert calls == ["a"]
    assert results["a"] is results["b"]
    assert results["a"].features is embedding.features
    assert cache.stats.misses == 1
    assert cache.stats.shared + cache.stats.hits_memory == 1  # b shared a's result (or, if very late, hit memory)


def test_cancelled_computation_goes_to_its_caller_and_a_waiter_computes_itself():
    cache = EmbeddingCache()
    started = threading.Event()
    b_waiting = threading.Event()
    embedding = make_embedding("k", seed=3)
    calls = []
    outcome = {}

    def compute_a():
        calls.append("a")
        started.set()
        assert b_waiting.wait(10)
        time.sleep(0.2)  # let b block on the flight
        raise Cancelled("superseded")

    def compute_b():
        calls.append("b")
        return embedding.features, GEOMETRY

    def run_a():
        try:
            cache.get_or_compute("k", compute_a)
        except Cancelled as exc:
            outcome["a"] = exc

    def run_b():
        b_waiting.set()
        outcome["b"] = cache.get_or_compute("k", compute_b)

    a = threading.Thread(target=run_a)
    a.start()
    assert started.wait(10)
    b = threading.Thread(target=run_b)
    b.start()
    a.join(10)
    b.join(10)
    assert isinstance(outcome["a"], Cancelled)
    assert calls == ["a", "b"]
    assert outcome["b"].features is embedding.features and outcome["b"].key == "k"
    assert cache.get("k") is outcome["b"]


def test_different_keys_compute_concurrently():
    cache = EmbeddingCache()
    barrier = threading.Barrier(2, timeout=10)  # breaks unless both computations run at the same time

    def compute():
        barrier.wait()
        return torch.zeros(4), GEOMETRY

    results = []
    threads = [
        threading.Thread(target=lambda k=k: results.append(cache.get_or_compute(k, compute).key)) for k in ("a", "b")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(results) == ["a", "b"]


def test_compute_must_return_features_and_geometry():
    cache = EmbeddingCache()
    with pytest.raises(TypeError):
        cache.get_or_compute("k", lambda: torch.zeros(3))
    assert cache.get_or_compute("k", lambda: (torch.zeros(3), GEOMETRY)).key == "k"


@pytest.mark.parametrize("with_store", [False, True])
def test_thread_safety_smoke(tmp_path, with_store):
    one = make_embedding("x", shape=(64, 64)).nbytes
    problems = Problems()
    cache = EmbeddingCache(max_bytes=5 * one, store=tmp_path / "store" if with_store else None, on_problem=problems)
    errors = []
    computed: dict[str, int] = {}
    computed_lock = threading.Lock()

    def expected(key: str) -> torch.Tensor:
        return torch.full((64, 64), float(int(key[1:])))

    def compute_for(key):
        def compute():
            with computed_lock:
                computed[key] = computed.get(key, 0) + 1
            return expected(key), GEOMETRY

        return compute

    def worker(tid: int) -> None:
        try:
            rng = np.random.default_rng(tid)
            for _ in range(60):
                key = f"k{int(rng.integers(0, 12))}"
                op = rng.integers(0, 4)
                if op == 0:
                    cache.put(ImageEmbedding(expected(key), GEOMETRY, key))
                elif op == 1:
                    got = cache.get(key)
                    assert got is None or torch.equal(got.features, expected(key))
                elif op == 2:
                    got = cache.get_or_compute(key, compute_for(key))
                    assert torch.equal(got.features, expected(key)) and got.key == key
                else:
                    assert cache.memory_bytes <= cache.max_bytes
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(tid,)) for tid in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert problems == []
    assert 0 <= cache.memory_bytes <= cache.max_bytes
    assert cache.memory_bytes == len(cache) * one
    if with_store:
        reread = EmbeddingCache(store=tmp_path / "store", on_problem=problems)
        for key in computed:
            got = reread.get(key)
            assert got is not None and torch.equal(got.features, expected(key))
        assert problems == []
        assert not [p for p in os.listdir(tmp_path / "store") if p.startswith(".staging")]


def test_a_store_deleted_while_in_use_is_recreated_with_its_marker(tmp_path):
    store = tmp_path / "store"
    problems = Problems()
    cache = EmbeddingCache(store=store, on_problem=problems)
    cache.put(make_embedding("a"))
    import shutil

    shutil.rmtree(store)
    cache.put(make_embedding("b", seed=1))
    assert (store / "b").is_dir()
    assert json.loads((store / "zarr.json").read_text())["attributes"]["format"] == FORMAT

    later = Problems()
    again = EmbeddingCache(store=store, on_problem=later)
    assert later == [] and again.store_usable
    assert_same(again.get("b"), make_embedding("b", seed=1))
