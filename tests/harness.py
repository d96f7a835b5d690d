"""The comparison harness of the tests: thin wrappers over the one tolerance table of ``glsmamba.verify``.

The table (:data:`FWD`, :data:`GRAD_FACTOR`, :func:`tol`), the error statistics and the pass criterion live in
``glsmamba/verify/tolerances.py``, shared with ``glsmamba verify``; they are imported here, never copied. For each
compared tensor the failure message gives the max-abs error, the relative RMS error and the first mismatching index.
"""

from __future__ import annotations

import math

import torch

from glsmamba.verify.tolerances import FWD, GRAD_FACTOR, Tol, compare, error_stats, tol

__all__ = ["EXP2_MAX_ULP", "FWD", "GRAD_FACTOR", "Tol", "assert_close", "assert_exp2", "assert_same_special_values",
           "error_stats", "tol"]


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


def assert_same_special_values(name: str, ref: torch.Tensor, out: torch.Tensor, dtype: torch.dtype | None = None,
                               kind: str = "fwd", exact: bool = True) -> None:
    """Where NaN and inf reach: ``out`` is NaN / +inf / -inf exactly where ``ref`` is (``exact``), or at least
    non-finite exactly where ``ref`` is (``exact=False``: the kind of non-finite value may differ where two
    implementations multiply the same factors in another order); the finite entries agree as :func:`assert_close`."""
    ref, out = ref.detach().cpu(), out.detach().cpu()
    if ref.shape != out.shape:
        raise AssertionError(f"{name}: shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}")
    tests = {"non-finite": lambda t: ~torch.isfinite(t)}
    if exact:
        tests = {"NaN": torch.isnan, "+inf": torch.isposinf, "-inf": torch.isneginf}
    for what, f in tests.items():
        a, b = f(ref), f(out)
        if not torch.equal(a, b):
            idx = (a != b).nonzero()[0].tolist()
            raise AssertionError(f"{name}: {what} at {int(b.sum())} entries, reference at {int(a.sum())}; first "
                                 f"difference at {idx}: out={out[tuple(idx)].item()} ref={ref[tuple(idx)].item()}")
    finite = torch.isfinite(ref)
    assert_close(name, ref[finite], out[finite], dtype or out.dtype, kind)


# Streaming inference with the encoder-feature cache vs batched clips (the same crops, the encoder run per frame
# instead of per clip: only the batch composition of the encoder's convolutions differs), max abs difference of the
# heatmaps and of the decoded keypoints (image pixels): the acceptance bound of issue 15.
STREAMING_ATOL = 1e-5

# The reference scan's polynomial exp2 (reference/_scan_seq.py: exp2) against the exact 2^x, in fp32 ulps of the
# exact value over the normal range (torch.exp2, Sleef's, is within 1 ulp; the degree-6 polynomial measured 1.24).
EXP2_MAX_ULP = 1.5


def assert_exp2(name: str, x: torch.Tensor, got: torch.Tensor) -> None:
    """``got`` as fp32 ``2^x``: within :data:`EXP2_MAX_ULP` of the exact value over the normal range, within one
    step (2^-149) below it, exact where the exact value is a power of two or past the range (integers x: 2^x, 0,
    inf), NaN exactly where x is NaN."""
    exact = torch.exp2(x.double())
    if not torch.equal(torch.isnan(got), torch.isnan(x)):
        raise AssertionError(f"{name}: NaN at {int(torch.isnan(got).sum())} entries, x at {int(torch.isnan(x).sum())}")
    normal = (exact >= 2.0**-126) & (exact < 2.0**128)
    ref = exact.float()  # the exact value rounded; one ulp of it is the step to the next float
    ulp = (torch.nextafter(ref, torch.tensor(math.inf)) - ref).double()
    err = ((got.double() - exact).abs() / ulp)[normal]
    if err.numel() and err.max() > EXP2_MAX_ULP:
        raise AssertionError(f"{name}: {err.max().item():.3f} ulp > {EXP2_MAX_ULP} at x = {x[normal][err.argmax()]}")
    below = exact < 2.0**-126
    if below.any() and (got.double() - exact)[below].abs().max() > 2.0**-149:
        raise AssertionError(f"{name}: more than 2^-149 off below the normal range")
    ints = x == x.round()
    if not torch.equal(got[ints], ref[ints]):
        raise AssertionError(f"{name}: not exact at integer x (powers of two, 0 and inf past the range)")
