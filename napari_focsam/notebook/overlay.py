"""What travels to the browser: the shown slice as a PNG, label patches as run-length codes of their bounding box.

A click changes the labels only around its object, so only the bounding box of the changed pixels is sent: its
label ids, row by row, as runs ``(value, length)`` in two little-endian uint32 buffers. The browser colours the ids
itself (the palette lives in the widget's JavaScript), so a click on a 4k image costs a few kilobytes. Everything
here is plain numpy (and Pillow for the PNG) and runs on whichever thread calls it.
"""

from __future__ import annotations

import io

import numpy as np

Box = tuple[int, int, int, int]  #: (y0, x0, y1, x1), y1 and x1 exclusive


def changed_box(before: np.ndarray, after: np.ndarray) -> Box | None:
    """The bounding box of the pixels that differ between two equally shaped 2D arrays (None: none differ)."""
    diff = before != after
    rows = np.flatnonzero(diff.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(diff[rows[0]: rows[-1] + 1].any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def rle_encode(patch: np.ndarray) -> tuple[bytes, bytes]:
    """Run-length code of a 2D label patch in row-major order: (values, lengths) as little-endian uint32 bytes."""
    flat = np.ascontiguousarray(patch).reshape(-1)
    if flat.size == 0:
        return b"", b""
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    return flat[starts].astype("<u4").tobytes(), lengths.astype("<u4").tobytes()


def rle_decode(values: bytes, lengths: bytes, shape: tuple[int, int]) -> np.ndarray:
    """The inverse of :func:`rle_encode` (the browser does the same in JavaScript)."""
    ids = np.frombuffer(values, "<u4")
    runs = np.frombuffer(lengths, "<u4")
    return np.repeat(ids, runs).astype(np.int64).reshape(shape)


def png_bytes(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 image as PNG bytes (fast compression: it is sent once per slice or contrast change)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def merge_object(view: np.ndarray, mask: np.ndarray, object_id: int, base: np.ndarray, *,
                 overwrite: bool = False) -> np.ndarray:
    """The slice with ``mask`` shown as ``object_id``.

    The object takes the pixels of ``mask`` that are background or its own now (any pixel with ``overwrite``);
    pixels it leaves go back to ``base``, the slice before the object was touched (background where the object
    already was). Other objects are judged by the slice as it is *now*, not by ``base``: a mask of another object
    written since ``base`` was taken (its job finished later) is kept.
    """
    own = view == object_id
    restore = np.where(base == object_id, 0, base).astype(view.dtype, copy=False)
    allowed = mask if overwrite else mask & ((view == 0) | own)
    return np.where(allowed, object_id, np.where(own, restore, view)).astype(view.dtype, copy=False)
