"""Vectorised reference vs the recurrent oracle: ``reference.selective_scan`` speed on CPU.

Times ``selective_scan`` (chunked closed form) and ``selective_scan_recurrent`` (one step per token) forward at
B=1, D=256, N=16, L=15360 (5 x 64 x 48 tokens), fp32, no grad, prints the ratio, and appends one CSV row per
implementation through the bench harness (backend ``reference`` and ``recurrent``). The foundation issue asks
for >= 10x.

    python -m glsmamba.bench.bench_reference_speed [--out DIR] [--L 15360] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from glsmamba.bench.cases import selective_scan_traffic
from glsmamba.bench.harness import CsvWriter, environment, now_iso, roofline, time_cpu, time_first_call
from glsmamba.verify.cases import selective_scan_inputs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--D", type=int, default=256)
    p.add_argument("--N", type=int, default=16)
    p.add_argument("--L", type=int, default=15360)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--budget-s", type=float, default=3.0, help="wall-clock budget per implementation")
    p.add_argument("--out", default=None, help="folder for reference_speed.csv (default bench/results/local)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from glsmamba.reference.selective_scan import selective_scan, selective_scan_recurrent

    device = torch.device("cpu")
    Bsz, D, N, L = args.B, args.D, args.N, args.L
    inputs = selective_scan_inputs(batch=Bsz, dim=D, length=L, dstate=N, has_z=False, init="mamba")

    out_dir = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / "local"
    writer = CsvWriter(out_dir / "reference_speed.csv")
    env = environment(device)
    peaks = env.pop("_peaks")
    traffic = selective_scan_traffic(Bsz, D, L, N, 4)["fwd"]
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-reference-speed"
    medians = {}
    outputs = {}
    for name, fn in (("reference", selective_scan), ("recurrent", selective_scan_recurrent)):
        with torch.no_grad():

            def call(fn=fn, name=name):
                outputs[name] = fn(**inputs, delta_softplus=True)

            first = time_first_call(call, device)
            timing = time_cpu(call, budget_s=args.budget_s, min_reps=3, max_reps=20)
        medians[name] = timing.p50
        row = {
            "run_id": run_id, "timestamp": now_iso(), "op": "selective_scan", "variant": "", "backend": name,
            "mode": "fwd", "status": "ok", "note": "bench_reference_speed.py", "B": Bsz, "T": "", "H": "", "W": "",
            "C": D, "N": N, "dtype": "float32", "tokens": L, "ms_p20": timing.p20, "ms_p50": timing.p50,
            "ms_p80": timing.p80, "compile_ms": first, "reps": timing.reps, "timer": timing.timer,
            **roofline(timing.p50, *traffic, peaks), **env,
        }  # fmt: skip
        writer.write(row)
        print(f"{name:<10} p50 {timing.p50:10.1f} ms  (p20 {timing.p20:.1f}, p80 {timing.p80:.1f}, {timing.reps} reps)")
    err = (outputs["reference"] - outputs["recurrent"]).abs().max().item()
    scale = outputs["recurrent"].abs().max().item()
    ratio = medians["recurrent"] / medians["reference"]
    print(f"B={Bsz} D={D} N={N} L={L} fp32 fwd, {torch.get_num_threads()} threads: vectorised reference is "
          f"{ratio:.1f}x faster than the recurrent oracle (target >= 10x); max |diff| {err:.2e} "
          f"(max |y| {scale:.2e}) -> {writer.path}")  # fmt: skip
    return 0 if math.isfinite(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
