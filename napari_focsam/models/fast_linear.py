"""The linears of the fast paths (SAM's image encoder, SegNext's per-click half) in a compute dtype.

A :class:`PackedLinear` holds one derived copy of an ``nn.Linear``'s weight in the compute dtype, pre-packed for
oneDNN's matmul where :func:`onednn_packing` says so (bfloat16 on a CPU with native bfloat16 instructions), with
GELU optionally fused into the matmul; :func:`parameter_signature` tells when such derived copies must be remade, and
:class:`DerivedWeights` remakes them then.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import nn


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has native bfloat16 matmul instructions (AVX512-BF16 or AMX) that oneDNN uses."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for probe in probes:
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # pragma: no cover - a torch build without the probe
            pass
    return False


def parameter_signature(module: nn.Module) -> tuple:
    """What the derived weights of ``module`` are made from: each parameter's storage, version counter, dtype and
    device. The derived copies are remade when it changes (a parameter replaced, modified in place or moved)."""
    sig = []
    for p in module.parameters():
        try:
            version = p._version
        except RuntimeError:  # an inference tensor has no version counter
            version = -1
        sig.append((p.data_ptr(), version, p.dtype, p.device))
    return tuple(sig)


T = TypeVar("T")


class DerivedWeights(Generic[T]):
    """What ``make`` derives from ``module``'s parameters, made on first use and made again when they change
    (:func:`parameter_signature`); thread-safe: made once per change, under a lock."""

    def __init__(self, module: nn.Module, make: Callable[[], T]) -> None:
        self.module = module
        self._make = make
        self._lock = threading.Lock()
        self._current: tuple[tuple, T] | None = None  # (signature, derived), replaced as one

    def get(self) -> T:
        signature = parameter_signature(self.module)
        current = self._current
        if current is not None and current[0] == signature:
            return current[1]
        with self._lock:
            current = self._current
            if current is None or current[0] != signature:
                current = self._current = (signature, self._make())
            return current[1]


def onednn_packing(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether linears run as pre-packed oneDNN matmuls: bfloat16 on a CPU with native bf16 instructions.

    This ignores ``torch.backends.mkldnn.enabled`` on purpose: with oneDNN switched off a bfloat16 linear falls back
    to a generic kernel about 10x slower than float32. The stack pipeline switches oneDNN off to keep *convolutions*
    independent of the thread count; oneDNN's matmul partitions the output, never the reduction, so its results do
    not depend on the thread count (checked by the tests). float32 stays on torch's own GEMM.
    """
    return (device.type == "cpu" and dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and cpu_has_fast_bf16() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear:
    """One ``nn.Linear`` in the compute dtype: a derived weight copy, pre-packed for oneDNN where that is possible."""

    __slots__ = ("bias", "packed", "weight")

    def __init__(self, linear: nn.Linear, dtype: torch.dtype, pack_rows: int | None) -> None:
        weight = linear.weight.detach().to(dtype)
        self.bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        self.packed = None if pack_rows is None else torch.ops.mkldnn._reorder_linear_weight(weight, pack_rows)
        self.weight = weight if self.packed is None else None  # one derived copy, not two

    def __call__(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
        if self.packed is not None:
            if gelu:
                return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "gelu", [], "none")
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        assert self.weight is not None  # kept when not packed
        y = F.linear(x, self.weight, self.bias)
        return F.gelu(y) if gelu else y
