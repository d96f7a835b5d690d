"""Fused direction-aware scan vs the unfused three-step pipeline vs the reference, on whatever device is here.

    python -m glsmamba.bench.bench_ordered_scan                       # 5 x 64 x 48 tokens, STS6D (K=6, 3 groups)
    python -m glsmamba.bench.bench_ordered_scan --mode fwd+bwd --dtype bf16 --batch 4
    python -m glsmamba.bench.bench_ordered_scan --out DIR              # also append rows to DIR/ordered_scan_fused.csv

Implementations timed (same inputs, same result):
  * ``fused``     ``ordered_selective_scan`` (Triton): each order read in place from natural-order tensors.
  * ``unfused``   ``space_time_scan`` (x) + gathers of the per-direction delta/B/C into scan order +
                  ``selective_scan_channel_last`` (directions folded into channels, one call) +
                  ``space_time_merge``, all through the Triton backend.
  * ``reference`` ``reference.ordered_scan.ordered_selective_scan`` (pure PyTorch).
On CPU the Triton rows need ``TRITON_INTERPRET=1`` and are skipped unless ``--interpret`` is given (the
interpreter is far too slow for 15k tokens; use ``--shape 2 3 5`` with it). GPU timings use
``triton.testing.do_bench`` (median of its repetitions, L2 flushed); CPU timings are wall-clock medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def unfused_ordered_scan(x, delta, A, B, C, D, orders, groups, delta_bias=None, delta_softplus=True,
                         backend: str | None = None):
    """``space_time_scan -> selective_scan_channel_last -> space_time_merge`` through the registry.

    The K directions are folded into the channel axis of one selective-scan call (channel ``k*C + c``; B and C
    grouped per direction), the way VMamba runs its cross-scan. Same contract as ``ordered_selective_scan``
    without ``reset``. Returns ``[Bsz, G, L, C]``.
    """
    from glsmamba.model.backend import get_op

    scan, merge = get_op("space_time_scan", backend), get_op("space_time_merge", backend)
    ss = get_op("selective_scan_channel_last", backend)
    Bsz, L, Cch = x.shape
    K, N = A.shape[0], A.shape[2]
    xs = scan(x, orders)  # (Bsz, K, L, C) in scan order

    def to_scan_order(t: torch.Tensor) -> torch.Tensor:  # per-direction natural-order (Bsz, K, L, W) -> scan order
        return torch.gather(t, 2, orders[None, :, :, None].expand(Bsz, K, L, t.shape[-1]))

    u = xs.permute(0, 2, 1, 3).reshape(Bsz, L, K * Cch)
    dl = to_scan_order(delta).permute(0, 2, 1, 3).reshape(Bsz, L, K * Cch)
    Bs = to_scan_order(B).permute(0, 2, 1, 3)  # (Bsz, L, K, N): group k = direction k
    Cs = to_scan_order(C).permute(0, 2, 1, 3)
    y = ss(u, dl, A.reshape(K * Cch, N), Bs, Cs, None if D is None else D.reshape(-1), None,
           None if delta_bias is None else delta_bias.reshape(-1), delta_softplus)
    ys = y.view(Bsz, L, K, Cch).permute(0, 2, 1, 3).contiguous()
    return merge(ys, orders, groups)


def make_inputs(batch: int, shape: Sequence[int], channels: int, dstate: int, dtype: torch.dtype,
                device: torch.device, seed: int = 0) -> dict:
    """The shared ordered-scan inputs (``glsmamba.verify.cases``) for the six STS6D orders, with realistic small
    steps (softplus(-2) ~ 0.13)."""
    from glsmamba.reference.space_time import STS6D, STS6D_GROUPS, scan_orders
    from glsmamba.verify.cases import ordered_scan_inputs

    inputs = ordered_scan_inputs(len(STS6D), batch=batch, shape=shape, channels=channels, dstate=dstate, dtype=dtype,
                                 device=device, generator=seed, dt_shift=-2.0)
    return {**inputs, "orders": scan_orders(tuple(shape), STS6D, device=device), "groups": STS6D_GROUPS}


def _timer(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=5, rep=max(20, 10 * reps)))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _runner(impl: str, inputs: dict, mode: str) -> Callable[[], object]:
    from glsmamba.model.backend import get_impl

    if impl == "fused":
        fn = get_impl("ordered_selective_scan", "triton")
    elif impl == "unfused":
        fn = lambda **kw: unfused_ordered_scan(**kw, backend="triton")  # noqa: E731
    else:
        fn = get_impl("ordered_selective_scan", "reference")
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(**inputs)
        return run
    leaves = {k: (v.detach().requires_grad_(True) if k in ("x", "delta", "B", "C") else v) for k, v in inputs.items()}
    dy = None

    def run_fb():
        nonlocal dy
        out = fn(**leaves)
        if dy is None:
            dy = torch.randn_like(out)
        out.backward(dy)
        for k in ("x", "delta", "B", "C"):
            leaves[k].grad = None
    return run_fb


def _write_csv(rows: list[dict], out: str, device: torch.device) -> None:
    """Append ``rows`` to ``out/ordered_scan_fused.csv`` in the harness schema (one run id, environment columns)."""
    from pathlib import Path

    from glsmamba.bench.harness import CsvWriter, environment, now_iso

    env = environment(device)
    env.pop("_peaks")
    writer = CsvWriter(Path(out) / "ordered_scan_fused.csv")
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-ordered-scan-fused"
    for r in rows:
        writer.write({
            "run_id": run_id, "timestamp": now_iso(), "op": r["op"], "variant": "sts6d", "backend": r["impl"],
            "mode": r["mode"], "status": r["status"], "note": r["note"], "B": r["B"], "T": r["T"], "H": r["H"],
            "W": r["W"], "C": r["C"], "N": r["N"], "K": r["K"], "dtype": r["dtype"], "tokens": r["T"] * r["H"] * r["W"],
            "ms_p50": r["ms"], "timer": "do_bench" if device.type == "cuda" else "wallclock", **env,
        })  # fmt: skip


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Time the three implementations; prints one line per row and returns the rows (dicts)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--shape", type=int, nargs=3, default=(5, 64, 48), metavar=("T", "H", "W"))
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--dstate", type=int, default=16)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--mode", choices=("fwd", "fwd+bwd"), default="fwd")
    p.add_argument("--impls", nargs="+", default=("fused", "unfused", "reference"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--interpret", action="store_true", help="on CPU, also time the Triton rows (interpreter)")
    p.add_argument("--out", default=None,
                   help="folder: append the rows to ordered_scan_fused.csv (the bench harness schema, with device "
                        "and versions; backend fused/unfused/reference)")
    args = p.parse_args(argv)
    if args.interpret and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first import of triton
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype] if device.type == "cuda" else torch.float32
    inputs = make_inputs(args.batch, args.shape, args.channels, args.dstate, dtype, device)
    rows: list[dict] = []
    T, H, W = args.shape
    for impl in args.impls:
        row = dict(op="ordered_selective_scan", impl=impl, mode=args.mode, device=str(device), B=args.batch,
                   T=T, H=H, W=W, C=args.channels, N=args.dstate, K=6, dtype=str(dtype).replace("torch.", ""))
        if impl != "reference" and device.type == "cpu" and not args.interpret:
            row.update(status="skip", ms=float("nan"), note="Triton on CPU needs --interpret (TRITON_INTERPRET=1)")
        else:
            try:
                run = _runner(impl, inputs, args.mode)
                run()  # warm-up: JIT compilation excluded from the timing
                row.update(status="ok", ms=_timer(run, device, args.reps), note="")
            except Exception as e:  # keep the other rows
                row.update(status="error", ms=float("nan"), note=f"{type(e).__name__}: {e}"[:200])
        rows.append(row)
    if args.out:
        _write_csv(rows, args.out, device)
    ms = {r["impl"]: r["ms"] for r in rows if r["status"] == "ok"}
    for r in rows:
        extra = ""
        if r["status"] == "ok" and "fused" in ms and r["impl"] != "fused":
            extra = f"  fused speedup x{r['ms'] / ms['fused']:.2f}"
        print(f"{r['impl']:>10} {r['mode']:>8} {r['dtype']:>9} {r['device']:>6} B={r['B']} THW={T}x{H}x{W} "
              f"C={r['C']} N={r['N']} K=6: {r['status']:>5} {r['ms']:10.3f} ms{extra} {r['note']}")
    return rows


if __name__ == "__main__":
    main()
