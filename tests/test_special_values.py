"""Where NaN and inf reach, and large time steps: every fast path and kernel against its oracle.

* NaN / inf locality (docs/design.md 3.5): a NaN or inf in one input token reaches exactly the outputs and
  gradients it reaches in the oracle -- from its position on in the scans (never back to the start of a chunk or
  block), the same (token, group) pairs in the deformable aggregation. Positions at the 32-token chunks of the
  closed form and the 16-token blocks of the sequential scan, and inside them.
* Large deltas: ``delta + delta_bias`` between 10 and 20 (where softplus still differs from the identity in
  float32) and above 20 (softplus's threshold: the identity, no exp overflow up to 100), on every path of every
  backend: the reference autograd, no-grad and compile paths, Triton under the interpreter, both layouts, the
  ordered scan. In float64 with decays that keep memory (the closed form runs), and in float32 with decays that
  underflow (every output a sum of positive terms, compared at a few ulp: see ``tests/harness.py``).
"""

from __future__ import annotations

import math

import pytest
import torch

import glsmamba.reference._scan_seq as scan_seq
import glsmamba.reference.selective_scan as ref_ss
from glsmamba.model.backend import get_impl
from glsmamba.reference.deformable import (
    SPATIAL_TAPS,
    TEMPORAL_TAPS,
    deformable_aggregate,
    deformable_aggregate_gathers,
)
from glsmamba.reference.ordered_scan import ordered_selective_scan, ordered_selective_scan_unfused
from glsmamba.reference.selective_scan import selective_scan_recurrent
from glsmamba.reference.space_time import STS6D, scan_orders, window_orders
from tests import test_deformable, test_ordered_scan
from tests.harness import assert_close, assert_same_special_values
from tests.test_selective_scan import NAMES, make_inputs, oracle

SPECIAL = (math.nan, math.inf, -math.inf)


@pytest.fixture(params=["blocked", "per-token", "fused", "cpu-kernel"])
def stepper_mode(request, monkeypatch):
    """Every way the sequential scan steps its forward (``_scan_seq.Stepper``), whatever the size. Per token, the
    steps also go 5 tokens at a time (as with large states): not aligned with the backward's 16-token checkpoints.
    "fused": the fused steps on the channel-major state, run eagerly here (the same function the large states
    compile; tests/test_reference_fast_paths.py holds the compiled one to it). "cpu-kernel": the ordered scan's
    no-grad steps with dt shared by the directions through the C++ kernel (``_cpu_kernels``; the other modes switch it
    off), the rest blocked."""
    kernel = request.param == "cpu-kernel"
    if kernel:
        from glsmamba.reference import _cpu_kernels

        reason = _cpu_kernels.unavailable_reason()
        if reason is not None:
            pytest.skip(reason)
    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "1" if kernel else "0")
    monkeypatch.setenv("GLSMAMBA_SCAN_COMPILE", "auto")
    monkeypatch.setattr(scan_seq, "_FUSED_ELEMS", 1 if request.param == "fused" else 1 << 62)
    monkeypatch.setattr(scan_seq, "run_compiled", lambda fn, *args: fn(*args))
    per_token = request.param == "per-token"
    monkeypatch.setattr(scan_seq, "_STEP_ELEMS", 1 if per_token else 1 << 62)
    if per_token:
        monkeypatch.setattr(scan_seq, "block_size", lambda rows, dstate, dim: 5)
    return request.param


def _run_scan(fn, inputs, channel_last, grads=True, softplus=True, seed=1):
    """(out, {name: grad}) of a selective scan (fn None: the recurrent oracle in float32)."""
    leaves = {k: None if v is None else v.detach().clone().requires_grad_(grads) for k, v in inputs.items()}
    out = oracle(leaves, channel_last, softplus) if fn is None else fn(**leaves, delta_softplus=softplus)
    if not grads:
        return out, {}
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    names = [k for k in NAMES if leaves[k] is not None]
    return out, dict(zip(names, torch.autograd.grad((out * dy).sum(), [leaves[k] for k in names]), strict=True))


def _check_scan_paths(inputs, channel_last, paths, backend="reference", exact=True):
    fn = get_impl("selective_scan_channel_last" if channel_last else "selective_scan", backend)
    want, want_g = _run_scan(None, inputs, channel_last)
    for path in paths:
        ref_ss._TRACED_PATH[0] = path == "compile-path"
        try:
            with torch.set_grad_enabled(path != "no-grad"):
                out, grads = _run_scan(fn, inputs, channel_last, grads=path != "no-grad")
        finally:
            ref_ss._TRACED_PATH[0] = False
        assert_same_special_values(f"{backend} {path} out", want, out, torch.float32, exact=exact)
        for k, g in grads.items():
            assert_same_special_values(f"{backend} {path} d{k}", want_g[k], g, torch.float32, "grad", exact=exact)


# ------------------------------------------------------------------------------------------------ NaN / inf reach

@pytest.mark.parametrize("name", ["u", "delta", "B", "C"])
@pytest.mark.parametrize("channel_last", [False, True], ids=["channel-first", "channel-last"])
def test_reference_scan_nan_inf_locality(name, channel_last, stepper_mode):
    """NaN, +inf and -inf at chunk/block boundaries and inside, on the autograd, no-grad and compile paths."""
    for pos in (0, 15, 16, 17, 31, 32, 63, 64, 69):
        for value in SPECIAL:
            x = make_inputs(batch=2, length=70, dim=4, dstate=3, channel_last=channel_last)
            if name in ("u", "delta"):
                x[name][(0, pos, 1) if channel_last else (0, 1, pos)] = value
            else:
                x[name][(0, pos, 2) if channel_last else (0, 2, pos)] = value
            _check_scan_paths(x, channel_last, ("autograd", "no-grad", "compile-path"))


@pytest.mark.parametrize("channel_last", [False, True], ids=["channel-first", "channel-last"])
def test_triton_scan_nan_locality(channel_last):
    """A NaN in u at a chunk start and in B inside a chunk: the Triton kernels reach what the oracle reaches."""
    x = make_inputs(batch=1, length=70, dim=3, dstate=2, channel_last=channel_last)
    x["u"][(0, 32, 1) if channel_last else (0, 1, 32)] = math.nan
    x["B"][(0, 45, 0) if channel_last else (0, 0, 45)] = math.nan
    _check_scan_paths(x, channel_last, ("autograd",), backend="triton")


@pytest.mark.parametrize("nan_before", [False, True], ids=["alone", "after-a-nan"])
@pytest.mark.parametrize("pos", [0, 4, 31, 39])
def test_triton_scan_inf_delta_gradient_locality(pos, nan_before):
    """delta = +inf at token p: a_p = 0 and h_p = inf, so the backward's a_p h_{p-1} must be the oracle's product
    (0), not h_p - dt_p u_p B_p (inf - inf); at a tile's first step, inside one and at the sequence's end. After a
    NaN in u two steps earlier h_{p-1} is NaN, and so is the product."""
    x = make_inputs(batch=1, length=40, dim=3, dstate=2)
    x["delta"][0, 1, pos] = math.inf
    if nan_before and pos >= 2:
        x["u"][0, 1, pos - 2] = math.nan
    _check_scan_paths(x, False, ("autograd",), backend="triton")


def _ordered_case(kind):
    shape = (2, 6, 5)
    if kind == "sts6d":
        return shape, scan_orders(shape, STS6D), None, (0, 1, 2, 0, 1, 2)
    orders, reset = window_orders(shape, (4, 3))  # border windows of 2 and 3 rows: segments of three lengths
    return shape, orders, reset, (0, 0)


def _run_ordered(fn, base, shared, orders, reset, groups, grads=True):
    """delta, B, C passed as the model passes them: one natural-order tensor expanded over the directions."""
    leaves = {k: v.detach().clone().requires_grad_(grads) for k, v in base.items()}
    K = orders.shape[0]
    args = {k: (v.expand(K, v.shape[1]) if v.dim() == 2 else v.expand(v.shape[0], K, *v.shape[2:])) if k in shared
            else v for k, v in leaves.items()}  # delta_bias (1, C) -> (K, C)
    out = fn(**args, orders=orders, groups=groups, reset=reset)
    if not grads:
        return out, {}
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    return out, dict(zip(leaves, torch.autograd.grad((out * dy).sum(), list(leaves.values())), strict=True))


@pytest.mark.parametrize("kind", ["sts6d", "windows", "sts6d-shared-bias"])
@pytest.mark.parametrize("name", ["x", "delta", "B", "C"])
def test_ordered_scan_nan_inf_locality(kind, name, stepper_mode):
    """The fast path (no-grad and autograd) against the unfused composition, delta/B/C as zero-stride views
    ("-shared-bias": delta_bias too, one row: the fast path's softplus once for all directions)."""
    shape, orders, reset, groups = _ordered_case(kind.removesuffix("-shared-bias"))
    K = orders.shape[0]
    for pos in (0, 15, 16, 31, 47, 59):
        for value in SPECIAL:
            inp = test_ordered_scan.make_inputs(K, B=2, shape=shape, C=3, N=2)
            shared = ("delta", "B", "C")
            base = {k: v[:, :1].clone() if k in shared else v for k, v in inp.items()}
            if kind.endswith("-shared-bias"):
                shared += ("delta_bias",)
                base["delta_bias"] = inp["delta_bias"][:1].clone()
            base[name][(0, 0, pos, 1) if name in shared else (0, pos, 1)] = value
            want, want_g = _run_ordered(ordered_selective_scan_unfused, base, shared, orders, reset, groups)
            out, grads = _run_ordered(ordered_selective_scan, base, shared, orders, reset, groups)
            with torch.no_grad():
                out_ng, _ = _run_ordered(ordered_selective_scan, base, shared, orders, reset, groups, grads=False)
            assert_same_special_values("out", want, out, torch.float32)
            assert_same_special_values("out (no grad)", want, out_ng, torch.float32)
            for k, g in grads.items():
                assert_same_special_values(f"d{k}", want_g[k], g, torch.float32, "grad")


@pytest.mark.parametrize("taps", [SPATIAL_TAPS, TEMPORAL_TAPS], ids=["spatial", "temporal"])
@pytest.mark.parametrize("integer_offsets", [False, True], ids=["fractional", "integer"])
def test_deformable_nan_inf_reach(taps, integer_offsets):
    """NaN/inf in x (corner, border, inside), offsets and mask: the fast path against the explicit gathers. The kind
    of non-finite value is compared exactly except for inf in the mask or the tap weights, which the two multiply
    in another order (the set of non-finite entries is still compared)."""
    shape = (3, 4, 3)
    where = {"x": [(0, 0, 1), (0, 5, 2), (1, 35, 0)], "offsets": [(0, 7, 0, 1, 0), (1, 3, 1, 2, 1)],
             "mask": [(0, 4, 1, 0)], "weight": [(1, 3)]}
    for name, places in where.items():
        for at in places:
            for value in SPECIAL:
                inp = test_deformable.make_inputs(B=2, shape=shape, C=6, G=2, taps=taps)
                if integer_offsets:
                    inp["offsets"] = inp["offsets"].round()
                inp[name][at] = value
                got, want = ({}, {})
                for res, fn in ((got, deformable_aggregate), (want, deformable_aggregate_gathers)):
                    leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
                    res["out"] = fn(**leaves, taps=taps, shape=shape)
                    dy = torch.randn(res["out"].shape, generator=torch.Generator().manual_seed(3))
                    grads = torch.autograd.grad((res["out"] * dy).sum(), list(leaves.values()))
                    res.update({f"d{k}": g for k, g in zip(leaves, grads, strict=True)})
                exact = not (math.isinf(value) and name in ("mask", "weight"))
                for k in want:
                    assert_same_special_values(f"{name}={value} {k}", want[k], got[k], torch.float32,
                                               "fwd" if k == "out" else "grad", exact=exact)


# ------------------------------------------------------------------------------------------------ large deltas

def _large_delta_inputs(dtype, memoryless, channel_last=False, length=70, dim=4, dstate=3, batch=2):
    """delta + delta_bias spread over (10, 20), some tokens above 20 (up to 100).

    ``memoryless``: A = -50 (every decay underflows to 0 in float32), u, B, C positive, no D or z: each output and
    gradient is a sum of positive terms. Otherwise |A| <= 0.04: the decays keep memory and the 32-token closed form
    fits (|A| * (17 tokens, at most 3 of them above 20) < 80), so the compile path runs it rather than its
    sequential fallback."""
    x = make_inputs(batch=batch, length=length, dim=dim, dstate=dstate, dtype=torch.float64,
                    channel_last=channel_last, has_D=not memoryless, has_z=not memoryless)
    g = torch.Generator().manual_seed(5)
    if memoryless:
        lo, hi = 10.0, 10.3
        x["A"] = torch.full_like(x["A"], -50.0)
        for k in ("u", "B", "C"):
            x[k] = torch.rand(x[k].shape, generator=g, dtype=torch.float64) + 0.5
    else:
        lo, hi = 10.2, 19.8
        x["A"] = -(torch.rand(x["A"].shape, generator=g, dtype=torch.float64) * 0.035 + 0.005)
    s = torch.rand(x["delta"].shape, generator=g, dtype=torch.float64) * (hi - lo) + lo
    big = torch.tensor([20.5, 25.0, 60.0, 100.0], dtype=torch.float64)
    flat = s.view(-1)
    flat[::7] = big[torch.arange(flat[::7].numel()) % 4]
    bias = x["delta_bias"]
    x["delta"] = s - (bias[None, None, :] if channel_last else bias[None, :, None])
    return {k: None if v is None else v.to(dtype) for k, v in x.items()}


@pytest.mark.parametrize("channel_last", [False, True], ids=["channel-first", "channel-last"])
def test_reference_large_deltas_float64(channel_last, monkeypatch, stepper_mode):
    """float64 (tolerance 1e-9): a softplus threshold of 10 would be off by e^-10 ~ 4.5e-5 in dt."""
    def no_fallback(*args):
        raise AssertionError("the compile path fell back to the sequential scan: the closed form did not run")

    fn = get_impl("selective_scan_channel_last" if channel_last else "selective_scan", "reference")
    for memoryless in (False, True):
        x = _large_delta_inputs(torch.float64, memoryless, channel_last)
        tm = (lambda t: t.transpose(1, 2)) if channel_last else (lambda t: t)
        ox = {k: None if v is None else v.clone().requires_grad_() for k, v in x.items()}
        if channel_last:
            bc = (lambda t: t.transpose(1, 2)) if x["B"].dim() == 3 else (lambda t: t.permute(0, 2, 3, 1))
            ox_cf = {**ox, "u": tm(ox["u"]), "delta": tm(ox["delta"]), "B": bc(ox["B"]), "C": bc(ox["C"]),
                     "z": None if ox["z"] is None else tm(ox["z"])}
        else:
            ox_cf = ox
        want = tm(selective_scan_recurrent(**ox_cf, delta_softplus=True))
        names = [k for k in NAMES if ox[k] is not None]
        dy = torch.rand(want.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.5
        want_g = torch.autograd.grad((want * dy).sum(), [ox[k] for k in names])
        for path in ("autograd", "no-grad", "compile-path"):
            monkeypatch.setattr(ref_ss, "_TRACED_PATH", [path == "compile-path"])
            if not memoryless:
                monkeypatch.setattr(ref_ss, "_scan_fallback_eager", no_fallback)
            leaves = {k: None if v is None else v.clone().requires_grad_(path != "no-grad") for k, v in x.items()}
            with torch.set_grad_enabled(path != "no-grad"):
                out = fn(**leaves, delta_softplus=True)
            monkeypatch.undo()
            assert_close(f"{path} out", want, out, torch.float64)
            if path != "no-grad":
                got_g = torch.autograd.grad((out * dy).sum(), [leaves[k] for k in names])
                for k, w, g in zip(names, want_g, got_g, strict=True):
                    assert_close(f"{path} d{k}", w, g, torch.float64, "grad")


def _float64_oracle_and_grads(x, channel_last, dy):
    x64 = {k: None if v is None else v.double().requires_grad_() for k, v in x.items()}
    want = oracle(x64, channel_last, True)
    names = [k for k in NAMES if x64[k] is not None]
    return want, dict(zip(names, torch.autograd.grad((want * dy.double()).sum(), [x64[k] for k in names]),
                          strict=True))


@pytest.mark.parametrize("channel_last", [False, True], ids=["channel-first", "channel-last"])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_large_deltas_float32_every_path(backend, channel_last, monkeypatch):
    """float32, decays underflowing: outputs and gradients within a few ulp of the float64 oracle on every path."""
    small = backend == "triton"  # the interpreter: few programs, short L
    x = _large_delta_inputs(torch.float32, True, channel_last, length=40 if small else 70, dim=3 if small else 4,
                            dstate=2 if small else 3, batch=1 if small else 2)
    fn = get_impl("selective_scan_channel_last" if channel_last else "selective_scan", backend)
    dy = torch.rand(x["u"].shape, generator=torch.Generator().manual_seed(2)) + 0.5
    want, want_g = _float64_oracle_and_grads(x, channel_last, dy)
    paths = ("autograd",) if small else ("autograd", "no-grad", "compile-path")
    for path in paths:
        monkeypatch.setattr(ref_ss, "_TRACED_PATH", [path == "compile-path"])
        leaves = {k: None if v is None else v.clone().requires_grad_(path != "no-grad") for k, v in x.items()}
        with torch.set_grad_enabled(path != "no-grad"):
            out = fn(**leaves, delta_softplus=True)
        monkeypatch.undo()
        assert_close(f"{backend} {path} out", want, out, torch.float32, "positive-sums")
        if path != "no-grad":
            got = torch.autograd.grad((out * dy).sum(), [leaves[k] for k in want_g])
            for (k, w), g in zip(want_g.items(), got, strict=True):
                assert_close(f"{backend} {path} d{k}", w, g, torch.float32, "positive-sums")


def _ordered_large_delta_inputs(K, shape, dtype, memoryless):
    g = torch.Generator().manual_seed(7)
    L = shape[0] * shape[1] * shape[2]
    Bsz, C, N = 1, 3, 2
    lo, hi = (10.0, 10.3) if memoryless else (10.2, 19.8)
    s = torch.rand(Bsz, 1, L, C, generator=g, dtype=torch.float64) * (hi - lo) + lo
    s.view(-1)[::5] = 25.0
    s.view(-1)[3::11] = 100.0
    bias = torch.randn(K, C, generator=g, dtype=torch.float64) * 0.1
    pos = (lambda *sh: torch.rand(*sh, generator=g, dtype=torch.float64) + 0.5)
    inp = {
        "x": pos(Bsz, L, C), "delta": (s - bias[None, :, None, :]),  # (Bsz, K, L, C): bias per direction
        "A": torch.full((K, C, N), -50.0, dtype=torch.float64) if memoryless
        else -(torch.rand(K, C, N, generator=g, dtype=torch.float64) * 0.035 + 0.005),
        "B": pos(Bsz, 1, L, N).expand(Bsz, K, L, N), "C": pos(Bsz, 1, L, N).expand(Bsz, K, L, N),
        "D": None if memoryless else torch.randn(K, C, generator=g, dtype=torch.float64),
        "delta_bias": bias,
    }
    return {k: None if v is None else v.to(dtype) for k, v in inp.items()}


def test_ordered_scan_large_deltas(stepper_mode):
    """The fast ordered scan (autograd and no-grad), its unfused oracle and the Triton kernel: float64 against the
    explicit float64 loop with memory; float32 memoryless within a few ulp of it."""
    shape = (2, 3, 4)
    orders, groups = scan_orders(shape, ("unified", "temporal_rev")), (0, 0)
    wo, wr = window_orders(shape, (2, 3))
    for (o, r) in ((orders, None), (wo, wr)):
        for dtype, memoryless in ((torch.float64, False), (torch.float32, True)):
            inp = _ordered_large_delta_inputs(2, shape, dtype, memoryless)
            kind = "fwd" if dtype == torch.float64 else "positive-sums"
            ref_in = {k: None if v is None else v.double() for k, v in inp.items()}
            if ref_in["D"] is None:
                ref_in["D"] = torch.zeros(2, 3, dtype=torch.float64)
            want = test_ordered_scan.oracle(ref_in, o, groups, r)
            impls = {"fast": ordered_selective_scan, "unfused": ordered_selective_scan_unfused}
            if dtype == torch.float32:
                impls["triton"] = get_impl("ordered_selective_scan", "triton")
            for label, fn in impls.items():
                for grad in ((False, True) if label == "fast" else (True,)):
                    args = {k: v if v is None or not grad else v.detach().requires_grad_() for k, v in inp.items()}
                    out = fn(**args, orders=o, groups=groups, reset=r)
                    assert out.requires_grad == grad
                    assert_close(f"{label} grad={grad} reset={r is not None}", want, out, dtype, kind)
