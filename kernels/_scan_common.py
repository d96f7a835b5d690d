"""Triton device functions shared by the scan kernels (``selective_scan.py``, ``ordered_scan.py``)."""

from __future__ import annotations

import triton
import triton.language as tl

from glsmamba.kernels._utils import record_build

record_build()  # Triton decorates the kernels below in the mode TRITON_INTERPRET names now

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
"""log2(e): the kernels scale A by it once and use ``exp2`` (a constexpr global, readable inside ``@triton.jit``)."""


@triton.jit
def affine_combine(a1, b1, a2, b2):
    """Compose (a1, b1) then (a2, b2) for ``tl.associative_scan``: h -> a2 (a1 h + b1) + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def softplus20(x):
    """softplus with mamba_ssm's threshold: x above 20 passes through (no libdevice log1p: interpreter-safe)."""
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def dt_from_raw(raw, mask, bias, SOFTPLUS: tl.constexpr):
    """(dt, pre) for a ``[steps, channels]`` tile of raw delta: pre = delta + bias (fp32), dt = softplus20(pre)
    or pre, and dt = 0 where masked (padded steps then decay by 1 and add nothing)."""
    pre = raw.to(tl.float32) + bias[None, :]
    if SOFTPLUS:
        dt = softplus20(pre)
    else:
        dt = pre
    return tl.where(mask, dt, 0.0), pre
