"""Tests of the data signature, the in-memory LRU and single flight of the embedding cache (its on-disk store:
``test_embedding_store.py``)."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import torch
from _cache_support import FINGERPRINT, GEOMETRY, Problems, assert_same, make_embedding

from napari_focsam._cancel import Cancelled
from napari_focsam.engine.cache import EmbeddingCache
from napari_focsam.engine.embedding_store import FORMAT
from napari_focsam.engine.signature import data_signature, embedding_key
from napari_focsam.engine.types import ImageEmbedding

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
