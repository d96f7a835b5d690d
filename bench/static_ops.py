"""The ops of the static report: inputs, compulsory bytes, minimum MUFU work, and how each is counted small.

Every op is described by an :class:`OpSpec`:

* ``build(params, grad)``: deterministic inputs at a shape, the call, and the incoming gradient;
* ``full``: the headline shape; ``points``: reduced shapes (and launch-config pins) the traffic counter runs;
  ``features(params)``: the terms of the linear model every count is fitted with over the points and evaluated
  at the full shape (see ``bench/static.py``);
* ``compulsory(params, mode)``: the bytes the op cannot avoid moving. The rule for every op: each input read once
  and each output written once, in its dtype; backward: each input read once, the incoming gradient read once and
  each input gradient written once (every floating input gets a gradient); ``fwd+bwd`` = ``fwd`` + ``bwd`` (each
  pass reads what it needs once; nothing but the inputs is kept between them). The per-op formulas below spell it
  out (s = bytes per element of the I/O dtype; parameters A, D, delta_bias and tap weights as stored: fp32 for
  the scans, the I/O dtype for the deformable weights; index tables int64, reset flags 1 byte);
* ``min_mufu(params, mode)``: exps (and logs) the op cannot avoid: the scans ``exp(dt A)`` per element-state plus
  softplus' exp and log per (token, channel); backward the same again (recomputing the decays costs less than
  storing them: 4 bytes per element-state); 0 for the gathers and the deformable aggregation;
* ``elem_states(params)``: the op's element-states (token x channel x state items), the denominator of the
  ``all`` rows' per-element-state instruction counts.

The reduced points keep everything that shapes the launches (block sizes, tiles per chunk, launch counts: pinned
through ``kernels._utils.launch_config`` where a count would otherwise change) and cut what the programs of a
launch repeat: channel blocks, and the sequence length (a whole number of tiles, chunks or token blocks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

STS6D_GROUPS = (0, 1, 2, 0, 1, 2)
MODES = ("fwd", "bwd", "fwd+bwd")


@dataclass
class Case:
    """A built call: ``run()`` returns the output; ``leaves`` get gradients; ``dout`` is the incoming gradient."""

    run: Callable[[], torch.Tensor]
    leaves: list[torch.Tensor]
    dout: Callable[[torch.Tensor], torch.Tensor]


@dataclass
class OpSpec:
    op: str
    label: str  # the CSV shape column
    dtype: torch.dtype
    build: Callable[[dict[str, Any], bool], Case]
    full: dict[str, Any]
    points: list[dict[str, Any]]
    features: Callable[[dict[str, Any]], tuple[Fraction, ...]]
    compulsory: Callable[[dict[str, Any], str], int]
    min_mufu: Callable[[dict[str, Any], str], int]
    elem_states: Callable[[dict[str, Any]], int]
    # launch-config pins of a point, given the full shape's parameters after ``derive``
    pin: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] = lambda p, full: {}
    # parameters of the full shape read off its captured launches (e.g. how many backward launches it makes)
    derive: Callable[[dict[str, Any], list[Any]], dict[str, Any]] = lambda full, launches: full
    # launch-config scale of a point (the share of the machine's budgets it gets): its channel share
    scale: Callable[[dict[str, Any], dict[str, Any]], Fraction] = lambda p, full: Fraction(1)
    exact: bool = True  # False: some counts are scaled, not extrapolated exactly (``note`` says which)
    note: str = ""
    pinned_launches: bool = False  # every point reproduces the full launch sequence (per-launch extrapolation)
    cost: Callable[[dict[str, Any]], float] = lambda p: 1.0  # relative interpreter time of a point (scheduling)
    # extensive counts (bytes, loop totals) at the full shape = model x multiplier(full) (1 unless a spec scales)
    multiplier: Callable[[dict[str, Any]], Fraction] = lambda p: Fraction(1)


def _gen(seed: int = 0, p: dict[str, Any] | None = None) -> torch.Generator:
    """The inputs' generator (``p["zeros"]``: a capture of the launches, where zeros do)."""
    return (_Zeros() if p is not None and p.get("zeros") else torch.Generator()).manual_seed(seed)


def _rnd(g: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype, scale: float = 1.0,
         shift: float = 0.0) -> torch.Tensor:
    if getattr(g, "zeros", False):  # a capture: only shapes matter
        return torch.zeros(shape, dtype=dtype)
    return (torch.randn(shape, generator=g) * scale + shift).to(dtype)


class _Zeros(torch.Generator):
    zeros = True


def _both(fwd: int, bwd: int, mode: str) -> int:
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


def _impl(op: str) -> Callable[..., Any]:
    from glsmamba.model.backend import get_impl

    return get_impl(op, "triton")


def _leaf(t: torch.Tensor, grad: bool) -> torch.Tensor:
    return t.requires_grad_(grad) if t.is_floating_point() else t


# ------------------------------------------------------------------------------------------------------------------
# selective scan (mamba_ssm layout): u, delta (B, D, L); A (D, N) fp32; B, C (B, N, L); D, delta_bias (D,) fp32
# ------------------------------------------------------------------------------------------------------------------


def build_selective_scan(p: dict[str, Any], grad: bool) -> Case:
    g = _gen(0, p)
    Bz, D, N, L, dt = p["B"], p["D"], p["N"], p["L"], p["dtype"]
    u = _rnd(g, (Bz, D, L), dt)
    delta = _rnd(g, (Bz, D, L), dt, 0.5, -2.0)
    A = -(torch.rand((D, N), generator=g) + 0.5)
    Bm, Cm = _rnd(g, (Bz, N, L), dt), _rnd(g, (Bz, N, L), dt)
    Dv, bias = torch.randn(D, generator=g), torch.randn(D, generator=g) * 0.1
    leaves = [_leaf(t, grad) for t in (u, delta, A, Bm, Cm, Dv, bias)]
    fn = _impl("selective_scan")

    def run() -> torch.Tensor:
        return fn(u, delta, A, Bm, Cm, D=Dv, delta_bias=bias, delta_softplus=True)

    return Case(run, leaves, lambda out: _rnd(_gen(1, p), tuple(out.shape), out.dtype))


def selective_scan_compulsory(p: dict[str, Any], mode: str) -> int:
    """fwd: read u, delta (B*D*L*s each), B, C (B*N*L*s each), A (D*N*4), D, delta_bias (D*4 each); write out
    (B*D*L*s). bwd: read the same inputs and dout (B*D*L*s); write du, ddelta, dB, dC in the I/O dtype and
    dA, dD, d(delta_bias) in fp32."""
    Bz, D, N, L = p["B"], p["D"], p["N"], p["L"]
    s = torch.empty((), dtype=p["dtype"]).element_size()
    inputs = 2 * Bz * D * L * s + 2 * Bz * N * L * s + D * N * 4 + 2 * D * 4
    fwd = inputs + Bz * D * L * s
    bwd = inputs + Bz * D * L * s + (2 * Bz * D * L * s + 2 * Bz * N * L * s + D * N * 4 + 2 * D * 4)
    return _both(fwd, bwd, mode)


def _bwd_splits(launches: list[Any], kernel: str, rows: int) -> int:
    """The backward's channel ranges per program row, read off the captured launches of ``kernel`` (grid axis 1
    = ``rows`` x ranges)."""
    grids = [la.grid for la in launches if la.kernel.endswith(kernel)]
    if not grids:
        raise ValueError(f"no {kernel} launch captured")
    return grids[0][1] // rows


def selective_scan_spec(D: int) -> OpSpec:
    full = dict(B=2, D=D, N=16, L=15360, dtype=torch.bfloat16)
    # 1-2 x 6 channels (a whole number of forward row blocks and of the backward's 3 channel ranges) x 2-3 chunks
    # of 256 tokens; the machine scaled by the channel share, so the forward makes the full shape's choices
    points = [dict(full, D=6 * c, L=256 * s) for c in (1, 2) for s in (2, 3)]

    def derive(full: dict[str, Any], launches: list[Any]) -> dict[str, Any]:
        return dict(full, splits=_bwd_splits(launches, "._ss_bwd_kernel", full["B"]))

    def pin(p: dict[str, Any], full: dict[str, Any]) -> dict[str, Any]:
        # as many channel ranges per backward program row as the full shape has (chosen there from its chunks)
        return dict(bwd_splits=full["splits"])

    return OpSpec(
        op="selective_scan", label=f"B2-D{D}-N16-L15360", dtype=torch.bfloat16, build=build_selective_scan,
        full=full, points=points, pin=pin, derive=derive, pinned_launches=True, cost=lambda p: p["D"] * p["L"] / 8,
        scale=lambda p, f: Fraction(p["D"], f["D"]),
        features=lambda p: (Fraction(1), Fraction(p["D"]), Fraction(p["L"]), Fraction(p["D"] * p["L"])),
        compulsory=selective_scan_compulsory,
        min_mufu=lambda p, mode: _both(*(2 * [p["B"] * p["D"] * p["L"] * (p["N"] + 2)]), mode),
        elem_states=lambda p: p["B"] * p["D"] * p["L"] * p["N"],
    )


# ------------------------------------------------------------------------------------------------------------------
# ordered selective scan: x (B, L, C); delta (B, K, L, C); A (K, C, N) fp32; B, C (B, K, L, N); D, bias (K, C) fp32
# ------------------------------------------------------------------------------------------------------------------


def _orders(p: dict[str, Any]) -> tuple[torch.Tensor, tuple[int, ...], torch.Tensor | None]:
    from glsmamba.reference.space_time import STS6D, scan_orders, window_orders

    if p["kind"] == "sts6d":
        return scan_orders(p["thw"], STS6D), STS6D_GROUPS, None
    orders, reset = window_orders(p["thw"], (8, 6))
    return orders, (0, 0), reset


def build_ordered(p: dict[str, Any], grad: bool) -> Case:
    g = _gen(0, p)
    orders, groups, reset = _orders(p)
    K, L = orders.shape
    Bz, Cc, N, dt = p["B"], p["C"], p["N"], p["dtype"]
    x = _rnd(g, (Bz, L, Cc), dt)
    delta = _rnd(g, (Bz, K, L, Cc), dt, 0.5, -2.0)
    A = -(torch.rand((K, Cc, N), generator=g) + 0.5)
    Bm, Cm = _rnd(g, (Bz, K, L, N), dt), _rnd(g, (Bz, K, L, N), dt)
    Dv, bias = torch.randn((K, Cc), generator=g), torch.randn((K, Cc), generator=g) * 0.1
    leaves = [_leaf(t, grad) for t in (x, delta, A, Bm, Cm, Dv, bias)]
    if p.get("unfused"):
        from glsmamba.bench.bench_ordered_scan import unfused_ordered_scan

        def run() -> torch.Tensor:
            return unfused_ordered_scan(x, delta, A, Bm, Cm, Dv, orders, groups, delta_bias=bias,
                                        delta_softplus=True, backend="triton")
    else:
        fn = _impl("ordered_selective_scan")

        def run() -> torch.Tensor:
            return fn(x, delta, A, Bm, Cm, Dv, orders, groups, reset=reset, delta_bias=bias, delta_softplus=True)

    return Case(run, leaves, lambda out: _rnd(_gen(1, p), tuple(out.shape), out.dtype))


def ordered_compulsory(p: dict[str, Any], mode: str) -> int:
    """fwd: read x (B*L*C*s), delta (B*K*L*C*s), B, C (B*K*L*N*s each), A (K*C*N*4), D, delta_bias (K*C*4 each),
    orders (K*L*8) and reset (K*L, windows only); write out (B*G*L*C*s). bwd: read the same inputs and dout
    (B*G*L*C*s); write dx, ddelta, dB, dC in the I/O dtype and dA, dD, d(delta_bias) in fp32."""
    Bz, Cc, N, K, G, L = p["B"], p["C"], p["N"], p["K"], p["G"], p["L"]
    s = torch.empty((), dtype=p["dtype"]).element_size()
    params = K * Cc * N * 4 + 2 * K * Cc * 4
    floats = Bz * L * Cc * s + Bz * K * L * Cc * s + 2 * Bz * K * L * N * s + params
    tables = K * L * 8 + (K * L if p["kind"] == "windows" else 0)
    out = Bz * G * L * Cc * s
    return _both(floats + tables + out, floats + tables + out + floats, mode)


def ordered_spec(kind: str) -> OpSpec:
    K, G = (6, 3) if kind == "sts6d" else (2, 1)
    full = dict(B=2, thw=(5, 64, 48), L=15360, C=512, N=16, K=K, G=G, kind=kind, dtype=torch.bfloat16)
    # clips of 2 and 3 backward chunks (256 tokens) x 1-2 forward row blocks (8 channels); the machine scaled by
    # the channel share, so the launches make the full shape's choices
    clips = {2: (2, 16, 16), 3: (3, 16, 16)}
    points = [dict(full, C=8 * c, thw=clips[nck], L=256 * nck) for c in (1, 2) for nck in (2, 3)]

    def derive(full: dict[str, Any], launches: list[Any]) -> dict[str, Any]:
        return dict(full, splits=_bwd_splits(launches, "._os_bwd_kernel", full["B"] * full["K"]))

    def pin(p: dict[str, Any], full: dict[str, Any]) -> dict[str, Any]:
        return dict(bwd_splits=full["splits"])

    def features(p: dict[str, Any]) -> tuple[Fraction, ...]:
        return tuple(Fraction(a * b) for a in (1, p["C"]) for b in (1, p["L"]))

    note = ("the unique bytes of the gathered rows (x, dout, out) inside one launch depend on how the scan orders "
            "overlap, which the reduced clips reproduce only approximately; everything else is extrapolated "
            "exactly")
    return OpSpec(
        op="ordered_selective_scan", label=f"B2-T5-H64-W48-C512-K{K}-N16" + ("-win8x6" if kind != "sts6d" else ""),
        dtype=torch.bfloat16, build=build_ordered, full=full, points=points, pin=pin, derive=derive,
        features=features, compulsory=ordered_compulsory, exact=False, note=note,
        cost=lambda p: p["K"] * p["C"] * p["L"] / 16,
        scale=lambda p, f: Fraction(p["C"], f["C"]),
        min_mufu=lambda p, mode: _both(*(2 * [p["B"] * p["K"] * p["C"] * p["L"] * (p["N"] + 2)]), mode),
        elem_states=lambda p: p["B"] * p["K"] * p["C"] * p["L"] * p["N"],
    )


# ------------------------------------------------------------------------------------------------------------------
# space-time scan (gather) and merge
# ------------------------------------------------------------------------------------------------------------------


def build_space_time(p: dict[str, Any], grad: bool) -> Case:
    from glsmamba.reference.space_time import STS6D, scan_orders

    g = _gen(0, p)
    orders = scan_orders(p["thw"], STS6D)
    K, L = orders.shape
    if p["op"] == "space_time_scan":
        x = _leaf(_rnd(g, (p["B"], L, p["C"]), p["dtype"]), grad)
        fn = _impl("space_time_scan")
        return Case(lambda: fn(x, orders), [x], lambda out: _rnd(_gen(1, p), tuple(out.shape), out.dtype))
    ys = _leaf(_rnd(g, (p["B"], K, L, p["C"]), p["dtype"]), grad)
    fn = _impl("space_time_merge")
    return Case(lambda: fn(ys, orders, STS6D_GROUPS), [ys], lambda out: _rnd(_gen(1, p), tuple(out.shape), out.dtype))


def space_time_compulsory(p: dict[str, Any], mode: str) -> int:
    """scan, fwd: read x (B*L*C*s) and orders (K*L*8), write out (B*K*L*C*s); bwd: read orders and dout
    (B*K*L*C*s), write dx (B*L*C*s). merge, fwd: read ys (B*K*L*C*s) and orders, write out (B*G*L*C*s); bwd: read
    orders and dout (B*G*L*C*s), write dys (B*K*L*C*s). (The inputs a backward does not need, x or ys, are not
    read: the op is linear.)"""
    Bz, Cc, K, L = p["B"], p["C"], 6, p["L"]
    s = torch.empty((), dtype=p["dtype"]).element_size()
    narrow = Bz * L * Cc * s if p["op"] == "space_time_scan" else Bz * 3 * L * Cc * s
    wide = Bz * K * L * Cc * s
    orders = K * L * 8
    return _both(narrow + orders + wide, wide + orders + narrow, mode)


def space_time_spec(op: str) -> OpSpec:
    full = dict(op=op, B=2, thw=(5, 64, 48), L=15360, C=512, dtype=torch.bfloat16)
    clips = {32: (1, 4, 8), 64: (2, 4, 8)}
    points = [dict(full, C=c, thw=clips[n], L=n) for c in (64, 128) for n in (32, 64)]
    return OpSpec(
        op=op, label="B2-T5-H64-W48-C512-K6", dtype=torch.bfloat16, build=build_space_time, full=full, points=points,
        features=lambda p: (Fraction(1), Fraction(p["C"]), Fraction(p["L"]), Fraction(p["C"] * p["L"])),
        compulsory=space_time_compulsory, min_mufu=lambda p, mode: 0, cost=lambda p: p["C"] * p["L"] / 512,
        elem_states=lambda p: p["B"] * 6 * p["L"] * p["C"],
    )


# ------------------------------------------------------------------------------------------------------------------
# deformable aggregation (STMM spatial modulation): x (B, L, C); offsets (B, L, G, P, 2); mask (B, L, G, P);
# weight (P, C); 3x3 spatial taps
# ------------------------------------------------------------------------------------------------------------------


def build_deformable(p: dict[str, Any], grad: bool) -> Case:
    from glsmamba.reference.checks import SPATIAL_TAPS

    g = _gen(0, p)
    T, H, W = p["thw"]
    Bz, L, G, dt = p["B"], T * H * W, p["G"], p["dtype"]
    Cc = G * p["cpg"]
    P = SPATIAL_TAPS.shape[0]
    x = _leaf(_rnd(g, (Bz, L, Cc), dt), grad)
    # one fractional offset everywhere: every tap reads four corners, the frame borders are the only irregularity
    # (random offsets would make the counts depend on the draw)
    offsets = _leaf(torch.tensor([0.3, -0.4]).expand(Bz, L, G, P, 2).to(dt).contiguous(), grad)
    mask = _leaf(torch.full((Bz, L, G, P), 0.5).to(dt), grad)
    weight = _leaf(_rnd(g, (P, Cc), dt, 1.0 / P), grad)
    fn = _impl("deformable_aggregate")
    return Case(lambda: fn(x, offsets, mask, weight, SPATIAL_TAPS, (T, H, W)), [x, offsets, mask, weight],
                lambda out: _rnd(_gen(1, p), tuple(out.shape), out.dtype))


def deformable_compulsory(p: dict[str, Any], mode: str) -> int:
    """fwd: read x (B*L*C*s), offsets (B*L*G*P*2*s), mask (B*L*G*P*s), weight (P*C*s) and taps (P*3*8); write out
    (B*L*C*s). bwd: read the same and dout (B*L*C*s); write dx, d_offsets, d_mask, d_weight (input dtypes)."""
    T, H, W = p["thw"]
    Bz, L, G, P = p["B"], T * H * W, p["G"], 9
    Cc = G * p["cpg"]
    s = torch.empty((), dtype=p["dtype"]).element_size()
    floats = Bz * L * Cc * s + Bz * L * G * P * 3 * s + P * Cc * s
    taps = P * 3 * 8
    return _both(floats + taps + Bz * L * Cc * s, floats + taps + Bz * L * Cc * s + floats, mode)


def deformable_spec() -> OpSpec:
    full = dict(B=2, thw=(5, 64, 48), G=4, cpg=128, dtype=torch.bfloat16)
    # one frame of one batch row and one offset group, 3-4 rows of 48, 32 or 64 channels per group
    points = [dict(full, B=1, G=1, thw=(1, h, 48), cpg=c) for c in (32, 64) for h in (3, 4)]

    def features(p: dict[str, Any]) -> tuple[Fraction, ...]:
        return tuple(Fraction(a * b) for a in (1, p["cpg"]) for b in (1, p["thw"][1]))

    note = ("counted on one frame of one batch row and one offset group (3-4 rows of 48, 32-64 channels per "
            "group), extrapolated exactly in rows and channels and scaled by batch x frames x groups; terms shared "
            "by frames or groups (the tap weights and their gradient partial sums: < 0.1 % of the bytes) are "
            "scaled with them")
    return OpSpec(
        op="deformable_aggregate", label="B2-T5-H64-W48-C512-G4-P9", dtype=torch.bfloat16, build=build_deformable,
        full=full, points=points, features=features, compulsory=deformable_compulsory, exact=False, note=note,
        multiplier=lambda p: Fraction(p["B"] * p["thw"][0] * p["G"]),  # counted at 1 frame x 1 group: scaled
        cost=lambda p: p["thw"][1] * p["cpg"],
        min_mufu=lambda p, mode: 0,
        elem_states=lambda p: p["B"] * p["thw"][0] * p["thw"][1] * p["thw"][2] * p["G"] * p["cpg"] * 9,
    )


def build_ordered_unfused() -> OpSpec:
    """space_time_scan -> selective_scan_channel_last -> space_time_merge at the ordered scan's headline shape
    (only its launches and torch ops are captured: see ``bench.static.unfused_rows``)."""
    spec = ordered_spec("sts6d")
    spec.op, spec.full = "ordered_selective_scan_unfused", dict(spec.full, unfused=True)
    spec.derive = lambda full, launches: full  # (no fused kernels to read the backward's geometry from)
    return spec


def specs() -> list[OpSpec]:
    """Every op of the report, in report order."""
    return [selective_scan_spec(384), selective_scan_spec(512), ordered_spec("sts6d"), ordered_spec("windows"),
            space_time_spec("space_time_scan"), space_time_spec("space_time_merge"), deformable_spec()]
