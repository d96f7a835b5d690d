"""Triton device functions shared by the scan kernels (``selective_scan.py``, ``ordered_scan.py``)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def affine_combine(a1, b1, a2, b2):
    """Compose (a1, b1) then (a2, b2) for ``tl.associative_scan``: h -> a2 (a1 h + b1) + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def softplus20(x):
    """softplus with mamba_ssm's threshold: x above 20 passes through (no libdevice log1p: interpreter-safe)."""
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)
