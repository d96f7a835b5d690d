"""The one comparison harness: every tolerance used by the tests is stated here, once.

Every backend is compared with the float32/float64 reference (the recurrent oracle for the scans).
For each compared tensor the failure message gives the max-abs error, the relative RMS error
(``rms(out - ref) / rms(ref)``, as fla's ``get_err_ratio``) and the first mismatching index.
"""

from __future__ import annotations

from dataclasses import dataclass

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

# Sums of a few positive float32 terms, each a handful of roundings from its inputs (the memoryless scans of the
# large-delta tests: every decay exp(dt * A) underflows to 0, u, B, C and the cotangents are positive, so nothing
# cancels): a few ulp. Tight on purpose: softplus(x) for x in [10, 10.3] differs from x by >= 3.3e-6 relative,
# which is what a softplus threshold of 10 instead of mamba_ssm's 20 would change.
POSITIVE_SUMS_FP32 = Tol(atol=1e-30, rtol=1e-6)


def tol(dtype: torch.dtype, kind: str = "fwd") -> Tol:
    base = FWD[dtype]
    if kind == "fwd":
        return base
    if kind == "grad":
        return Tol(base.atol * GRAD_FACTOR, base.rtol * GRAD_FACTOR)
    if kind == "positive-sums" and dtype == torch.float32:
        return POSITIVE_SUMS_FP32
    raise ValueError(f"kind must be 'fwd', 'grad' or (float32) 'positive-sums', got {kind!r} for {dtype}")


def error_stats(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    ref64, out64 = ref.detach().double().cpu(), out.detach().double().cpu()
    diff = (out64 - ref64).abs()
    rms_ref = ref64.pow(2).mean().sqrt().item() if ref64.numel() else 0.0
    rms_diff = diff.pow(2).mean().sqrt().item() if diff.numel() else 0.0
    return {
        "max_abs": diff.max().item() if diff.numel() else 0.0,
        "rel_rms": rms_diff / rms_ref if rms_ref > 0 else rms_diff,
    }


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, dtype: torch.dtype | None = None,
                 kind: str = "fwd") -> None:
    """Assert ``|out - ref| <= atol + rtol * |ref|`` elementwise with the table's tolerance for ``dtype``.

    ``dtype`` is the precision the computation ran in (defaults to ``out.dtype``); ``ref`` may be of higher
    precision. Shapes must match exactly.
    """
    dtype = dtype or out.dtype
    t = tol(dtype, kind)
    if ref.shape != out.shape:
        raise AssertionError(f"{name}: shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}")
    ref64, out64 = ref.detach().double().cpu(), out.detach().double().cpu()
    if not torch.isfinite(out64).all():
        bad = (~torch.isfinite(out64)).nonzero()[0].tolist()
        raise AssertionError(f"{name}: non-finite value at index {bad}")
    excess = (out64 - ref64).abs() - (t.atol + t.rtol * ref64.abs())
    if (excess > 0).any():
        stats = error_stats(ref64, out64)
        idx = (excess > 0).nonzero()[0].tolist()
        raise AssertionError(
            f"{name} ({kind}, {dtype}): max_abs={stats['max_abs']:.3e} rel_rms={stats['rel_rms']:.3e} "
            f"atol={t.atol:g} rtol={t.rtol:g}; {int((excess > 0).sum())} of {excess.numel()} elements outside, "
            f"first at {idx}: out={out64[tuple(idx)].item():.6g} ref={ref64[tuple(idx)].item():.6g}"
        )


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
