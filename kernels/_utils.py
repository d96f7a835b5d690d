"""Small helpers shared by the Triton launchers (no kernels here)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def interpreting() -> bool:
    """True when Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def next_pow2(n: int) -> int:
    """Smallest power of two >= ``max(n, 1)``."""
    return 1 << max(int(n) - 1, 0).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@contextlib.contextmanager
def device_guard(t: torch.Tensor) -> Iterator[None]:
    """Launch on ``t``'s CUDA device (a no-op for CPU tensors under the interpreter)."""
    if t.is_cuda:
        with torch.cuda.device(t.device):
            yield
    else:
        yield


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype for ``dtype`` inputs: float64 stays float64, everything else accumulates in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
