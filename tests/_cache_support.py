"""What the embedding cache's tests share: embeddings with a fixed geometry, keys, a problem recorder, store
snapshots (``test_cache.py``, ``test_embedding_store.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from napari_focsam.engine.signature import data_signature, embedding_key
from napari_focsam.engine.types import ImageEmbedding, ImageGeometry

GEOMETRY = ImageGeometry(original_size=(300, 400), padded_size=(320, 416), resized_size=(788, 1024))
FINGERPRINT = "sam_vit_b:weights=0123abcd:pre=rgb-imagenet-1024"


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
