"""The one tolerance table, the error statistics and the pass criterion (tests, ``glsmamba verify`` and bench).

Every backend is compared with the float32/float64 reference (the recurrent oracle for the scans). A result
passes when ``|out - ref| <= atol + rtol * |ref|`` holds elementwise (a NaN anywhere fails), with ``(atol, rtol)``
from :data:`FWD` for the dtype the computation ran in, times :data:`GRAD_FACTOR` for gradients. The statistics
reported beside it are the max-abs error, the relative RMS error (``rms(out - ref) / rms(ref)``, as fla's
``get_err_ratio``) and the first mismatching index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Tol:
    atol: float
    rtol: float


# Forward tolerances by the dtype of the inputs and outputs. The oracle computes in float32 from the
# *same* low-precision inputs, so low-precision error is the output rounding (bf16 eps = 2**-8, fp16 2**-11)
# plus fp32 accumulation-order differences.
# Starting points: mamba_ssm tests/ops/test_selective_scan.py (fp32 6e-4/2e-3, fp16 3e-3/5e-3, bf16 3e-2/5e-2),
# tightened for fp32 where measured on CPU.
FWD: dict[torch.dtype, Tol] = {
    torch.float64: Tol(atol=1e-10, rtol=1e-9),
    torch.float32: Tol(atol=1e-4, rtol=2e-4),
    torch.float16: Tol(atol=5e-3, rtol=3e-3),
    torch.bfloat16: Tol(atol=5e-2, rtol=3e-2),
}

# Gradients go through one more scan (the adjoint) and reductions over L and channels (dA, dB, dC, dD,
# d(delta_bias) sum over up to B*L*D terms), so they get a fixed multiple of the forward tolerance
# (mamba_ssm uses x2..x10 for its gradient checks).
GRAD_FACTOR = 5.0

KINDS = ("fwd", "grad")


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32`` for ``torch.float32`` or its name ``"float32"``."""
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype or its name, got {dtype!r}")
    return value


def tol(dtype: torch.dtype | str, kind: str = "fwd") -> Tol:
    """The tolerance for a computation in ``dtype``: ``kind="fwd"`` for outputs, ``"grad"`` for gradients."""
    base = FWD[as_dtype(dtype)]
    if kind == "fwd":
        return base
    if kind == "grad":
        return Tol(base.atol * GRAD_FACTOR, base.rtol * GRAD_FACTOR)
    raise ValueError(f"kind must be 'fwd' or 'grad', got {kind!r}")


def error_stats(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    """``max_abs`` = max |out - ref| and ``rel_rms`` = rms(out - ref) / rms(ref) (rms(out - ref) if ref is 0)."""
    ref64, out64 = ref.detach().double().cpu(), out.detach().double().cpu()
    diff = (out64 - ref64).abs()
    rms_ref = ref64.pow(2).mean().sqrt().item() if ref64.numel() else 0.0
    rms_diff = diff.pow(2).mean().sqrt().item() if diff.numel() else 0.0
    return {
        "max_abs": diff.max().item() if diff.numel() else 0.0,
        "rel_rms": rms_diff / rms_ref if rms_ref > 0 else rms_diff,
    }


@dataclass(frozen=True)
class Comparison:
    """The verdict on one tensor against its reference.

    ``note`` says why it failed before any value was compared (a missing tensor, a shape, a non-finite value);
    ``outside`` counts the elements beyond the tolerance, ``first`` is the first of them (or the first non-finite
    value) with ``first_out`` / ``first_ref`` its values.
    """

    passed: bool
    max_abs: float
    rel_rms: float
    tol: Tol
    note: str = ""
    outside: int = 0
    numel: int = 0
    first: tuple[int, ...] | None = None
    first_out: float = math.nan
    first_ref: float = math.nan

    def row(self) -> dict[str, Any]:
        """The fields of a ``glsmamba verify`` row."""
        return {"max_abs": self.max_abs, "rel_err": self.rel_rms, "passed": self.passed, "note": self.note}

    def message(self, name: str, kind: str, dtype: torch.dtype) -> str:
        """The assertion message of a failed comparison."""
        if self.note:
            return f"{name}: {self.note}"
        return (f"{name} ({kind}, {dtype}): max_abs={self.max_abs:.3e} rel_rms={self.rel_rms:.3e} "
                f"atol={self.tol.atol:g} rtol={self.tol.rtol:g}; {self.outside} of {self.numel} elements outside, "
                f"first at {list(self.first or ())}: out={self.first_out:.6g} ref={self.first_ref:.6g}")


def _failed(t: Tol, note: str, first: tuple[int, ...] | None = None) -> Comparison:
    return Comparison(False, math.inf, math.inf, t, note=note, first=first)


def compare(ref: torch.Tensor | None, out: torch.Tensor | None, dtype: torch.dtype | str,
            kind: str = "fwd") -> Comparison:
    """``out`` against ``ref`` with the table's tolerance for a computation in ``dtype``.

    ``ref`` may be of higher precision; shapes must match exactly. ``None`` for both (no gradient on either side)
    passes; ``None`` for one of them fails.
    """
    t = tol(dtype, kind)
    if ref is None or out is None:
        if ref is None and out is None:
            return Comparison(True, 0.0, 0.0, t)
        return _failed(t, "one side returned no tensor (no gradient)")
    if tuple(ref.shape) != tuple(out.shape):
        return _failed(t, f"shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}")
    ref64, out64 = ref.detach().double().cpu(), out.detach().double().cpu()
    if not torch.isfinite(out64).all():
        bad = tuple((~torch.isfinite(out64)).nonzero()[0].tolist())
        return _failed(t, f"non-finite value at index {list(bad)}", bad)
    stats = error_stats(ref64, out64)
    inside = (out64 - ref64).abs() <= t.atol + t.rtol * ref64.abs()  # NaN in ref: outside
    if bool(inside.all()):
        return Comparison(True, stats["max_abs"], stats["rel_rms"], t, numel=inside.numel())
    first = tuple((~inside).nonzero()[0].tolist())
    return Comparison(False, stats["max_abs"], stats["rel_rms"], t, outside=int((~inside).sum()), numel=inside.numel(),
                      first=first, first_out=out64[first].item(), first_ref=ref64[first].item())
