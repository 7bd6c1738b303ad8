"""Read PyTorch checkpoints without ever executing code from the file.

Plain checkpoints (the official SAM files, our own files) load with ``torch.load(..., weights_only=True)``. The
official FocSAM file is an mmengine training checkpoint: besides the weights it pickles logging objects
(``mmengine.logging.HistoryBuffer``, numpy arrays, ...) that ``weights_only`` refuses. For those,
:func:`load_restricted` reads the zip archive with its own unpickler whose ``find_class`` is an allowlist:

* tensors are rebuilt by this module's own functions from the archive's raw storages;
* plain containers (dict, OrderedDict, list, tuple, set) and ``torch.Size``/``torch.device`` are allowed;
* objects from a few known training-bookkeeping namespaces (mmengine, mmcv, mmseg, mmdet, numpy, and torch_em /
  micro_sam for micro-sam's training checkpoints) become *inert placeholders*: their constructor arguments and
  state are dropped and none of their code runs;
* everything else (``builtins.eval``, ``os.system``, ``subprocess.Popen``, ``getattr``, ...) is **refused**.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The file asks the unpickler for something a checkpoint never needs; nothing was executed."""


#: namespaces whose objects appear in training checkpoints as bookkeeping; they are replaced by inert placeholders
PLACEHOLDER_NAMESPACES = ("mmengine", "mmcv", "mmseg", "mmdet", "numpy", "torch_em", "micro_sam")

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "UntypedStorage": torch.uint8,
}


class _Inert:
    """Stands in for a bookkeeping object: accepts any construction, state and items, and keeps none of them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<placeholder for {type(self).__qualname__}>"


def _placeholder(module: str, name: str) -> type:
    return type(f"{module}.{name}", (_Inert,), {"__module__": __name__})


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any, *_: Any) -> torch.Tensor:
    if storage.numel() == 0:
        return storage.new_empty(tuple(size))
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    if isinstance(cls, type) and issubclass(cls, _Inert):
        return cls()
    raise UnsafeCheckpointError(f"refusing to reconstruct {cls!r}")


class _StorageMarker:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("_codecs", "encode"): lambda text, encoding="utf-8": str(text).encode(encoding),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, archive: zipfile.ZipFile | None, prefix: str) -> None:
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageMarker(_STORAGE_DTYPES[name])
        if module.split(".")[0] in PLACEHOLDER_NAMESPACES:
            return _placeholder(module, name)
        raise UnsafeCheckpointError(
            f"the file asks to load {module}.{name}, which a checkpoint never needs; refusing (nothing was executed)"
        )

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise UnsafeCheckpointError(f"unexpected persistent id {pid!r}")
        marker, key = pid[1], str(pid[2])
        dtype = marker.dtype if isinstance(marker, _StorageMarker) else getattr(marker, "dtype", None)
        if not isinstance(dtype, torch.dtype):
            raise UnsafeCheckpointError(f"unexpected storage type {marker!r}")
        if self._archive is None:
            raise pickle.UnpicklingError("tensor storages outside a zip archive are not supported")
        if key not in self._storages:
            raw = bytearray(self._archive.read(f"{self._prefix}data/{key}"))
            self._storages[key] = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self._storages[key]


def load_restricted(path: str | Path) -> Any:
    """Unpickle a PyTorch zip checkpoint (or a bare pickle) with the allowlist above.

    Raises :class:`UnsafeCheckpointError` when the file asks for anything outside it.
    """
    if not zipfile.is_zipfile(path):
        # A bare pickle: PyTorch's legacy format or something hand-made. Unpickle it under the same allowlist so
        # a hostile file is named as such; tensors in the legacy format are not supported.
        # PyTorch's legacy format is several pickles in a row (magic number, protocol, system info, the object):
        # every one is read, so a hostile object after the header is found too.
        with open(path, "rb") as f:
            stream = io.BytesIO(f.read())
        while stream.tell() < len(stream.getbuffer()):
            try:
                _RestrictedUnpickler(stream, None, "").load()
            except UnsafeCheckpointError:
                raise
            except Exception:  # noqa: BLE001 - legacy tensor storages, raw storage bytes: unsupported, not unsafe
                break
        raise pickle.UnpicklingError("not a PyTorch zip checkpoint (legacy or bare pickle files are not supported)")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise pickle.UnpicklingError(f"not a PyTorch zip checkpoint (found {len(pickles)} data.pkl records)")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as f:
            return _RestrictedUnpickler(io.BytesIO(f.read()), archive, prefix).load()
