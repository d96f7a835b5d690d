"""Small helpers shared by the Triton launchers, and the one answer to "can Triton run here, and if not, why".

This module imports only ``os`` and ``torch`` (Triton lazily), so the backend registry (``glsmamba.model.backend``)
can ask it without importing any kernel.

The interpreter flag has one source: the ``TRITON_INTERPRET`` environment variable. Triton reads it when it
decorates a kernel, so the kernel modules record the value they were built with (:func:`record_build`, called at
their import); from then on a different live value makes the Triton backend unavailable with a reason, instead of
launching kernels built for the other mode.
"""

from __future__ import annotations

import contextlib
import os

import torch

LOG2E = 1.4426950408889634

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run here (the message says why)."""


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set (read live: it is what the next kernel import will be built with)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_built: list[bool] = []  # how the kernel modules were decorated: [True] for the interpreter; empty before any import


def record_build() -> None:
    """Called by every kernel module at import, before its ``@triton.jit``: remember the mode Triton builds them in."""
    if not _built:
        _built.append(interpreter_enabled())


def interpreting() -> bool:
    """True when the kernels run (or, before any kernel module is imported, will run) under the CPU interpreter."""
    return _built[0] if _built else interpreter_enabled()


_triton_import: list[str | None] = []


def triton_import_error() -> str | None:
    """``None`` if Triton imports, else the reason (computed once)."""
    if not _triton_import:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _triton_import.append(None)
        except Exception as e:  # pragma: no cover - depends on the install
            _triton_import.append(f"triton is not importable ({type(e).__name__}: {e})")
    return _triton_import[0]


def triton_unavailable_reason(device: torch.device | None = None) -> str | None:
    """Why the Triton backend cannot run on ``device`` (``None`` = it can).

    ``device=None`` asks about the machine: any CUDA device, or the interpreter.
    """
    err = triton_import_error()
    if err is not None:
        return err
    live = interpreter_enabled()
    if _built and _built[0] != live:
        built = "for the interpreter (TRITON_INTERPRET=1)" if _built[0] else "for CUDA (TRITON_INTERPRET unset)"
        return (f"the kernels were built {built} when first imported, and TRITON_INTERPRET is now "
                f"{os.environ.get('TRITON_INTERPRET')!r}: set the variable before the first import of triton")
    if device is None:
        if torch.cuda.is_available() or live:
            return None
        return "no CUDA device and the Triton interpreter is off (set TRITON_INTERPRET=1 before importing triton)"
    if device.type == "cuda":
        if live:
            return "TRITON_INTERPRET=1 is set: the interpreter runs kernels on CPU tensors only, got CUDA tensors"
        return None
    if device.type == "cpu":
        if live:
            return None
        return "CPU tensors need the Triton interpreter (set TRITON_INTERPRET=1 before importing triton)"
    return f"Triton kernels do not support device type {device.type!r}"


def check_runnable(*tensors: torch.Tensor | None, op: str) -> None:
    """Raise if the compiled/interpreted kernels cannot run on these tensors (never fall back silently)."""
    for t in tensors:
        if t is None:
            continue
        if t.dtype not in TRITON_DTYPES and t.is_floating_point():
            # float64 inputs are for the reference's gradcheck; the kernels compute in float32
            raise TypeError(f"{op}: the triton backend supports float16/bfloat16/float32 inputs, got {t.dtype}")
        reason = triton_unavailable_reason(t.device)
        if reason is not None:
            raise BackendUnavailableError(f"{op}: triton backend cannot run on {t.device}: {reason}")


def device_guard(t: torch.Tensor):
    """Launch on the tensor's own CUDA device (multi-GPU safety); a no-op on CPU."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# Working-memory budget for backward partial sums (dB/dC per channel block) kept between two reductions.
PARTIAL_BYTES = 256 << 20


def units_per_launch(bytes_per_unit: int, units: int, forced: int | None = None) -> int:
    """How many units (tiles, chunks) one launch may cover so that its partial sums stay within PARTIAL_BYTES
    (at least 1, at most ``units``); ``forced`` overrides (tests)."""
    return min(units, forced or max(1, PARTIAL_BYTES // max(1, bytes_per_unit)))
