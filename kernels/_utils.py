"""Small helpers shared by the Triton launchers."""

from __future__ import annotations

import os

import torch

# Read once, at import, like @triton.jit does: the interpreter is chosen when the kernels are decorated.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

LOG2E = 1.4426950408889634

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def check_runnable(*tensors: torch.Tensor | None, op: str) -> None:
    """Raise if the compiled/interpreted kernels cannot run on these tensors (never fall back silently)."""
    from model.backend import BackendUnavailableError, triton_unavailable_reason

    for t in tensors:
        if t is None:
            continue
        if t.dtype not in TRITON_DTYPES and t.is_floating_point():
            # float64 inputs are for the reference's gradcheck; the kernels compute in float32
            raise TypeError(f"{op}: the triton backend supports float16/bfloat16/float32 inputs, got {t.dtype}")
        reason = triton_unavailable_reason(t.device)
        if reason is not None or (INTERPRET and t.device.type != "cpu"):
            raise BackendUnavailableError(
                f"{op}: triton backend cannot run on {t.device}: "
                f"{reason or 'kernels were built for the interpreter (TRITON_INTERPRET=1 at import)'}"
            )
        if not INTERPRET and t.device.type == "cpu":
            raise BackendUnavailableError(
                f"{op}: CPU tensors need the Triton interpreter, but kernels were imported without "
                "TRITON_INTERPRET=1 (set it before the first import of triton)"
            )


def device_guard(t: torch.Tensor):
    """Launch on the tensor's own CUDA device (multi-GPU safety); a no-op on CPU."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    import contextlib

    return contextlib.nullcontext()


def interpreting() -> bool:
    """True when Triton kernels run under the CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return INTERPRET


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# Working-memory budget for backward partial sums (dB/dC per channel block) kept between two reductions.
PARTIAL_BYTES = 256 << 20


def units_per_launch(bytes_per_unit: int, units: int, forced: int | None = None) -> int:
    """How many units (tiles, chunks) one launch may cover so that its partial sums stay within PARTIAL_BYTES
    (at least 1, at most ``units``); ``forced`` overrides (tests)."""
    return min(units, forced or max(1, PARTIAL_BYTES // bytes_per_unit))
