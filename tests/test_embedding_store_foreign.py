"""Stores the embedding cache must not take over (foreign or newer ones), and the store's own repairs: stale staging
directories, stray files, failed writes (the rest of the store: ``test_embedding_store.py``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import zarr
from _cache_support import GEOMETRY, Problems, assert_same, make_embedding, snapshot

from napari_focsam.engine.cache import CacheWarning, EmbeddingCache
from napari_focsam.engine.embedding_store import FORMAT, FORMAT_VERSION

# ---------------------------------------------------------------------- disk round trip


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

