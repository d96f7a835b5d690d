"""The reference fast paths against the oracles they replace (docs/design.md 3.5), values and every gradient.

* ``ordered_selective_scan`` (one sequential scan over all directions, inputs read through an index table) against
  ``ordered_selective_scan_unfused`` (K permuted copies, one selective scan each, un-permuted and summed);
* ``deformable_aggregate`` (batched bilinear weights, one ``embedding_bag`` per tap) against
  ``deformable_aggregate_gathers`` (four explicit gathers per tap).

NaN/inf reach and large deltas: ``tests/test_special_values.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

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
from tests.test_special_values import stepper_mode  # noqa: F401  (fixture: both ways the scan steps)

SHARED = ("delta", "B", "C")


def _ordered_setup(case):
    """(shape, orders, reset, groups) for a named case."""
    if case in ("sts6d", "sts6d-per-direction"):
        shape = (2, 3, 5)
        return shape, scan_orders(shape, STS6D), None, (0, 1, 2, 0, 1, 2)
    if case == "windows":  # border windows: segments of several lengths
        shape = (2, 7, 5)
        orders, reset = window_orders(shape, (3, 2))
        return shape, orders, reset, (0, 0)
    if case == "windows-rev-groups":
        shape = (3, 5, 2)
        orders, reset = window_orders(shape, (2, 2))
        return shape, orders, reset, (1, 0)
    shape = (2, 3, 5)  # "mixed": two orders of different types, one group
    return shape, scan_orders(shape, ["temporal", "unified_rev"]), None, (0, 0)


def _one_direction(v: torch.Tensor) -> torch.Tensor:
    """Direction 0 of ``(Bsz, K, ...)`` (delta, B, C) or of ``(K, C)`` (delta_bias), keeping the dimension."""
    return v[:1] if v.dim() == 2 else v[:, :1]


def _over_directions(v: torch.Tensor, K: int) -> torch.Tensor:
    """``_one_direction``'s result as a zero-stride view over K directions."""
    return v.expand(K, v.shape[1]) if v.dim() == 2 else v.expand(v.shape[0], K, *v.shape[2:])


def _ordered_call(fn, inp, shared, orders, reset, groups, grads, softplus=True):
    """Run ``fn`` with delta/B/C (``shared``) given as zero-stride views of one natural-order tensor, the way the
    model passes them. Returns (out, {name: grad of the leaves})."""
    K = orders.shape[0]
    leaves = {k: None if v is None else (_one_direction(v) if k in shared else v).detach().clone().requires_grad_(
        grads) for k, v in inp.items()}
    args = {k: _over_directions(v, K) if k in shared else v for k, v in leaves.items()}
    out = fn(**args, orders=orders, groups=groups, reset=reset, delta_softplus=softplus)
    if not grads:
        return out, {}
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(out.dtype)
    names = [k for k, v in leaves.items() if v is not None]
    return out, dict(zip(names, torch.autograd.grad(out, [leaves[k] for k in names], dy), strict=True))


@pytest.mark.usefixtures("stepper_mode")
@pytest.mark.parametrize("case", ["sts6d", "sts6d-per-direction", "sts6d-shared-bias", "windows",
                                  "windows-shared-bias", "windows-rev-groups", "mixed", "mixed-shared-bias"])
def test_ordered_fast_path_matches_unfused(case):
    """"-shared-bias": delta_bias one row expanded over the directions as well (the model's ``ssm_sharing="all"``):
    the fast path computes softplus(delta + bias) once and gathers it; "mixed-shared-bias" without softplus."""
    shape, orders, reset, groups = _ordered_setup(case.removesuffix("-shared-bias"))
    K = orders.shape[0]
    inp = test_ordered_scan.make_inputs(K, B=2, shape=shape, C=5, N=3, has_D=not case.startswith("mixed"),
                                        has_bias=case != "windows")
    shared = () if case == "sts6d-per-direction" else SHARED + (("delta_bias",) if "shared-bias" in case else ())
    softplus = not case.startswith("mixed")
    if not softplus:
        inp["delta"] = inp["delta"].abs()
    want, want_g = _ordered_call(ordered_selective_scan_unfused, inp, shared, orders, reset, groups, True, softplus)
    got, got_g = _ordered_call(ordered_selective_scan, inp, shared, orders, reset, groups, True, softplus)
    assert_close("out", want, got, torch.float32)
    for k in want_g:
        assert_close(f"d{k}", want_g[k], got_g[k], torch.float32, "grad")
    with torch.no_grad():
        fast, _ = _ordered_call(ordered_selective_scan, inp, shared, orders, reset, groups, False, softplus)
    assert_close("out (no grad)", want, fast, torch.float32)


@pytest.mark.usefixtures("stepper_mode")
@pytest.mark.parametrize("shared", [SHARED, SHARED + ("delta_bias",)], ids=["per-direction-bias", "shared-bias"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=["fp64", "bf16", "fp16"])
def test_ordered_fast_path_dtypes(dtype, shared):
    """float64 stays float64; low precision in, fp32 inside, the result in x's dtype ("shared-bias": the autograd
    path of :class:`GatheredScan`, its gradients in each input's dtype)."""
    shape, orders, reset, groups = _ordered_setup("windows")
    params = ("A", "D", "delta_bias") if dtype != torch.float64 else ()  # float32 parameters with fp16/bf16 tokens
    inp = {k: None if v is None else (v if k in params else v.to(dtype))
           for k, v in test_ordered_scan.make_inputs(2, B=2, shape=shape, C=4, N=2).items()}
    want, want_g = _ordered_call(ordered_selective_scan_unfused, inp, shared, orders, reset, groups, True)
    for grads in (True, False):
        with torch.set_grad_enabled(grads):
            got, got_g = _ordered_call(ordered_selective_scan, inp, shared, orders, reset, groups, grads)
        assert got.dtype == dtype
        assert_close("out", want, got, dtype)
        for k in got_g:
            assert got_g[k].dtype == inp[k].dtype
            assert_close(f"d{k}", want_g[k], got_g[k], dtype, "grad")


@pytest.mark.parametrize("case", ["sts6d-shared-bias", "windows"])
def test_ordered_fast_path_autograd_keeps_natural_order_inputs(case):
    """With autograd and dt the same for every direction (the model's case) the scan keeps for its backward the
    natural-order inputs and one state per block of tokens (:class:`GatheredScan`), nothing larger than one natural-
    order input (Bsz * L * C; the gathered rows dt, dt u, u and the per-direction outputs it kept before are K times
    that); the gradients still match the oracle's."""
    shape, orders, reset, groups = _ordered_setup(case.removesuffix("-shared-bias"))
    K, L, C, Bsz = orders.shape[0], math.prod(shape), 6, 2
    # N = 2: the kept states (one per 16 tokens, K * Bsz * N * C each) stay below Bsz * L * C
    inp = test_ordered_scan.make_inputs(K, B=Bsz, shape=shape, C=C, N=2)
    shared = SHARED + (("delta_bias",) if case.endswith("-shared-bias") else ())
    if case == "windows":
        inp["delta_bias"] = None
    kept = []

    def pack(t):
        kept.append(t.untyped_storage().nbytes() // t.element_size() if t.is_floating_point() else 0)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        got, got_g = _ordered_call(ordered_selective_scan, inp, shared, orders, reset, groups, True)
    assert kept and max(kept) <= Bsz * L * C, (max(kept), Bsz * L * C)  # the gathered rows: K times that
    want, want_g = _ordered_call(ordered_selective_scan_unfused, inp, shared, orders, reset, groups, True)
    assert_close("out", want, got, torch.float32)
    for k in want_g:
        assert_close(f"d{k}", want_g[k], got_g[k], torch.float32, "grad")


class _LargestFloat32(TorchDispatchMode):
    """Records the largest storage (in float32 elements) behind any float32 tensor an op returns (views such as a
    zero-stride expand count as the storage they view)."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.softplus = 0  # elements that went through a softplus

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func._overloadpacket is torch.ops.aten.softplus:
            self.softplus += args[0].numel()
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.untyped_storage().nbytes() // 4)
        return out


@pytest.mark.parametrize("case", ["sts6d", "windows", "sts6d-shared-bias"])
def test_ordered_fast_path_no_grad_forms_no_bklc_temporary(case):
    """Without autograd nothing of Bsz*K*L*C fp32 elements is formed: the group sums are G*L*C (G < K here), the
    scan's per-block buffers (block x rows x N x C) do not grow with L; with a shared delta bias the one natural-
    order dt is Bsz*L*C."""
    sts6d = case.startswith("sts6d")
    shape = (3, 16, 12) if sts6d else (5, 16, 12)
    orders = scan_orders(shape, STS6D) if sts6d else window_orders(shape, (4, 3))[0]
    reset = None if sts6d else window_orders(shape, (4, 3))[1]
    groups = (0, 1, 2, 0, 1, 2) if sts6d else (0, 0)
    K, L, C = orders.shape[0], orders.shape[1], 32
    shared = SHARED + (("delta_bias",) if case.endswith("-shared-bias") else ())
    inp = test_ordered_scan.make_inputs(K, B=1, shape=shape, C=C, N=4 if sts6d else 2)
    inp = {k: _one_direction(v).clone() if k in shared else v for k, v in inp.items()}  # no K-fold storage
    mode = _LargestFloat32()
    with torch.no_grad():
        want, _ = _ordered_call(ordered_selective_scan_unfused, inp, shared, orders, reset, groups, False)
        with mode:
            got, _ = _ordered_call(ordered_selective_scan, inp, shared, orders, reset, groups, False)
    assert_close("out", want, got, torch.float32)
    assert 0 < mode.largest < K * L * C, (mode.largest, K * L * C)
    # softplus(delta + bias): once per token and channel when delta and its bias are shared, else per direction
    assert mode.softplus == (1 if "delta_bias" in shared else K) * L * C, mode.softplus


@pytest.mark.parametrize("taps", [SPATIAL_TAPS, TEMPORAL_TAPS], ids=["spatial", "temporal"])
@pytest.mark.parametrize("kind", ["fractional", "integer", "far", "G1", "G3"])
def test_deformable_fast_path_matches_gathers(taps, kind, monkeypatch):
    """Values and gradients against the explicit gathers; without autograd on both no-grad paths (PyTorch, and the
    C++ kernel where it runs), with the inputs' tap weights and with unit ones (which the PyTorch path does not
    multiply by)."""
    shape = (3, 4, 5)
    G = {"G1": 1, "G3": 3}.get(kind, 2)
    inp = test_deformable.make_inputs(B=2, shape=shape, C=6, G=G, taps=taps, off_scale=4.0 if kind == "far" else 1.5)
    if kind == "integer":  # samples exactly on pixels: the zero-weight corners are read too, in both
        inp["offsets"] = inp["offsets"].round()
    got, want = {}, {}
    for res, fn in ((got, deformable_aggregate), (want, deformable_aggregate_gathers)):
        leaves = {k: v.clone().requires_grad_() for k, v in inp.items()}
        res["out"] = fn(**leaves, taps=taps, shape=shape)
        dy = torch.randn(res["out"].shape, generator=torch.Generator().manual_seed(3))
        res.update(zip(leaves, torch.autograd.grad(res["out"], list(leaves.values()), dy), strict=True))
    for k in want:
        assert_close(k, want[k], got[k], torch.float32, "fwd" if k == "out" else "grad")
    unit = dict(inp, weight=torch.ones_like(inp["weight"]))
    want_unit = deformable_aggregate_gathers(**unit, taps=taps, shape=shape)
    for kernel in ("0", "auto"):
        monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", kernel)
        with torch.no_grad():
            assert_close(f"out (no grad, GLSMAMBA_CPU_KERNEL={kernel})", want["out"],
                         deformable_aggregate(**inp, taps=taps, shape=shape), torch.float32)
            assert_close(f"out (no grad, unit weights, GLSMAMBA_CPU_KERNEL={kernel})", want_unit,
                         deformable_aggregate(**unit, taps=taps, shape=shape), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["fp64", "bf16"])
def test_deformable_fast_path_dtypes(dtype):
    shape = (2, 3, 4)
    inp = {k: v.to(dtype) for k, v in test_deformable.make_inputs(B=1, shape=shape, C=4, G=2).items()}
    want = deformable_aggregate_gathers(**inp, taps=SPATIAL_TAPS, shape=shape)
    got = deformable_aggregate(**inp, taps=SPATIAL_TAPS, shape=shape)
    assert got.dtype == dtype
    assert_close("out", want, got, dtype)


def test_deformable_nan_offsets_with_odd_width():
    """A NaN offset is a NaN output for its (token, group), on both paths (its index used to be NaN.long())."""
    shape = (2, 3, 3)
    inp = test_deformable.make_inputs(B=1, shape=shape, C=4, G=2)
    inp["offsets"][0, 4, 1, 2, 0] = float("nan")
    for fn in (deformable_aggregate, deformable_aggregate_gathers):
        out = fn(**inp, taps=SPATIAL_TAPS, shape=shape)
        assert torch.isnan(out[0, 4, 2:]).all() and torch.isfinite(out[0, 4, :2]).all()
        assert torch.isfinite(out[0, :4]).all() and torch.isfinite(out[0, 5:]).all()


class _ThreadsAtScanOps(TorchDispatchMode):
    """Records torch's intra-op thread count at every ``exp2_`` (the decays of the sequential scan) and at every
    ``addcmul_`` on a state ``(R, N, D)`` (its recurrence; not the ``D u`` skip on a block of outputs)."""

    def __init__(self):
        super().__init__()
        self.seen = set()
        self.at_addcmul = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._overloadpacket is torch.ops.aten.exp2_:
            self.seen.add(torch.get_num_threads())
        if func._overloadpacket is torch.ops.aten.addcmul_ and args[0].dim() == 3:  # on an (R, N, D) state
            self.at_addcmul.add(torch.get_num_threads())
        return func(*args, **(kwargs or {}))


def test_small_per_token_states_step_on_one_thread(monkeypatch):
    """Per-token steps on a state below _SERIAL_ELEMS run on one intra-op thread (OpenMP's fork/join costs more
    than two threads save on ops that small); the caller's thread count is restored, also after an error."""
    from glsmamba.reference import _scan_seq

    monkeypatch.setattr(_scan_seq, "_STEP_ELEMS", 1)  # per-token stepping at this size
    shape, orders, reset, groups = _ordered_setup("sts6d")
    inp = test_ordered_scan.make_inputs(6, B=1, shape=shape, C=4, N=2)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for serial_below, want in ((1 << 17, {1}), (1, {2})):
            monkeypatch.setattr(_scan_seq, "_SERIAL_ELEMS", serial_below)
            mode = _ThreadsAtScanOps()
            with torch.no_grad(), mode:
                got, _ = _ordered_call(ordered_selective_scan, inp, SHARED, orders, reset, groups, False)
            assert mode.seen == want and torch.get_num_threads() == 2
        want, _ = _ordered_call(ordered_selective_scan_unfused, inp, SHARED, orders, reset, groups, False)
        assert_close("out", want, got, torch.float32)
        with pytest.raises(RuntimeError, match="inside"), _scan_seq.intra_op_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(prev)


def test_block_path_steps_its_recurrence_on_one_thread():
    """Below _STEP_ELEMS state elements the no-grad scan takes the block path: a block's decays are one op on all
    intra-op threads, and only the per-token recurrence (addcmul) runs on one thread while the state is below
    _SERIAL_ELEMS. Same values as the oracle; the caller's thread count restored."""
    from glsmamba.reference import _scan_seq

    shape, orders, reset, groups = _ordered_setup("sts6d")
    inp = test_ordered_scan.make_inputs(6, B=1, shape=shape, C=4, N=2)
    assert 6 * 2 * 4 < _scan_seq._STEP_ELEMS <= _scan_seq._SERIAL_ELEMS  # the block path at this size
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        mode = _ThreadsAtScanOps()
        with torch.no_grad(), mode:
            got, _ = _ordered_call(ordered_selective_scan, inp, SHARED, orders, reset, groups, False)
        assert mode.seen == {2} and mode.at_addcmul == {1} and torch.get_num_threads() == 2
        want, _ = _ordered_call(ordered_selective_scan_unfused, inp, SHARED, orders, reset, groups, False)
        assert_close("out", want, got, torch.float32)
    finally:
        torch.set_num_threads(prev)


class _CompiledCalls:
    """Wraps ``_scan_seq.run_compiled``, recording the name of each function it runs."""

    def __init__(self, run):
        self.run, self.names = run, []

    def __call__(self, fn, *args):
        self.names.append(fn.__name__)
        return self.run(fn, *args)


@pytest.mark.parametrize("shared", [SHARED, SHARED + ("delta_bias",)], ids=["per-direction-bias", "shared-bias"])
def test_compiled_fused_steps_match_the_oracle_and_keep_nan_reach(monkeypatch, shared):
    """``GLSMAMBA_SCAN_COMPILE=1``: the ordered scan's no-grad forward and the autograd forward step through the
    compiled fused steps (40 tokens: two compiled blocks of 16 and an eager tail of 8), equal to the unfused oracle
    in values and gradients, a NaN / inf in one token reaching exactly where it reaches in the oracle (placed in the
    second compiled block), also under ``torch.inference_mode``. "shared-bias" (the model's case: dt the same for
    every direction): the no-grad blocks run :func:`gathered_steps`, their gathers compiled too."""
    from glsmamba.reference import _scan_seq

    monkeypatch.setenv("GLSMAMBA_SCAN_COMPILE", "1")
    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "0")  # the PyTorch steps, not the C++ kernel (tests/test_cpu_kernels.py)
    compiled = _CompiledCalls(_scan_seq.run_compiled)
    monkeypatch.setattr(_scan_seq, "run_compiled", compiled)
    shape = (2, 4, 5)  # 40 tokens
    orders, groups = scan_orders(shape, STS6D), (0, 1, 2, 0, 1, 2)
    inp = test_ordered_scan.make_inputs(6, B=1, shape=shape, C=4, N=3)
    want, want_g = _ordered_call(ordered_selective_scan_unfused, inp, shared, orders, None, groups, True)
    compiled.names.clear()  # (the oracle's per-direction selective scans step through it as well)
    got, got_g = _ordered_call(ordered_selective_scan, inp, shared, orders, None, groups, True)
    assert compiled.names == ["fused_steps"] * 2  # the autograd forward: two full blocks compiled
    assert_close("out", want, got, torch.float32)
    for k in want_g:
        assert_close(f"d{k}", want_g[k], got_g[k], torch.float32, "grad")
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            got, _ = _ordered_call(ordered_selective_scan, inp, shared, orders, None, groups, False)
        assert_close(f"out ({ctx.__name__})", want, got, torch.float32)
    no_grad_steps = "gathered_steps" if "delta_bias" in shared else "fused_steps"
    assert compiled.names == ["fused_steps"] * 2 + [no_grad_steps] * 4
    for value in (float("nan"), float("inf")):
        bad = {k: v.clone() if v is not None else None for k, v in inp.items()}
        bad["x"][0, 21, 1] = value
        want, _ = _ordered_call(ordered_selective_scan_unfused, bad, shared, orders, None, groups, False)
        with torch.no_grad():
            got, _ = _ordered_call(ordered_selective_scan, bad, shared, orders, None, groups, False)
        assert not torch.isfinite(want).all()
        assert_same_special_values(f"out with {value} at token 21", want, got, torch.float32)


def test_fused_steps_compile_switch(monkeypatch):
    """``GLSMAMBA_SCAN_COMPILE``: ``auto`` fuses from ``_FUSED_ELEMS`` state elements up to ``_STEP_ELEMS`` (where the
    steps would otherwise go per block, not per token), ``0`` never, ``1`` at every size (CPU, one B/C group only);
    another value is refused, naming the variable. A compile failure raises under ``1``; under ``auto`` it warns once
    and the steps run eagerly, then and in later scans (same values)."""
    from glsmamba.reference import _scan_seq

    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "0")  # the PyTorch steps, not the C++ kernel (tests/test_cpu_kernels.py)
    cpu = torch.device("cpu")
    for mode, elems, groups, want in (("auto", _scan_seq._FUSED_ELEMS, 1, True), ("auto", 1000, 1, False),
                                      ("auto", _scan_seq._STEP_ELEMS - 1, 1, True),
                                      ("auto", _scan_seq._STEP_ELEMS, 1, False),
                                      ("0", 1 << 30, 1, False), ("1", 8, 1, True), ("1", 8, 2, False)):
        monkeypatch.setenv("GLSMAMBA_SCAN_COMPILE", mode)
        assert _scan_seq.use_fused(elems, groups, cpu) is want, (mode, elems, groups)
    monkeypatch.setenv("GLSMAMBA_SCAN_COMPILE", "yes")
    with pytest.raises(ValueError, match="GLSMAMBA_SCAN_COMPILE must be 'auto', '0' or '1', got 'yes'"):
        _scan_seq.use_fused(8, 1, cpu)

    def broken(*args, **kwargs):
        def fail(*a):
            raise RuntimeError("no C++ compiler")
        return fail

    monkeypatch.setattr(_scan_seq, "_COMPILED", {})
    monkeypatch.setattr(_scan_seq, "_COMPILE_FAILED", [False])
    monkeypatch.setattr(torch, "compile", broken)
    shape, orders, reset, groups = _ordered_setup("sts6d")
    inp = test_ordered_scan.make_inputs(6, B=1, shape=shape, C=4, N=2)
    monkeypatch.setenv("GLSMAMBA_SCAN_COMPILE", "0")
    want, _ = _ordered_call(ordered_selective_scan_unfused, inp, SHARED, orders, reset, groups, False)
    monkeypatch.setenv("GLSMAMBA_SCAN_COMPILE", "1")
    with torch.no_grad(), pytest.raises(RuntimeError, match="no C...compiler"):
        _ordered_call(ordered_selective_scan, inp, SHARED, orders, reset, groups, False)
    monkeypatch.setenv("GLSMAMBA_SCAN_COMPILE", "auto")
    monkeypatch.setattr(_scan_seq, "_FUSED_ELEMS", 1)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match="compiling the reference scan's fused steps failed"):
        got, _ = _ordered_call(ordered_selective_scan, inp, SHARED, orders, reset, groups, False)
    assert_close("out", want, got, torch.float32)
    assert _scan_seq._COMPILE_FAILED[0] and not _scan_seq.use_fused(_scan_seq._FUSED_ELEMS, 1, cpu)


def test_polynomial_exp2_matches_the_exact_power_of_two():
    """The fused steps' ``exp2`` (fp32, eager and compiled, bitwise the same): within ``EXP2_MAX_ULP`` of the exact
    ``2^x`` (fp64) over the normal range, within 2^-149 below it, and exact where the exact value is a special value
    or a power of two: NaN at NaN, inf at inf and from 128 on, 0 at -inf and from -151 down, 2^n at integers n
    (down to the subnormal 2^-149). Other dtypes go to ``torch.exp2``."""
    from glsmamba.reference import _scan_seq

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.linspace(-155.0, 130.0, 400_001, dtype=torch.float64).float(),
                   -20 * torch.rand(200_000, generator=g), torch.rand(50_000, generator=g) - 0.5,
                   torch.arange(-160, 131, dtype=torch.float32)])
    eager = _scan_seq.exp2(x)
    compiled = torch.compile(_scan_seq.exp2, fullgraph=True)(x)
    assert torch.equal(eager, compiled)
    assert_exp2("exp2", x, eager)
    special = torch.tensor([math.nan, math.inf, -math.inf, 128.0, 1e30, -151.0, -1e30, 0.0, -0.0])
    for f in (_scan_seq.exp2, torch.compile(_scan_seq.exp2, fullgraph=True)):
        got = f(special)
        assert torch.isnan(got[0]) and got[1:5].tolist() == [math.inf, 0.0, math.inf, math.inf]
        assert got[5:].tolist() == [0.0, 0.0, 1.0, 1.0]
    x64 = torch.linspace(-200.0, 200.0, 1001, dtype=torch.float64)
    assert torch.equal(_scan_seq.exp2(x64), torch.exp2(x64))
