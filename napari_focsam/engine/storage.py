"""Storage helpers shared by the embedding cache's store and the stack store: the dtypes a tensor is stored as, the
BLAKE2b-128 checksums over arrays and deciding attributes, and tensors back from stored arrays."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["STORABLE", "content_digest", "remove_path", "storable_array", "tensor_from_array", "torch_dtype_named"]

#: bytes of a digest (BLAKE2b-128)
DIGEST_SIZE = 16

#: tensor dtypes that go to disk, and the numpy dtype they are stored as
STORABLE: dict[torch.dtype, np.dtype] = {
    torch.float16: np.dtype("float16"),
    torch.float32: np.dtype("float32"),
    torch.float64: np.dtype("float64"),
    torch.bfloat16: np.dtype("float32"),  # numpy has no bfloat16; float32 holds every bfloat16 value exactly
    torch.uint8: np.dtype("uint8"),
    torch.int8: np.dtype("int8"),
    torch.int16: np.dtype("int16"),
    torch.int32: np.dtype("int32"),
    torch.int64: np.dtype("int64"),
    torch.bool: np.dtype("bool"),
}
_TORCH_DTYPE_BY_NAME = {str(dt).removeprefix("torch."): dt for dt in STORABLE}


def torch_dtype_named(name: str) -> torch.dtype:
    """The storable torch dtype called ``name`` (``"bfloat16"``, ``"float32"``, ...); raises :class:`KeyError`."""
    return _TORCH_DTYPE_BY_NAME[name]


def content_digest(arrays: Iterable[np.ndarray] = (), checked: dict[str, Any] | None = None) -> Any:
    """A BLAKE2b-128 hash of arrays' C-order bytes, one after the other, then of ``checked`` as canonical JSON.

    Returns the :mod:`hashlib` object; callers store its ``hexdigest()`` or ``digest()``.
    """
    digest = hashlib.blake2b(digest_size=DIGEST_SIZE)
    for array in arrays:
        digest.update(np.asarray(array, order="C").reshape(-1).view(np.uint8).data)
    if checked is not None:
        digest.update(json.dumps(checked, sort_keys=True, separators=(",", ":")).encode())
    return digest


def storable_array(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as the C-order numpy array a store keeps (bfloat16 as float32, exactly; 0-d stays 0-d)."""
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.to(torch.float32)
    return np.asarray(tensor.cpu().numpy(), order="C")


def tensor_from_array(data: np.ndarray, torch_dtype: torch.dtype) -> torch.Tensor:
    """A tensor of ``torch_dtype`` holding a stored array (copied unless it is already writable and C-ordered)."""
    if not (data.flags.writeable and data.flags.c_contiguous):
        data = np.array(data, order="C")
    tensor = torch.from_numpy(data)
    return tensor if tensor.dtype == torch_dtype else tensor.to(torch_dtype)


def remove_path(path: Path) -> None:
    """Delete one file or directory tree that a store owns (a link is unlinked, never followed)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
