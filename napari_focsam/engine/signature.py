"""Signatures that name an image embedding: what pixels, and which model computed it.

An embedding may be reused only for exactly the same pixel data and exactly the same model (weights, architecture and
preprocessing). :func:`data_signature` names the pixels; a predictor's ``fingerprint`` names the model;
:func:`embedding_key` combines both into the key of :class:`~napari_focsam.engine.cache.EmbeddingCache`.

Both are BLAKE2b digests (16 bytes, 32 lowercase hex characters), which are safe to use as file and zarr node names.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["data_signature", "embedding_key"]

#: digest size in bytes of every signature here (32 hex characters)
_DIGEST_SIZE = 16
#: a non-contiguous array is hashed in slabs along its first axis, each copied to at most about this many bytes
_SLAB_BYTES = 16 << 20


def _framed(h: hashlib.blake2b, payload: bytes) -> None:
    """Feed ``payload`` preceded by its length, so that no two different sequences of parts hash alike."""
    h.update(len(payload).to_bytes(8, "little"))
    h.update(payload)


def data_signature(array: np.ndarray) -> str:
    """A hex digest of an array's dtype, shape and values in C order.

    Equal arrays give equal signatures whatever their memory layout (a non-contiguous view, a Fortran-ordered copy
    or a big-endian copy of the same values hash alike); one changed element, another dtype or another shape of the
    same bytes gives another signature. Non-contiguous arrays are hashed slab by slab without copying them whole.
    A 1024 x 1024 x 3 uint8 image takes a few milliseconds.

    Anything that is not an :class:`numpy.ndarray` is converted with :func:`numpy.asarray` first (which reads a lazy
    array completely). Object arrays are refused: their bytes are pointers, not values.
    """
    arr = np.asarray(array)
    if arr.dtype.hasobject:
        raise TypeError(f"cannot sign an array of dtype {arr.dtype}: it holds Python objects, not values")
    little = arr.dtype.newbyteorder("<")
    if little != arr.dtype:  # the same values in the other byte order sign alike
        arr = arr.astype(little)

    h = hashlib.blake2b(digest_size=_DIGEST_SIZE, person=b"focsam-data-v1")
    header = repr((np.lib.format.dtype_to_descr(arr.dtype), tuple(int(n) for n in arr.shape)))
    _framed(h, header.encode("utf-8"))
    if arr.flags.c_contiguous:
        h.update(arr.reshape(-1).view(np.uint8).data)
    else:  # ndim >= 1 here: a 0-d array is always contiguous
        row_bytes = max(1, arr[0:1].nbytes) if arr.shape[0] else 1
        step = max(1, _SLAB_BYTES // row_bytes)
        for start in range(0, arr.shape[0], step):
            h.update(np.ascontiguousarray(arr[start : start + step]).reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def embedding_key(data_sig: str, model_fingerprint: str) -> str:
    """The cache key of the embedding of the data signed ``data_sig`` computed by the model ``model_fingerprint``.

    The fingerprint already names the model id, the weights hash and the preprocessing, so two models, two weight
    files or two preprocessings of the same pixels never share a key.
    """
    if not isinstance(data_sig, str) or not data_sig:
        raise TypeError(f"data_sig must be a non-empty str, got {data_sig!r}")
    if not isinstance(model_fingerprint, str) or not model_fingerprint:
        raise TypeError(f"model_fingerprint must be a non-empty str, got {model_fingerprint!r}")
    h = hashlib.blake2b(digest_size=_DIGEST_SIZE, person=b"focsam-key-v1")
    _framed(h, data_sig.encode("utf-8"))
    _framed(h, model_fingerprint.encode("utf-8"))
    return h.hexdigest()
