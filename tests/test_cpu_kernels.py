"""The reference's C++ CPU kernels (``reference/_cpu_kernels.py``): the no-grad ordered scan and deformable
aggregation equal to their oracles (values, NaN/inf reach), the scan's decays held to the exact 2^x, the switch,
and a missing or failing build.

NaN / inf reach through the scan kernel is in tests/test_special_values.py (the ``cpu-kernel`` mode of
``stepper_mode``), and the scan fast-path comparisons of tests/test_reference_fast_paths.py run through it in that
mode as well.
"""

from __future__ import annotations

import math

import pytest
import torch

from glsmamba.reference import _cpu_kernels, _scan_seq
from glsmamba.reference.deformable import (
    SPATIAL_TAPS,
    TEMPORAL_TAPS,
    deformable_aggregate,
    deformable_aggregate_gathers,
)
from glsmamba.reference.ordered_scan import ordered_selective_scan, ordered_selective_scan_unfused
from glsmamba.reference.space_time import STS6D, scan_orders, window_orders
from tests import test_deformable, test_ordered_scan
from tests.harness import assert_close, assert_exp2, assert_same_special_values

REASON = _cpu_kernels.unavailable_reason()
needs_kernel = pytest.mark.skipif(REASON is not None, reason=str(REASON))
CENTRE = torch.zeros(1, 3, dtype=torch.long)  # one tap, as the grouped STMM samples


class _Calls:
    """Wraps ``_cpu_kernels.gathered_scan``, counting its calls."""

    def __init__(self, fn):
        self.fn, self.count = fn, 0

    def __call__(self, *args):
        self.count += 1
        return self.fn(*args)


@pytest.fixture
def kernel_calls(monkeypatch):
    calls = _Calls(_cpu_kernels.gathered_scan)
    monkeypatch.setattr(_cpu_kernels, "gathered_scan", calls)
    return calls


def _shared(inp: dict, K: int, per_dir_bc: bool = False) -> dict:
    """delta and delta_bias (and B, C unless ``per_dir_bc``) as zero-stride views over the K directions, the way
    the model passes them with ``ssm_sharing="all"``: dt is then the same for every direction (the kernel's case)."""
    out = dict(inp)
    out["delta"] = inp["delta"][:, :1].expand_as(inp["delta"])
    out["delta_bias"] = inp["delta_bias"][:1].expand_as(inp["delta_bias"])
    if not per_dir_bc:
        for k in ("B", "C"):
            out[k] = inp[k][:, :1].expand_as(inp[k])
    return out


@needs_kernel
@pytest.mark.parametrize("case", ["sts6d", "windows", "per-direction-bc", "no-D", "bf16"])
@pytest.mark.parametrize("dims", [(13, 5), (16, 16), (37, 11), (8, 17)], ids=["C13N5", "C16N16", "C37N11", "C8N17"])
def test_kernel_matches_the_oracle(monkeypatch, kernel_calls, case, dims):
    """Channel counts with a masked last vector (13, 37) or none (8, 16), state counts in one chunk of 8 or with a
    partial last chunk (5, 11, 17), 1-3 batch rows, windowed orders with resets (segments of several lengths, one
    kernel call per length), B and C per direction, no D, bf16 tokens: the kernel's group sums equal the unfused
    oracle's to the fp32 tolerance (bf16: to bf16's), and the kernel ran."""
    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "1")
    C, N = dims
    shape = (2, 3, 5)
    if case == "windows":
        orders, reset = window_orders((2, 7, 5), (3, 2))
        shape, groups = (2, 7, 5), (0, 0)
    else:
        orders, reset, groups = scan_orders(shape, STS6D), None, (0, 1, 2, 0, 1, 2)
    K = orders.shape[0]
    batch = {"sts6d": 1, "windows": 2}.get(case, 3)
    inp = test_ordered_scan.make_inputs(K, B=batch, shape=shape, C=C, N=N, has_D=case != "no-D")
    dtype = torch.bfloat16 if case == "bf16" else torch.float32
    if dtype != torch.float32:
        inp = {k: v if v is None or k in ("A", "D", "delta_bias") else v.to(dtype) for k, v in inp.items()}
    inp = _shared(inp, K, per_dir_bc=case == "per-direction-bc")
    want = ordered_selective_scan_unfused(**inp, orders=orders, groups=groups, reset=reset)
    with torch.no_grad():
        got = ordered_selective_scan(**inp, orders=orders, groups=groups, reset=reset)
    assert kernel_calls.count == (1 if reset is None else len(set(int(n) for n in _segment_lengths(reset))))
    assert got.dtype == dtype
    assert_close("out", want, got, dtype)


def _segment_lengths(reset: torch.Tensor) -> list[int]:
    lengths = []
    for row in reset:
        starts = torch.nonzero(row).flatten().tolist() + [row.numel()]
        lengths += [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)]
    return lengths


@needs_kernel
@pytest.mark.parametrize("N", [1, 9], ids=["one-state", "partial-chunk"])
def test_kernel_decays_are_held_to_the_exact_power_of_two(monkeypatch, N):
    """Two tokens, one direction: the first sets the state to dt u B = 2^-100 2^100 1 = 1 (its own decay, of a
    tiny argument, multiplies the zero state), the second has dt = 1 and B = 0, and C = e_0 reads state 0: its
    output is the decay 2^(A log2 e) times 1, so it shows the kernel's exponential. Over 1,500 channels (the last
    vector masked) the arguments cover the fast branch, the branch for results below 2^-125 (subnormals; a vector
    with one such lane takes it whole), both clamps and NaN: held to the exact 2^x as the PyTorch steps' ``exp2``
    is (``tests.harness.assert_exp2``; the kernel evaluates the same polynomial with fused multiply-adds, so the
    last bit may differ from it). +-inf arguments would need an infinite A, whose decay at the first token is NaN."""
    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "1")
    g = torch.Generator().manual_seed(0)
    arg = torch.cat([torch.linspace(-160.0, 135.0, 1000), -30 * torch.rand(480, generator=g),
                     torch.tensor([-125.4, -125.6, -126.0, -149.0, -150.5, 127.6, 128.0,
                                   math.nan, 0.0, -0.0, 1e-30, -1e30, 1e30, -0.5, 0.5, 3.0,
                                   -7.25, -126.5])])
    D = arg.numel()
    A = torch.zeros(1, D, N)
    A[0, :, 0] = arg / _scan_seq._LOG2E
    A[0, :, 1:] = -1.0  # other states: finite decays, multiplied by C = 0
    x = torch.ones(1, 2, D)
    x[0, 0] = 2.0**100
    delta = torch.ones(1, 1, 2, D)
    delta[0, 0, 0] = 2.0**-100
    B = torch.zeros(1, 1, 2, N)
    B[0, 0, 0] = 1.0
    C = torch.zeros(1, 1, 2, N)
    C[0, 0, 1, 0] = 1.0
    with torch.no_grad():
        out = ordered_selective_scan(x, delta, A, B, C, None, torch.arange(2)[None], (0,), delta_bias=torch.zeros(1, D),
                                     delta_softplus=False)
    arg = A[0, :, 0] * _scan_seq._LOG2E  # the argument as the op computes it
    assert_exp2("kernel decays", arg, out[0, 0, 1])
    want = _scan_seq.exp2(arg)
    assert (want == 0).any() and (want == math.inf).any() and ((want > 0) & (want < 2.0**-126)).any()


@needs_kernel
def test_kernel_result_does_not_depend_on_the_thread_count(monkeypatch):
    """Each thread owns its (batch row, channel vector) pairs and adds the rows in order: 1 and 2 threads give the
    same bits."""
    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "1")
    shape = (2, 4, 5)
    orders = scan_orders(shape, STS6D)
    inp = _shared(test_ordered_scan.make_inputs(6, B=2, shape=shape, C=40, N=16), 6)
    outs = []
    prev = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                outs.append(ordered_selective_scan(**inp, orders=orders, groups=(0, 1, 2, 0, 1, 2)))
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(outs[0], outs[1])


def test_kernel_switch(monkeypatch, kernel_calls):
    """``GLSMAMBA_CPU_KERNEL``: ``0`` never calls the kernel; ``auto`` calls it where it can run and otherwise runs the
    PyTorch steps (same values); ``1`` raises naming why it cannot run; another value is refused, naming the
    variable. Only fp32 computations (float64 inputs keep the PyTorch steps) and only without autograd."""
    shape = (2, 3, 5)
    orders, groups = scan_orders(shape, STS6D), (0, 1, 2, 0, 1, 2)
    inp = _shared(test_ordered_scan.make_inputs(6, B=1, shape=shape, C=6, N=3), 6)
    want = ordered_selective_scan_unfused(**inp, orders=orders, groups=groups)

    def run(**kw):
        with torch.no_grad():
            return ordered_selective_scan(**dict(inp, **kw), orders=orders, groups=groups)

    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "0")
    assert_close("out (0)", want, run(), torch.float32)
    assert kernel_calls.count == 0
    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "on")
    with pytest.raises(ValueError, match="GLSMAMBA_CPU_KERNEL must be 'auto', '0' or '1', got 'on'"):
        run()
    monkeypatch.setattr(_cpu_kernels, "_LIB", {"reason": "the reference's CPU kernels are unavailable: no g++"})
    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "1")
    with pytest.raises(RuntimeError, match="GLSMAMBA_CPU_KERNEL=1: the reference's CPU kernels are unavailable"):
        run()
    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "auto")
    assert_close("out (auto, unavailable)", want, run(), torch.float32)
    assert kernel_calls.count == 0
    monkeypatch.undo()
    monkeypatch.setattr(_cpu_kernels, "gathered_scan", kernel_calls)
    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "auto")
    if REASON is None:
        assert_close("out (auto)", want, run(), torch.float32)
        assert kernel_calls.count == 1
    f64 = {k: None if v is None else v.double() for k, v in inp.items()}
    with torch.no_grad():
        ordered_selective_scan(**f64, orders=orders, groups=groups)
    leaves = {k: v.detach().requires_grad_() if k == "x" else v for k, v in inp.items()}
    ordered_selective_scan(**leaves, orders=orders, groups=groups).sum().backward()
    assert kernel_calls.count == (1 if REASON is None else 0)


def test_failed_build_says_why(monkeypatch, tmp_path):
    """A compiler that fails (``CXX=false``) or is missing: :func:`unavailable_reason` names it and the build
    command; nothing is left in the cache directory."""
    monkeypatch.setattr(_cpu_kernels, "_cpu_reason", lambda: None)
    monkeypatch.setenv("GLSMAMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_cpu_kernels, "_LIB", {})
    monkeypatch.setenv("CXX", "false")
    reason = _cpu_kernels.unavailable_reason()
    assert reason.startswith("the reference's CPU kernels are unavailable: building _cpu_kernels.cpp failed (false ")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(_cpu_kernels, "_LIB", {})
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert _cpu_kernels.unavailable_reason().endswith("no C++ compiler: g++ is not on PATH and CXX is not set")


@needs_kernel
def test_build_is_cached_by_source_and_flags(monkeypatch, tmp_path):
    """The library is built once into the cache directory, under a name keyed by the source and flags, and loaded
    from there by a later process (here: a fresh module state)."""
    monkeypatch.setenv("GLSMAMBA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_cpu_kernels, "_LIB", {})
    assert _cpu_kernels.unavailable_reason() is None
    built = list(tmp_path.glob("glsm_cpu_kernels_*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(_cpu_kernels, "_LIB", {})
    assert _cpu_kernels.unavailable_reason() is None
    assert list(tmp_path.iterdir()) == built and built[0].stat().st_mtime_ns == stamp


# ------------------------------------------------------------------------------------------ deformable aggregation

@pytest.fixture
def deformable_calls(monkeypatch):
    calls = _Calls(_cpu_kernels.deformable)
    monkeypatch.setattr(_cpu_kernels, "deformable", calls)
    return calls


@needs_kernel
@pytest.mark.parametrize("taps", [SPATIAL_TAPS, TEMPORAL_TAPS, CENTRE], ids=["spatial", "temporal", "centre"])
@pytest.mark.parametrize("dims", [(2, 12, 2), (1, 37, 1), (3, 40, 4)], ids=["B2C12G2", "B1C37G1", "B3C40G4"])
def test_deformable_kernel_matches_the_gathers(monkeypatch, deformable_calls, taps, dims):
    """Without autograd the fast path is one kernel call: equal to the explicit per-tap gathers (the oracle) to the
    fp32 tolerance, with channels per offset group that leave a masked last vector (6, 37, 10) or not (8, below:
    C40G4 has 10), offsets crossing the frame border, 1-3 batch rows; bf16 tokens to bf16's tolerance."""
    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "1")
    B, C, G = dims
    shape = (3, 4, 5)
    inp = test_deformable.make_inputs(B=B, shape=shape, C=C, G=G, taps=taps)
    want = deformable_aggregate_gathers(**inp, taps=taps, shape=shape)
    with torch.no_grad():
        got = deformable_aggregate(**inp, taps=taps, shape=shape)
    assert deformable_calls.count == 1
    assert_close("out", want, got, torch.float32)
    low = dict(inp, x=inp["x"].to(torch.bfloat16))
    with torch.no_grad():
        got = deformable_aggregate(**low, taps=taps, shape=shape)
    assert got.dtype == torch.bfloat16 and deformable_calls.count == 2
    assert_close("out (bf16)", deformable_aggregate_gathers(**low, taps=taps, shape=shape), got, torch.bfloat16)


@needs_kernel
@pytest.mark.parametrize("taps", [SPATIAL_TAPS, TEMPORAL_TAPS], ids=["spatial", "temporal"])
def test_deformable_kernel_nan_inf_reach(monkeypatch, deformable_calls, taps):
    """NaN / +-inf in x (a corner, the border, inside), in the offsets (NaN: every corner coefficient NaN) and in
    the mask and the tap weights: the kernel's non-finite outputs are where the oracle's are (the kind compared
    exactly except for inf in the mask or weights, which the two multiply in another order), finite ones close."""
    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "1")
    shape = (3, 4, 3)
    where = {"x": [(0, 0, 1), (0, 5, 2), (1, 35, 0)], "offsets": [(0, 7, 0, 1, 0), (1, 3, 1, 2, 1)],
             "mask": [(0, 4, 1, 0)], "weight": [(1, 3)]}
    for name, places in where.items():
        for at in places:
            for value in (math.nan, math.inf, -math.inf):
                inp = test_deformable.make_inputs(B=2, shape=shape, C=6, G=2, taps=taps)
                inp[name][at] = value
                want = deformable_aggregate_gathers(**inp, taps=taps, shape=shape)
                with torch.no_grad():
                    got = deformable_aggregate(**inp, taps=taps, shape=shape)
                assert not torch.isfinite(want).all()
                exact = not (math.isinf(value) and name in ("mask", "weight"))
                assert_same_special_values(f"{name}={value} at {at}", want, got, torch.float32, exact=exact)
    assert deformable_calls.count == 3 * sum(len(v) for v in where.values())


def test_deformable_kernel_switch(monkeypatch, deformable_calls):
    """The kernel runs only without autograd, in fp32 (float64 inputs keep PyTorch), with GLSMAMBA_CPU_KERNEL not
    0; under 1 a kernel that cannot run raises."""
    shape = (2, 3, 4)
    inp = test_deformable.make_inputs(B=1, shape=shape, C=8, G=1, taps=SPATIAL_TAPS)
    want = deformable_aggregate_gathers(**inp, taps=SPATIAL_TAPS, shape=shape)
    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "0")
    with torch.no_grad():
        assert_close("out (0)", want, deformable_aggregate(**inp, taps=SPATIAL_TAPS, shape=shape), torch.float32)
    leaves = dict(inp, x=inp["x"].detach().requires_grad_())
    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "auto")
    deformable_aggregate(**leaves, taps=SPATIAL_TAPS, shape=shape).sum().backward()
    with torch.no_grad():
        deformable_aggregate(**{k: v.double() for k, v in inp.items()}, taps=SPATIAL_TAPS, shape=shape)
    assert deformable_calls.count == 0
    monkeypatch.setattr(_cpu_kernels, "_LIB", {"reason": "the reference's CPU kernels are unavailable: no g++"})
    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "1")
    with torch.no_grad(), pytest.raises(RuntimeError, match="GLSMAMBA_CPU_KERNEL=1: the reference's CPU kernels"):
        deformable_aggregate(**inp, taps=SPATIAL_TAPS, shape=shape)


def _grouped_oracle(out, y, offsets, mask, weight, taps, shape):
    """``out + sum_p W_p sample_p(y)`` from the explicit gathers: each tap sampled alone with unit weight, mixed by
    an einsum over its groups (fp64)."""
    b, l, c = y.shape
    P, G, O, I = weight.shape
    acc = out.double().clone()
    for p in range(P):
        s = deformable_aggregate_gathers(y.double(), offsets[:, :, :, p:p + 1].double(),
                                         mask[:, :, :, p:p + 1].double(), torch.ones(1, c, dtype=torch.float64),
                                         taps[p:p + 1], shape)
        acc += torch.einsum("blgi,goi->blgo", s.view(b, l, G, I), weight[p].double()).reshape(b, l, c)
    return acc


@needs_kernel
@pytest.mark.parametrize("taps", [SPATIAL_TAPS, TEMPORAL_TAPS], ids=["spatial", "temporal"])
@pytest.mark.parametrize("dims", [(1, 64, 16, 1), (2, 48, 12, 2), (2, 72, 72, 1), (1, 40, 8, 4)],
                         ids=["C64g16", "C48g12-Goff2", "C72g72", "C40g8-Goff4"])
def test_grouped_deformable_kernel_matches_the_taps(taps, dims):
    """``grouped_deformable_add``: out + sum_p W_p sample_p(y) equal to the per-tap gathers and an einsum (fp64) to
    the fp32 tolerance: groups of 16 and 8 channels (whole output vectors), 12 (a padded last vector) and 72 (more
    than 8 output vectors: two passes), 1-4 offset groups, y and out as views with a batch stride (slices of a
    larger tensor, as STMM passes them), out not zero."""
    B, C, cg, Goff = dims
    shape = (3, 4, 5)
    inp = test_deformable.make_inputs(B=B, shape=shape, C=C, G=Goff, taps=taps)
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(taps.shape[0], C // cg, cg, cg, generator=g) / cg**0.5
    big = torch.randn(B, 3, 60, C, generator=g)
    y, out = big[:, 1], big[:, 0]
    want = _grouped_oracle(out, y, inp["offsets"], inp["mask"], weight, taps, shape)
    got = _cpu_kernels.grouped_deformable_add(out, y, inp["offsets"], inp["mask"], weight, taps, shape)
    assert got is out
    assert_close("out", want, big[:, 0], torch.float32)


@needs_kernel
def test_grouped_deformable_kernel_nan_inf_reach():
    """A NaN / inf in y (a sampled corner), an offset or the mask: non-finite exactly where the per-tap oracle's
    are (its kind not compared: the mixing multiplies the same factors in another order)."""
    shape, taps = (3, 4, 3), SPATIAL_TAPS
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(9, 2, 4, 4, generator=g)
    for name, at in (("x", (0, 5, 2)), ("x", (1, 35, 0)), ("offsets", (0, 7, 0, 1, 0)), ("mask", (1, 4, 1, 3))):
        for value in (math.nan, math.inf, -math.inf):
            inp = test_deformable.make_inputs(B=2, shape=shape, C=8, G=2, taps=taps)
            inp[name][at] = value
            out = torch.randn(2, 36, 8, generator=g)
            want = _grouped_oracle(out, inp["x"], inp["offsets"], inp["mask"], weight, taps, shape)
            got = _cpu_kernels.grouped_deformable_add(out.clone(), inp["x"], inp["offsets"], inp["mask"], weight,
                                                      taps, shape)
            assert not torch.isfinite(want).all()
            assert_same_special_values(f"{name}={value} at {at}", want, got, torch.float32, exact=False)


def test_grouped_deformable_kernel_refuses_what_it_cannot_take():
    y = torch.randn(1, 6, 8)
    args = (torch.zeros(1, 6, 1, 1, 2), torch.ones(1, 6, 1, 1), torch.randn(1, 2, 4, 4), CENTRE, (1, 2, 3))
    with pytest.raises(ValueError, match=r"out must be fp32 \(Bsz, L, C\) = \(1, 6, 8\) with contiguous rows"):
        _cpu_kernels.grouped_deformable_add(torch.zeros(1, 8, 6).transpose(1, 2), y, *args)
    with pytest.raises(ValueError, match="y must be fp32"):
        _cpu_kernels.grouped_deformable_add(torch.zeros(1, 6, 8), y.double(), *args)
