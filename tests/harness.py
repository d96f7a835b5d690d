"""The comparison harness of the tests: thin wrappers over the one tolerance table of ``glsmamba.verify``.

The table (:data:`FWD`, :data:`GRAD_FACTOR`, :func:`tol`), the error statistics and the pass criterion live in
``glsmamba/verify/tolerances.py``, shared with ``glsmamba verify``; they are imported here, never copied. For each
compared tensor the failure message gives the max-abs error, the relative RMS error and the first mismatching index.
"""

from __future__ import annotations

import torch

from glsmamba.verify.tolerances import FWD, GRAD_FACTOR, Tol, compare, error_stats, tol

__all__ = ["FWD", "GRAD_FACTOR", "Tol", "assert_close", "error_stats", "tol"]


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, dtype: torch.dtype | None = None,
                 kind: str = "fwd") -> None:
    """Assert ``|out - ref| <= atol + rtol * |ref|`` elementwise with the table's tolerance for ``dtype``.

    ``dtype`` is the precision the computation ran in (defaults to ``out.dtype``); ``ref`` may be of higher
    precision. Shapes must match exactly.
    """
    dtype = dtype or out.dtype
    result = compare(ref, out, dtype, kind)
    if not result.passed:
        raise AssertionError(result.message(name, kind, dtype))
