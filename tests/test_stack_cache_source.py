"""The embedding cache's read-only sources (how a precomputed stack store serves ModelManager.embed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_focsam.engine.cache import EmbeddingCache, EmbeddingSource
from napari_focsam.engine.types import ImageEmbedding, ImageGeometry

GEOMETRY = ImageGeometry((8, 8), (8, 8), (1024, 1024))


def _embedding(key: str, value: float = 1.0) -> ImageEmbedding:
    return ImageEmbedding(torch.full((1, 2, 4, 4), value), GEOMETRY, key)


class DictSource:
    def __init__(self, entries: dict[str, ImageEmbedding]) -> None:
        self.entries = entries
        self.calls: list[str] = []

    def lookup(self, key: str) -> ImageEmbedding | None:
        self.calls.append(key)
        return self.entries.get(key)


def _never() -> tuple[torch.Tensor, ImageGeometry]:
    raise AssertionError("computed although a source has it")


def test_source_is_consulted_before_computing_and_promoted_to_memory() -> None:
    source = DictSource({"abc": _embedding("abc", 3.0)})
    assert isinstance(source, EmbeddingSource)
    cache = EmbeddingCache()
    cache.add_source(source)
    cache.add_source(source)  # added once
    assert cache.sources == (source,)
    got = cache.get_or_compute("abc", _never)
    assert torch.equal(got.features, torch.full((1, 2, 4, 4), 3.0))
    assert cache.stats.hits_source == 1 and cache.stats.misses == 0
    again = cache.get_or_compute("abc", _never)  # now from memory: the source is not asked again
    assert again.key == "abc" and source.calls == ["abc"] and cache.stats.hits_memory == 1
    assert cache.get("abc") is not None and source.calls == ["abc"]


def test_memory_and_own_store_come_first(tmp_path) -> None:
    source = DictSource({"k1": _embedding("k1", 9.0)})
    cache = EmbeddingCache(store=tmp_path / "store")
    cache.put(_embedding("k1", 1.0))
    cache.add_source(source)
    assert float(cache.get("k1").features[0, 0, 0, 0]) == 1.0  # memory
    fresh = EmbeddingCache(store=tmp_path / "store")
    fresh.add_source(source)
    assert float(fresh.get("k1").features[0, 0, 0, 0]) == 1.0  # own store before the source
    assert source.calls == [] and fresh.stats.hits_disk == 1


def test_source_hits_are_not_copied_into_the_own_store(tmp_path) -> None:
    cache = EmbeddingCache(store=tmp_path / "store")
    cache.add_source(DictSource({"k2": _embedding("k2")}))
    assert cache.get("k2") is not None
    assert cache.stats.disk_writes == 0 and not (tmp_path / "store" / "k2").exists()


def test_a_miss_everywhere_computes_and_removed_sources_are_not_asked() -> None:
    source = DictSource({})
    cache = EmbeddingCache()
    cache.add_source(source)
    got = cache.get_or_compute("k3", lambda: (torch.zeros(1, 2, 4, 4), GEOMETRY))
    assert got.key == "k3" and cache.stats.misses == 1 and source.calls == ["k3"]
    cache.remove_source(source)
    cache.remove_source(source)  # unknown: ignored
    assert cache.get("nope") is None and source.calls == ["k3"]


def test_failing_or_lying_sources_are_reported_and_skipped() -> None:
    class Broken:
        def lookup(self, key: str) -> ImageEmbedding | None:
            raise OSError("disk gone")

    problems: list[str] = []
    cache = EmbeddingCache(on_problem=problems.append)
    cache.add_source(Broken())
    cache.add_source(DictSource({"k4": _embedding("other")}))  # answers with another key
    good = DictSource({"k4": _embedding("k4", 5.0)})
    cache.add_source(good)
    got = cache.get("k4")
    assert got is not None and float(got.features.max()) == 5.0
    assert len(problems) == 2 and "disk gone" in problems[0] and "'other'" in problems[1]


def test_add_source_needs_lookup() -> None:
    with pytest.raises(TypeError, match="lookup"):
        EmbeddingCache().add_source(object())


def test_source_hit_moves_to_the_requested_device() -> None:
    cache = EmbeddingCache()
    cache.add_source(DictSource({"k5": _embedding("k5")}))
    got = cache.get("k5", device="cpu")
    assert got.features.device.type == "cpu" and np.isclose(float(got.features.sum()), 32.0)
