"""Direction-aware selective scan: the reference against an explicit step-by-step oracle, the fused Triton kernels
against the reference and against the unfused composition scan -> selective_scan -> merge, forward and grads.

Triton runs under the interpreter on CPU (tiny shapes: L = 30, C not a multiple of the channel block).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import glsmamba.kernels.ordered_scan as kos
from glsmamba.bench.bench_ordered_scan import unfused_ordered_scan
from glsmamba.kernels._utils import launch_config
from glsmamba.model.backend import get_impl
from glsmamba.reference.space_time import STS6D_GROUPS, scan_orders, window_orders
from glsmamba.verify.cases import ordered_scan_inputs
from tests.harness import assert_close

SHAPE = (2, 3, 5)  # T, H, W all different; L = 30
NAMES = ("x", "delta", "A", "B", "C", "D", "delta_bias")


def make_inputs(K, B=2, shape=SHAPE, C=5, N=4, **kwargs):
    """The shared ordered-scan inputs (glsmamba.verify.cases) with this file's defaults."""
    return ordered_scan_inputs(K, batch=B, shape=shape, channels=C, dstate=N, **kwargs)


def oracle(inp, orders, groups, reset=None, delta_softplus=True):
    """Explicit loops in float64: per direction, per step, the state zeroed where reset is set."""
    x, delta, A, B, C = (inp[n].double() for n in ("x", "delta", "A", "B", "C"))
    D, bias = inp["D"], inp["delta_bias"]
    Bsz, L, Cch = x.shape
    K = delta.shape[1]
    out = torch.zeros(Bsz, max(groups) + 1, L, Cch, dtype=torch.float64, device=x.device)
    for k in range(K):
        h = torch.zeros(Bsz, Cch, A.shape[2], dtype=torch.float64, device=x.device)
        for j in range(L):
            n = int(orders[k, j])
            if reset is not None and bool(reset[k, j]):
                h = torch.zeros_like(h)
            dt = delta[:, k, n] + (0.0 if bias is None else bias[k].double())
            if delta_softplus:
                dt = F.softplus(dt)
            h = torch.exp(dt[:, :, None] * A[k]) * h + (dt * x[:, n])[:, :, None] * B[:, k, n][:, None, :]
            y = (h * C[:, k, n][:, None, :]).sum(-1)
            if D is not None:
                y = y + D[k].double() * x[:, n]
            out[:, groups[k], n] += y
    return out


def window_case(device, shape=SHAPE, window=(2, 3)):
    orders, reset = window_orders(shape, window, device=device)
    return orders, reset


# ------------------------------------------------------------------------------------------------ reference


@pytest.mark.parametrize("case", ["sts6d", "windows", "windows-rev-groups", "no-softplus"])
def test_reference_matches_oracle(case):
    if case == "sts6d":
        orders, reset, groups, K = scan_orders(SHAPE), None, STS6D_GROUPS, 6
    elif case == "windows":
        (orders, reset), groups, K = window_case("cpu"), (0, 0), 2
    elif case == "windows-rev-groups":
        (orders, reset), groups, K = window_case("cpu", (3, 5, 2), (2, 2)), (1, 0), 2
    else:
        orders, reset, groups, K = scan_orders(SHAPE, ["temporal", "unified_rev"]), None, (0, 0), 2
    shape = (3, 5, 2) if case == "windows-rev-groups" else SHAPE
    softplus = case != "no-softplus"
    inp = make_inputs(K, shape=shape, has_bias=case != "windows")
    if not softplus:
        inp["delta"] = inp["delta"].abs()
    out = get_impl("ordered_selective_scan", "reference")(**inp, orders=orders, groups=groups, reset=reset,
                                                          delta_softplus=softplus)
    assert_close("reference vs oracle", oracle(inp, orders, groups, reset, softplus), out, torch.float32)


def test_reference_grads_match_oracle():
    orders, reset = window_case("cpu")
    inp = make_inputs(2, C=3, N=2)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inp.items()}
    out = get_impl("ordered_selective_scan", "reference")(**leaves, orders=orders, groups=(0, 1), reset=reset)
    oleaves = {k: v.detach().double().requires_grad_(True) for k, v in inp.items()}
    ref = oracle(oleaves, orders, (0, 1), reset)
    dy = torch.randn(ref.shape, dtype=torch.float64)
    g = torch.autograd.grad(out, [leaves[n] for n in NAMES], dy.float())
    go = torch.autograd.grad(ref, [oleaves[n] for n in NAMES], dy)
    for n, a, b in zip(NAMES, g, go, strict=True):
        assert_close(f"d{n}", b, a, torch.float32, kind="grad")


# ------------------------------------------------------------------------------------------------ triton


def compare(inp, orders, groups, reset, dtype=torch.float32, grads=True, ref_fn=None):
    """Triton fused vs ``ref_fn`` (default: the reference on float32 copies), forward and every gradient."""
    ref_fn = ref_fn or get_impl("ordered_selective_scan", "reference")
    leaves = {k: None if v is None else v.detach().clone().requires_grad_(grads) for k, v in inp.items()}
    ref_leaves = {k: None if v is None else v.detach().float().requires_grad_(grads) for k, v in inp.items()}
    out = get_impl("ordered_selective_scan", "triton")(**leaves, orders=orders, groups=groups, reset=reset)
    ref = ref_fn(**ref_leaves, orders=orders, groups=groups, reset=reset)
    assert out.dtype == dtype
    assert_close("out", ref, out, dtype)
    if not grads:
        return
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3)).to(ref.device)
    names = [n for n in NAMES if inp[n] is not None]
    g = torch.autograd.grad(out, [leaves[n] for n in names], dy.to(dtype))
    gr = torch.autograd.grad(ref, [ref_leaves[n] for n in names], dy)
    for n, a, b in zip(names, g, gr, strict=True):
        assert a.dtype == inp[n].dtype
        assert_close(f"d{n}", b, a, dtype, kind="grad")


def test_triton_sts6d_matches_reference(device):
    # C = 5 (not a multiple of the channel block), N = 4, K = 6 directions in 3 groups
    compare(make_inputs(6, device=device), scan_orders(SHAPE, device=device), STS6D_GROUPS, None)


def test_triton_windows_chunked_matches_reference(device):
    # L = 60: 4 backward chunks of 16 steps under the interpreter; the window orders have resets inside chunks 1
    # and 3 (no adjoint may carry through them), the temporal order none (its adjoint is carried). C = 12, N = 1.
    shape = (3, 4, 5)
    wo, wr = window_case(device, shape, (2, 3))
    orders = torch.cat([wo, scan_orders(shape, ["temporal"], device=device)])
    reset = torch.cat([wr, torch.zeros_like(wr[:1])])
    compare(make_inputs(3, shape=shape, C=12, N=1, device=device, has_D=False), orders, (0, 0, 1), reset)


def test_triton_reads_views_expanded_over_directions(device):
    """delta, B, C shared by the directions and passed as zero-stride expanded views (as the model does) are read
    in place, not copied K times; results and gradients (summed over directions by autograd) match the reference."""
    K, Bsz, C, N = 2, 2, 5, 4
    orders, reset = window_case(device)
    L = orders.shape[1]
    base = make_inputs(K, B=Bsz, C=C, N=N, device=device)
    shared = {"delta": base["delta"][:, 0].clone(), "B": base["B"][:, 0].clone(), "C": base["C"][:, 0].clone()}
    expanded = shared["delta"][:, None].expand(Bsz, K, L, C)
    assert kos._rows_contiguous(expanded) is expanded  # no copy
    assert kos._rows_contiguous(expanded.transpose(2, 3)).is_contiguous()  # rows not contiguous: copied

    def run(backend):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in shared.items()}
        views = {"delta": leaves["delta"][:, None].expand(Bsz, K, L, C),
                 "B": leaves["B"][:, None].expand(Bsz, K, L, N), "C": leaves["C"][:, None].expand(Bsz, K, L, N)}
        out = get_impl("ordered_selective_scan", backend)(
            x=base["x"], **views, A=base["A"], D=base["D"], delta_bias=base["delta_bias"], orders=orders,
            groups=(0, 0), reset=reset)
        dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(out.device)
        return out, torch.autograd.grad(out, list(leaves.values()), dy)

    out, grads = run("triton")
    ref, ref_grads = run("reference")
    assert_close("out", ref, out, torch.float32)
    for name, g, r in zip(shared, grads, ref_grads, strict=True):
        assert_close(f"d{name}", r, g, torch.float32, kind="grad")


@pytest.mark.parametrize("splits", [2, 3])
def test_triton_backward_channel_ranges(device, splits):
    """The backward's channels split into ranges run by separate programs (dB/dC per range, summed afterwards in
    a fixed order): 2 and 3 ranges of 6 channels, windows with resets and the temporal order, 4 chunks."""
    shape = (3, 4, 5)  # L = 60: 4 chunks of 16 steps under the interpreter
    wo, wr = window_case(device, shape, (2, 3))
    orders = torch.cat([wo, scan_orders(shape, ["temporal"], device=device)])
    reset = torch.cat([wr, torch.zeros_like(wr[:1])])
    with launch_config(bwd_splits=splits):
        compare(make_inputs(3, shape=shape, C=6, N=4, device=device), orders, (0, 1, 1), reset)


def test_triton_mixed_orders(device):
    # global and window orders together, per-direction groups (G = K: no group sum)
    wo, wr = window_case(device)
    so = scan_orders(SHAPE, ["temporal", "unified_rev"], device=device)
    orders = torch.cat([so, wo])
    reset = torch.cat([torch.zeros_like(wr), wr])
    compare(make_inputs(4, C=3, N=2, device=device, has_bias=False), orders, (2, 0, 1, 3), reset)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_triton_low_precision(dtype, device):
    orders = scan_orders(SHAPE, ["spatial", "temporal_rev", "unified"], device=device)
    compare(make_inputs(3, C=5, N=4, dtype=dtype, device=device), orders, (0, 0, 1), None, dtype=dtype)


def test_fused_equals_unfused_composition(device):
    """Fused == space_time_scan -> selective_scan_channel_last -> space_time_merge (all Triton), fwd and grads."""
    inp = make_inputs(6, C=4, N=2, device=device)
    compare(inp, scan_orders(SHAPE, device=device), STS6D_GROUPS, None,
            ref_fn=lambda reset, **kw: unfused_ordered_scan(**kw, backend="triton"))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_window_segments_are_independent(backend, device):
    orders, reset = window_case(device)
    fn = get_impl("ordered_selective_scan", backend)
    inp = make_inputs(2, C=3, N=2, device=device)
    out = fn(**inp, orders=orders, groups=(0, 0), reset=reset)
    # tokens of the first window (rows 0-1, cols 0-2, both frames) changed everywhere
    T, H, W = SHAPE
    lidx = torch.arange(T * H * W, device=device)
    inside = (((lidx // W) % H) < 2) & ((lidx % W) < 3)
    changed = dict(inp)
    for n, dim in (("x", 1), ("delta", 2), ("B", 2), ("C", 2)):
        noise = torch.randn(inp[n].shape, generator=torch.Generator().manual_seed(9)).to(device)
        sel = inside.view([-1 if d == dim else 1 for d in range(inp[n].dim())])
        changed[n] = torch.where(sel, inp[n] + noise, inp[n])
    out2 = fn(**changed, orders=orders, groups=(0, 0), reset=reset)
    assert torch.equal(out[:, :, ~inside], out2[:, :, ~inside])  # other windows: bit-identical
    assert not torch.allclose(out[:, :, inside], out2[:, :, inside])


@pytest.mark.parametrize("splits", [None, 2])
def test_triton_backward_is_deterministic(device, splits):
    """Every gradient is reduced in a fixed order (no atomics): two identical runs give the same bits (on the
    interpreter this also catches reads of memory nothing wrote)."""
    inp = make_inputs(2, C=5, N=4, device=device)
    orders = scan_orders(SHAPE, ["temporal", "temporal_rev"], device=device)
    fn = get_impl("ordered_selective_scan", "triton")
    dy = torch.randn(2, 1, 30, 5, device=device)
    runs = []
    for _ in range(2):
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inp.items()}
        with launch_config(bwd_splits=splits):
            out = fn(**leaves, orders=orders, groups=(0, 0))
            runs.append(torch.autograd.grad(out, [leaves[n] for n in NAMES], dy))
    for n, a, b in zip(NAMES, *runs, strict=True):
        assert torch.equal(a, b), f"d{n} differs between two identical runs"


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_bad_input(backend, device):
    fn = get_impl("ordered_selective_scan", backend)
    inp = make_inputs(2, C=3, N=2, device=device)
    orders, reset = window_case(device)
    dup = orders.clone()
    dup[1, 0] = dup[1, 1]
    with pytest.raises(ValueError, match=r"orders rows must be permutations of range\(30\); row\(s\) \[1\]"):
        fn(**inp, orders=dup, groups=(0, 0))
    with pytest.raises(ValueError, match=r"orders must have shape \(K, L\) = \(2, 30\)"):
        fn(**inp, orders=scan_orders(SHAPE, device=device), groups=(0, 0))
    with pytest.raises(ValueError, match=r"orders must have shape \(K, 30\)"):
        fn(**inp, orders=scan_orders((2, 3, 4), ["spatial", "temporal"], device=device), groups=(0, 0))
    with pytest.raises(ValueError, match=r"reset must have shape \(K, L\)"):
        fn(**inp, orders=orders, groups=(0, 0), reset=reset[:1])
    with pytest.raises(TypeError, match="reset must have dtype in"):
        fn(**inp, orders=orders, groups=(0, 0), reset=reset.int())
    with pytest.raises(ValueError, match="groups must have one group id per direction"):
        fn(**inp, orders=orders, groups=(0,))
    bad = dict(inp, A=inp["A"][:, :, :1].expand(2, 3, 3))
    with pytest.raises(ValueError, match=r"B must have shape \(Bsz, K, L, N\) = \(2, 2, 30, 3\)"):
        fn(**bad, orders=orders, groups=(0, 0))
    with pytest.raises(ValueError, match=r"D must have shape \(K, C\) = \(2, 3\)"):
        fn(**dict(inp, D=inp["D"][:1]), orders=orders, groups=(0, 0))
    with pytest.raises(TypeError, match="delta must have x's dtype"):
        fn(**dict(inp, delta=inp["delta"].half()), orders=orders, groups=(0, 0))
    with pytest.raises(ValueError, match=r"delta must have shape \(Bsz, K, L, C\)"):
        fn(**dict(inp, delta=inp["delta"][:, :, :10]), orders=orders, groups=(0, 0))


def test_bench_script_runs_reference_row(tmp_path):
    from glsmamba.bench.bench_ordered_scan import main
    from glsmamba.bench.harness import COLUMNS, read_rows

    rows = main(["--shape", "2", "3", "5", "--channels", "4", "--dstate", "2", "--impls", "reference", "--reps", "1",
                 "--out", str(tmp_path)])
    assert [r["impl"] for r in rows] == ["reference"] and rows[0]["status"] == "ok" and rows[0]["ms"] > 0
    written = read_rows(tmp_path / "ordered_scan_fused.csv")
    assert tuple(written[0]) == COLUMNS and len(written) == 1
    assert written[0]["backend"] == "reference" and written[0]["tokens"] == "30" and written[0]["torch"]


# ------------------------------------------------------------------------------------------------ torch.compile


class _SpaceTimeModule(torch.nn.Module):
    """ordered scan -> deformable aggregation -> scan -> merge, every op through the registry."""

    def __init__(self, backend: str):
        super().__init__()
        self.backend = backend
        self.A_log = torch.nn.Parameter(torch.zeros(2, 4, 2))
        self.w = torch.nn.Parameter(torch.ones(9, 4))

    def forward(self, x, delta, B, C, off, mask, orders, reset):
        from glsmamba.model.backend import get_op
        from glsmamba.reference.deformable import SPATIAL_TAPS

        y = get_op("ordered_selective_scan", self.backend)(x, delta, -torch.exp(self.A_log), B, C, None, orders,
                                                           (0, 0), reset)
        z = get_op("deformable_aggregate", self.backend)(y[:, 0], off, mask, self.w, SPATIAL_TAPS, SHAPE)
        s = get_op("space_time_scan", self.backend)(z, orders)
        return get_op("space_time_merge", self.backend)(s, orders, (0, 1)) * 2.0


def test_torch_compile_smoke_triton(device):
    """The Triton ops are custom ops: a compiled module runs them and matches eager, forward and backward.
    (The reference backend is plain PyTorch; compiling it only adds graph breaks, covered by the lead's test.)"""
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    orders, reset = window_case(device)
    args = [torch.randn(1, 30, 4, generator=g), torch.randn(1, 2, 30, 4, generator=g) * 0.5,
            torch.randn(1, 2, 30, 2, generator=g), torch.randn(1, 2, 30, 2, generator=g),
            torch.randn(1, 30, 1, 9, 2, generator=g), torch.rand(1, 30, 1, 9, generator=g)]
    args = [a.to(device) for a in args] + [orders, reset]
    mod = _SpaceTimeModule("triton").to(device)
    eager = mod(*args)
    eager.sum().backward()
    grads = (mod.A_log.grad.clone(), mod.w.grad.clone())
    mod.zero_grad()
    out = torch.compile(mod, backend="aot_eager")(*args)
    out.sum().backward()
    assert_close("compiled", eager, out, torch.float32)
    assert_close("compiled dA_log", grads[0], mod.A_log.grad, torch.float32, kind="grad")
    assert_close("compiled dw", grads[1], mod.w.grad, torch.float32, kind="grad")


# ------------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", ["sts6d", "windows"])
def test_gpu_triton_matches_reference_long(dtype, case):
    shape = (5, 16, 12)  # L = 960: many tiles; C = 70 spans several channel blocks
    if case == "sts6d":
        orders, reset, groups = scan_orders(shape, device="cuda"), None, STS6D_GROUPS
    else:
        (orders, reset), groups = window_case("cuda", shape, (8, 6)), (0, 0)
    inp = make_inputs(orders.shape[0], shape=shape, C=70, N=16, dtype=dtype, device="cuda")
    inp["delta"] = inp["delta"] - 2.0  # realistic small steps: softplus(-2) ~ 0.13
    compare(inp, orders, groups, reset, dtype=dtype)
    with launch_config(bwd_splits=3):  # the backward's channels in 3 ranges (dB/dC partials summed afterwards)
        compare(inp, orders, groups, reset, dtype=dtype)
