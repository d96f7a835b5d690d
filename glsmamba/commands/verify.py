"""``glsmamba verify``: does every Triton op match its PyTorch reference on this machine? And the whole network?

For every op of the registry (``model.backend.OPS``) and a few shapes/dtypes, the same inputs run through the
``"reference"`` and the ``"triton"`` backend; the forward outputs and the gradients of every differentiable input
(for a random cotangent) are compared with the tolerance table of ``tests/harness.py`` (copied in
:data:`FWD_TOL` / :data:`GRAD_FACTOR`; a test keeps the two equal). Then a whole GLSMamba network runs on both
backends: output and every parameter gradient. Exit code 0 when everything passes, 1 otherwise.

Without CUDA the Triton kernels run under the Triton interpreter on CPU tensors (``TRITON_INTERPRET=1`` is set at the
top of :func:`run`, before anything imports Triton) with tiny shapes; on a GPU the shapes are bigger and low-precision
dtypes are included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

HELP = "check every Triton op (fwd + grads) and the whole network against the PyTorch reference on this machine"

# Copy of tests/harness.py's table (atol, rtol) per dtype name; tests/test_verify.py asserts they are identical.
FWD_TOL: dict[str, tuple[float, float]] = {
    "float64": (1e-10, 1e-9),
    "float32": (1e-4, 2e-4),
    "float16": (5e-3, 3e-3),
    "bfloat16": (5e-2, 3e-2),
}
GRAD_FACTOR = 5.0

OP_NAMES = ("selective_scan", "selective_scan_channel_last", "space_time_scan", "space_time_merge",
            "ordered_selective_scan", "deformable_aggregate")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="level", const="quick",
                      help="smallest shapes, float32 only (the default without a GPU)")
    size.add_argument("--full", action="store_const", dest="level", const="full",
                      help="larger shapes and float32/float16/bfloat16 (slow under the CPU interpreter)")
    parser.set_defaults(level=None)
    parser.add_argument("--ops", nargs="+", choices=OP_NAMES, metavar="OP",
                        help=f"only these ops ({', '.join(OP_NAMES)})")
    parser.add_argument("--no-model", action="store_true", help="skip the whole-network check")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the inputs (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


# ---------------------------------------------------------------------------------------------- environment
def prepare_environment() -> str | None:
    """Make Triton usable here: without CUDA, turn the interpreter on before Triton is imported.

    Returns ``None`` when fine, else why the Triton backend cannot be checked in this process.
    """
    import torch  # importing torch does not import triton

    if torch.cuda.is_available():
        return None
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    if "triton" in sys.modules:
        return ("triton was imported before the interpreter could be enabled and there is no CUDA device: "
                "run with TRITON_INTERPRET=1 in the environment")
    os.environ["TRITON_INTERPRET"] = "1"
    return None


# ---------------------------------------------------------------------------------------------- comparisons
def tolerance(dtype_name: str, kind: str) -> tuple[float, float]:
    atol, rtol = FWD_TOL[dtype_name]
    return (atol, rtol) if kind == "fwd" else (atol * GRAD_FACTOR, rtol * GRAD_FACTOR)


def compare(ref, out, dtype_name: str, kind: str) -> dict[str, Any]:
    """Max-abs error, relative RMS error and pass/fail of ``out`` against ``ref`` (the harness criterion)."""
    import torch

    atol, rtol = tolerance(dtype_name, kind)
    if ref is None or out is None:
        same = ref is None and out is None
        return {"max_abs": 0.0 if same else math.inf, "rel_err": 0.0 if same else math.inf, "passed": same,
                "note": "" if same else "one backend returned no gradient"}
    if tuple(ref.shape) != tuple(out.shape):
        return {"max_abs": math.inf, "rel_err": math.inf, "passed": False,
                "note": f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"}
    r, o = ref.detach().double().cpu(), out.detach().double().cpu()
    if not torch.isfinite(o).all():
        return {"max_abs": math.inf, "rel_err": math.inf, "passed": False, "note": "non-finite values"}
    diff = (o - r).abs()
    max_abs = diff.max().item() if diff.numel() else 0.0
    rms_ref = r.pow(2).mean().sqrt().item() if r.numel() else 0.0
    rms_diff = diff.pow(2).mean().sqrt().item() if diff.numel() else 0.0
    rel = rms_diff / rms_ref if rms_ref > 0 else rms_diff
    passed = bool((diff <= atol + rtol * r.abs()).all())
    return {"max_abs": max_abs, "rel_err": rel, "passed": passed, "note": ""}


@dataclass
class Case:
    """One op call: ``make(device, dtype, gen)`` returns the keyword arguments; ``grads`` names the inputs that get
    gradients."""

    op: str
    label: str
    make: Callable[..., dict[str, Any]]
    grads: tuple[str, ...]
    dtypes: tuple[str, ...] = ("float32",)
    extra: dict[str, Any] = field(default_factory=dict)


def _rows_for_case(case: Case, device, dtype_name: str, seed: int) -> list[dict[str, Any]]:
    import torch

    from glsmamba.model.backend import get_op

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    base = case.make(device, dtype, gen)
    shape = case.label
    results: dict[str, Any] = {}
    for backend in ("reference", "triton"):
        kwargs = {}
        for k, v in base.items():
            if isinstance(v, torch.Tensor) and k in case.grads:
                kwargs[k] = v.detach().clone().requires_grad_(True)
            else:
                kwargs[k] = v
        try:
            out = get_op(case.op, backend=backend)(**kwargs)
            outs = list(out) if isinstance(out, (tuple, list)) else [out]
            g = torch.Generator(device="cpu").manual_seed(seed + 1)
            cots = [torch.randn(o.shape, generator=g, dtype=torch.float32).to(device=o.device, dtype=o.dtype)
                    for o in outs]
            diff_inputs = [kwargs[k] for k in case.grads]
            grads = torch.autograd.grad(outs, diff_inputs, cots, allow_unused=True)
            results[backend] = (outs, dict(zip(case.grads, grads, strict=True)))
        except Exception as e:  # reported as a failing row
            results[backend] = f"{type(e).__name__}: {e}"
    rows: list[dict[str, Any]] = []
    ref, tri = results["reference"], results["triton"]
    common = {"op": case.op, "backend": "triton", "shape": shape, "dtype": dtype_name}
    if isinstance(ref, str) or isinstance(tri, str):
        which = "reference" if isinstance(ref, str) else "triton"
        msg = ref if isinstance(ref, str) else tri
        for check in ("fwd", "bwd"):
            rows.append({**common, "check": check, "max_abs": math.inf, "rel_err": math.inf, "passed": False,
                         "note": f"{which} failed: {msg}"[:300]})
        return rows
    if len(ref[0]) != len(tri[0]):
        return [{**common, "check": c, "max_abs": math.inf, "rel_err": math.inf, "passed": False,
                 "note": f"triton returned {len(tri[0])} outputs, reference {len(ref[0])}"} for c in ("fwd", "bwd")]
    fwd = [compare(r, o, dtype_name, "fwd") for r, o in zip(ref[0], tri[0], strict=True)]
    worst = max(fwd, key=lambda s: (not s["passed"], s["rel_err"]))
    rows.append({**common, "check": "fwd", **worst, "passed": all(s["passed"] for s in fwd)})
    per_grad = {k: compare(ref[1][k], tri[1][k], dtype_name, "grad") for k in case.grads}
    name, worst = max(per_grad.items(), key=lambda kv: (not kv[1]["passed"], kv[1]["rel_err"]))
    rows.append({**common, "check": f"bwd (worst: d{name})", **worst,
                 "passed": all(s["passed"] for s in per_grad.values()),
                 "grads": {k: {kk: vv for kk, vv in s.items() if kk != "note"} for k, s in per_grad.items()}})
    return rows


# ---------------------------------------------------------------------------------------------- cases
def _rand(gen, *shape, device, dtype, scale=1.0, offset=0.0):
    import torch

    return (torch.randn(*shape, generator=gen) * scale + offset).to(device=device, dtype=dtype)


def build_cases(level: str, on_gpu: bool) -> list[Case]:
    """The op cases for ``level`` in {"quick", "default", "full"}."""
    import torch

    from glsmamba.reference.space_time import STS6D, scan_orders, window_order

    big = on_gpu and level != "quick"
    full = level == "full"
    if not on_gpu:
        dtypes: tuple[str, ...] = ("float32", "float16", "bfloat16") if full else ("float32",)
    else:
        dtypes = ("float32", "float16", "bfloat16") if full else ("float32", "bfloat16")
    if big:
        bsz, ch, n, seq = (2, 96, 16, 2048) if full else (2, 64, 16, 1024)
        thw = (5, 32, 24) if full else (5, 16, 12)
    elif full:
        bsz, ch, n, seq = 2, 12, 8, 96
        thw = (3, 6, 5)
    else:
        bsz, ch, n, seq = 2, 6, 4, 37
        thw = (3, 5, 4)
    t, h, w = thw
    seqlen = t * h * w
    cases: list[Case] = []

    def f32(gen, *shape, device, scale=1.0, offset=0.0):
        return _rand(gen, *shape, device=device, dtype=torch.float32, scale=scale, offset=offset)

    def ss_inputs(channel_last: bool, grouped: bool, with_z: bool, large_delta: bool = False):
        groups = 2 if grouped else 1

        def make(device, dtype, gen):
            lay = (bsz, seq, ch) if channel_last else (bsz, ch, seq)
            if channel_last:
                bc = (bsz, seq, groups, n) if grouped else (bsz, seq, n)
            else:
                bc = (bsz, groups, n, seq) if grouped else (bsz, n, seq)
            kw = {
                "u": _rand(gen, *lay, device=device, dtype=dtype),
                "delta": _rand(gen, *lay, device=device, dtype=dtype, scale=0.5, offset=-1.0),
                "A": -torch.exp(f32(gen, ch, n, device=device, scale=0.5)),
                "B": _rand(gen, *bc, device=device, dtype=dtype),
                "C": _rand(gen, *bc, device=device, dtype=dtype),
                "D": f32(gen, ch, device=device),
                "delta_bias": f32(gen, ch, device=device, scale=0.1),
                "delta_softplus": True,
            }
            if with_z:
                kw["z"] = _rand(gen, *lay, device=device, dtype=dtype)
                kw["return_last_state"] = True
            if large_delta:  # delta + delta_bias in (10, 20) (softplus != identity in fp32), some 25 and 100
                big = torch.rand(*lay, generator=gen) * 10 + 10
                big.view(-1)[::7] = 25.0
                big.view(-1)[3::11] = 100.0
                kw["delta"] = big.to(device=device, dtype=dtype)
                kw["A"] = kw["A"] * 0.005  # decays that keep memory over a few tokens at dt ~ 15
            return kw

        return make

    g_ss = ("u", "delta", "A", "B", "C", "D", "delta_bias")
    lab = f"B={bsz} C={ch} L={seq} N={n}"
    cases.append(Case("selective_scan", lab, ss_inputs(False, False, False), g_ss, dtypes))
    cases.append(Case("selective_scan", lab + " G=2 z last_state", ss_inputs(False, True, True), g_ss + ("z",),
                      dtypes))
    cases.append(Case("selective_scan_channel_last", lab + " z", ss_inputs(True, False, True), g_ss + ("z",), dtypes))
    cases.append(Case("selective_scan", lab + " delta 10..100", ss_inputs(False, False, False, True), g_ss, dtypes))

    groups6 = (0, 1, 2, 0, 1, 2)
    tlab = f"B={bsz} THW={t}x{h}x{w} C={ch}"

    def make_scan(device, dtype, gen):
        return {"x": _rand(gen, bsz, seqlen, ch, device=device, dtype=dtype),
                "orders": scan_orders(thw, STS6D, device=device)}

    def make_merge(device, dtype, gen):
        return {"ys": _rand(gen, bsz, 6, seqlen, ch, device=device, dtype=dtype),
                "orders": scan_orders(thw, STS6D, device=device), "groups": groups6}

    cases.append(Case("space_time_scan", tlab + " K=6", make_scan, ("x",), dtypes))
    cases.append(Case("space_time_merge", tlab + " K=6 G=3", make_merge, ("ys",), dtypes))

    def make_ordered(windowed: bool):
        def make(device, dtype, gen):
            if windowed:
                win = (2, 3)
                of, rf = window_order(thw, win, device=device)
                ob, rb = window_order(thw, win, reverse=True, device=device)
                orders, reset, groups = torch.stack([of, ob]), torch.stack([rf, rb]), (0, 0)
            else:
                orders, reset, groups = scan_orders(thw, STS6D, device=device), None, groups6
            k = orders.shape[0]
            return {
                "x": _rand(gen, bsz, seqlen, ch, device=device, dtype=dtype),
                "delta": _rand(gen, bsz, k, seqlen, ch, device=device, dtype=dtype, scale=0.5, offset=-1.0),
                "A": -torch.exp(f32(gen, k, ch, n, device=device, scale=0.5)),
                "B": _rand(gen, bsz, k, seqlen, n, device=device, dtype=dtype),
                "C": _rand(gen, bsz, k, seqlen, n, device=device, dtype=dtype),
                "D": f32(gen, k, ch, device=device),
                "orders": orders, "groups": groups, "reset": reset,
                "delta_bias": f32(gen, k, ch, device=device, scale=0.1),
                "delta_softplus": True,
            }
        return make

    g_os = ("x", "delta", "A", "B", "C", "D", "delta_bias")
    cases.append(Case("ordered_selective_scan", tlab + f" N={n} K=6 G=3", make_ordered(False), g_os, dtypes))
    cases.append(Case("ordered_selective_scan", tlab + f" N={n} K=2 window 2x3", make_ordered(True), g_os, dtypes))

    def make_deform(temporal: bool):
        def make(device, dtype, gen):
            from glsmamba.reference.deformable import SPATIAL_TAPS, TEMPORAL_TAPS

            taps = torch.as_tensor(TEMPORAL_TAPS if temporal else SPATIAL_TAPS, dtype=torch.long).to(device)
            p, goff = taps.shape[0], 2
            return {
                "x": _rand(gen, bsz, seqlen, ch, device=device, dtype=dtype),
                "offsets": (torch.rand(bsz, seqlen, goff, p, 2, generator=gen) * 3 - 1.5).to(device, dtype),
                "mask": torch.sigmoid(torch.randn(bsz, seqlen, goff, p, generator=gen)).to(device, dtype),
                "weight": _rand(gen, p, ch, device=device, dtype=dtype),
                "taps": taps, "shape": thw,
            }
        return make

    g_df = ("x", "offsets", "mask", "weight")
    cases.append(Case("deformable_aggregate", tlab + " Goff=2 spatial 3x3", make_deform(False), g_df, dtypes))
    cases.append(Case("deformable_aggregate", tlab + " Goff=2 temporal 3", make_deform(True), g_df, dtypes))
    return cases


# ---------------------------------------------------------------------------------------------- network
def network_config(level: str, on_gpu: bool):
    """The GLSMamba config and input size of the whole-network check."""
    from glsmamba.model.config import get_config

    if on_gpu and level == "full":  # the paper's block counts and 8 x 6 windows, narrow trunk, 32 x 24 tokens
        return get_config("tiny", dim=64, d_state=16, num_gsm=4, num_lrm=2, window=(8, 6)), (1, 128, 96)
    if on_gpu and level == "default":
        return get_config("tiny"), (2, 64, 48)
    # CPU interpreter: tiny's structure narrowed (1 GSM + 1 LRM, D = 8, T = 3, 3 x 4 x 3 tokens, 3 x 2 windows)
    return get_config("tiny", num_frames=3, dim=8, num_gsm=1, num_lrm=1, window=(3, 2)), (2, 16, 12)


def perturb_for_check(net, seed: int) -> None:
    """Give STMM non-trivial offsets/masks/tap weights (their init is exactly the identity, where the bilinear
    sampling sits on its kinks), so the check exercises the deformable paths in both backends."""
    import torch

    from glsmamba.model.blocks import Modulator

    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, Modulator):
                w = m.offset_pw.weight
                w.copy_((torch.randn(w.shape, generator=gen) * 0.05).to(w))
                m.weight.add_((torch.randn(m.weight.shape, generator=gen) * 0.3).to(m.weight))


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """TF32 off and deterministic cuDNN while comparing whole networks: the convolutions and matmuls around the ops
    are shared by both backends, and TF32's 10-bit mantissa would turn 1e-7 differences coming out of a kernel into
    1e-3 ones, measuring TF32 rather than the kernels."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic) = saved


def check_network(level: str, device, seed: int) -> list[dict[str, Any]]:
    """Run one GLSMamba on both backends; compare output and every parameter gradient."""
    import torch

    from glsmamba.model import GLSMamba, use_backend

    on_gpu = device.type == "cuda"
    cfg, (bsz, hh, ww) = network_config(level, on_gpu)
    torch.manual_seed(seed)
    net = GLSMamba(cfg).to(device).train()
    perturb_for_check(net, seed)
    gen = torch.Generator(device="cpu").manual_seed(seed + 2)
    frames = torch.randn(bsz, cfg.num_frames, 3, hh, ww, generator=gen).to(device)
    label = (f"{cfg.name} D={cfg.dim} N={cfg.d_state} {cfg.num_gsm}GSM+{cfg.num_lrm}LRM "
             f"B={bsz} T={cfg.num_frames} {hh}x{ww}")
    results: dict[str, Any] = {}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with exact_float32():
        for backend in ("reference", "triton"):
            net.load_state_dict(state)  # BN running stats identical for both runs
            net.zero_grad(set_to_none=True)
            try:
                with use_backend(backend):
                    out = net(frames)
                cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 3)).to(out)
                (out * cot).sum().backward()
                grads = {n: (p.grad.clone() if p.grad is not None else None)
                         for n, p in net.named_parameters() if p.requires_grad}
                results[backend] = (out.detach().clone(), grads)
            except Exception as e:
                results[backend] = f"{type(e).__name__}: {e}"
    common = {"op": "GLSMamba (whole network)", "backend": "triton", "shape": label, "dtype": "float32"}
    ref, tri = results["reference"], results["triton"]
    if isinstance(ref, str) or isinstance(tri, str):
        msg = ref if isinstance(ref, str) else tri
        return [{**common, "check": c, "max_abs": math.inf, "rel_err": math.inf, "passed": False,
                 "note": msg[:300]} for c in ("fwd", "bwd")]
    rows = [{**common, "check": "fwd (heatmaps)", **compare(ref[0], tri[0], "float32", "fwd")}]
    per = {n: compare(ref[1][n], tri[1][n], "float32", "grad") for n in ref[1]}
    name, worst = max(per.items(), key=lambda kv: (not kv[1]["passed"], kv[1]["rel_err"]))
    rows.append({**common, "check": f"bwd {len(per)} params (worst: {name})", **worst,
                 "passed": all(s["passed"] for s in per.values())})
    return rows


# ---------------------------------------------------------------------------------------------- output
def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.2e}"


def print_table(header: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    for k, v in header.items():
        print(f"{k}: {v}")
    cols = [("op", "op"), ("backend", "backend"), ("check", "check"), ("shape", "shape"), ("dtype", "dtype"),
            ("max_abs", "max abs err"), ("rel_err", "rel err"), ("passed", "result")]
    cells = [[str(r[k]) if k not in ("max_abs", "rel_err", "passed") else
              (_fmt(r[k]) if k != "passed" else ("PASS" if r[k] else "FAIL")) for k, _ in cols] for r in rows]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (_, title) in enumerate(cols)]
    line = "  ".join(title.ljust(widths[i]) for i, (_, title) in enumerate(cols))
    print()
    print(line)
    print("-" * len(line))
    for r, c in zip(rows, cells, strict=True):
        print("  ".join(c[i].ljust(widths[i]) for i in range(len(cols))))
        if r.get("note"):
            print(f"    note: {r['note']}")
    failed = sum(not r["passed"] for r in rows)
    print()
    print(f"{len(rows) - failed}/{len(rows)} checks passed" + (f", {failed} FAILED" if failed else ""))


def run(args: argparse.Namespace) -> int:
    problem = prepare_environment()  # first: nothing may import triton before this

    import torch

    from glsmamba.model import backend as registry

    on_gpu = torch.cuda.is_available() and not registry.interpreter_enabled()
    device = torch.device("cuda" if on_gpu else "cpu")
    level = args.level or ("default" if on_gpu else "quick")
    start = time.time()
    header = {
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu (Triton interpreter)",
        "torch": torch.__version__,
        "triton": _triton_version(),
        "level": level,
        "tolerances": "tests/harness.py: |out - ref| <= atol + rtol * |ref|, grads x5",
    }
    rows: list[dict[str, Any]] = []
    threads = torch.get_num_threads()
    if not on_gpu:  # tiny CPU tensors: intra-op threads only add overhead (and contention on shared machines)
        torch.set_num_threads(1)
    try:
        _run_checks(args, level, device, on_gpu, problem, rows)
    finally:
        torch.set_num_threads(threads)
    header["seconds"] = round(time.time() - start, 1)
    ok = all(r["passed"] for r in rows)
    if args.json:
        print(json.dumps(_jsonable({**header, "passed": ok, "rows": rows}), indent=2))
    else:
        print_table(header, rows)
    return 0 if ok else 1


def _run_checks(args: argparse.Namespace, level: str, device, on_gpu: bool, problem: str | None,
                rows: list[dict[str, Any]]) -> None:
    from glsmamba.model import backend as registry

    if problem is None:
        reason = registry.triton_unavailable_reason(device)
        problem = reason
    if problem is not None:
        rows.append({"op": "*", "backend": "triton", "check": "available", "shape": "-", "dtype": "-",
                     "max_abs": math.inf, "rel_err": math.inf, "passed": False, "note": problem})
    else:
        for case in build_cases(level, on_gpu):
            if args.ops and case.op not in args.ops:
                continue
            for dt in case.dtypes:
                rows.extend(_rows_for_case(case, device, dt, args.seed))
        if not args.no_model:
            rows.extend(check_network(level, device, args.seed))


def _jsonable(o: Any) -> Any:
    """Strict JSON: non-finite floats become the strings "inf" / "nan"."""
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    if isinstance(o, dict):
        return {k: _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    return o


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except Exception as e:  # pragma: no cover - depends on the install
        return f"not importable ({type(e).__name__})"
