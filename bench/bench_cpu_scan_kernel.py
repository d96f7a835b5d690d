"""The reference's no-grad ordered scan on CPU: its C++ kernel against its compiled PyTorch steps, measured.

The base network's GSM scan (no grad; x, dt, B and C shared by the directions as the model passes them: K = 6
space-time orders of a 5 x 64 x 48 grid, 512 channels, N = 16) through
:func:`glsmamba.reference.ordered_scan.ordered_selective_scan`, once with ``GLSMAMBA_CPU_KERNEL=1`` (the steps by
``reference/_cpu_kernels.cpp``) and once with ``0`` (the PyTorch steps: under ``GLSMAMBA_SCAN_COMPILE=auto``, the
Inductor-compiled ``gathered_steps``, 16 tokens per call), alternated, best of ``--reps`` each. Prints the time per
(token, direction, state, channel) of both and of the kernel's calls within the op, the ratio, and how far the two
outputs are apart (they must pass the fp32 tolerance of the test table); one JSON line per run to ``--out``.

    python -m glsmamba.bench.bench_cpu_scan_kernel [--threads 2] [--frames 5 --height 64 --width 48] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from glsmamba.bench.harness import append_record, environment, now_iso
from glsmamba.verify.tolerances import compare


def inputs(shape: tuple[int, int, int], channels: int, dstate: int, seed: int = 0) -> dict:
    """Keyword arguments of ``ordered_selective_scan`` of the base GSM scan's kind on a ``(T, H, W)`` grid: the six
    space-time orders (sts6d) in their three groups, delta, delta_bias, B and C one tensor for all directions
    (zero-stride views), an S4D-real A per direction, D per direction."""
    from glsmamba.reference.space_time import STS6D, STS6D_GROUPS, scan_orders

    g = torch.Generator().manual_seed(seed)
    L = shape[0] * shape[1] * shape[2]
    K = len(STS6D)
    A = -torch.arange(1, dstate + 1, dtype=torch.float32).expand(K, channels, dstate).contiguous()
    return dict(x=torch.randn(1, L, channels, generator=g),
                delta=(torch.randn(1, 1, L, channels, generator=g) - 2).expand(1, K, L, channels),
                A=A, B=torch.randn(1, 1, L, dstate, generator=g).expand(1, K, L, dstate),
                C=torch.randn(1, 1, L, dstate, generator=g).expand(1, K, L, dstate),
                D=torch.randn(K, channels, generator=g),
                delta_bias=(torch.rand(1, channels, generator=g) - 4).expand(K, channels),
                orders=scan_orders(shape, STS6D), groups=STS6D_GROUPS)


def _run(inp: dict, kernel: str) -> torch.Tensor:
    from glsmamba.reference.ordered_scan import ordered_selective_scan

    prev = os.environ.get("GLSMAMBA_CPU_KERNEL")
    os.environ["GLSMAMBA_CPU_KERNEL"] = kernel
    try:
        with torch.no_grad():
            return ordered_selective_scan(**inp)
    finally:
        if prev is None:
            os.environ.pop("GLSMAMBA_CPU_KERNEL")
        else:
            os.environ["GLSMAMBA_CPU_KERNEL"] = prev


def _time_kernel_calls(run):
    """``(seconds of run(), seconds of it inside the kernel's calls)``: ``_cpu_kernels.gathered_scan`` timed while
    ``run`` steps the op (the op's softplus, group-sum zeros and cast are outside the calls)."""
    from glsmamba.reference import _cpu_kernels

    inner, inside = _cpu_kernels.gathered_scan, [0.0]

    def timed(*args):
        t0 = time.perf_counter()
        try:
            return inner(*args)
        finally:
            inside[0] += time.perf_counter() - t0

    _cpu_kernels.gathered_scan = timed
    try:
        t0 = time.perf_counter()
        run()
        return time.perf_counter() - t0, inside[0]
    finally:
        _cpu_kernels.gathered_scan = inner


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=48)
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--dstate", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch's intra-op threads (the kernel uses as many)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=None, help="append one JSON line with the results to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from glsmamba.reference import _cpu_kernels

    reason = _cpu_kernels.unavailable_reason()
    if reason is not None:
        raise SystemExit(reason)
    shape = (args.frames, args.height, args.width)
    inp = inputs(shape, args.channels, args.dstate)
    L, K = inp["x"].shape[1], inp["orders"].shape[0]
    elems = L * K * args.channels * args.dstate
    want, got = _run(inp, "0"), _run(inp, "1")  # the first also compiles the PyTorch steps
    result = compare(want, got, torch.float32, "fwd")
    if not result.passed:
        raise SystemExit(result.message("CPU kernel vs PyTorch steps", "fwd", torch.float32))
    err = (got - want).abs().max().item() / want.abs().max().item()
    best = {"pytorch": float("inf"), "kernel": float("inf"), "alone": float("inf")}
    for _ in range(args.reps):
        t0 = time.perf_counter()
        _run(inp, "0")
        best["pytorch"] = min(best["pytorch"], time.perf_counter() - t0)
        op_s, call_s = _time_kernel_calls(lambda: _run(inp, "1"))
        best["kernel"], best["alone"] = min(best["kernel"], op_s), min(best["alone"], call_s)
    env = environment(torch.device("cpu"))
    env.pop("_peaks")
    ns = {k: v / elems * 1e9 for k, v in best.items()}
    rec = {"timestamp": now_iso(), "grid": list(shape), "tokens": L, "directions": K, "channels": args.channels,
           "dstate": args.dstate, "threads": args.threads, "reps": args.reps,
           "glsmamba_scan_compile": os.environ.get("GLSMAMBA_SCAN_COMPILE", "auto"),
           "pytorch_steps_s": best["pytorch"], "kernel_s": best["kernel"], "kernel_call_s": best["alone"],
           "pytorch_steps_ns_per_elem": ns["pytorch"], "kernel_ns_per_elem": ns["kernel"],
           "kernel_call_ns_per_elem": ns["alone"], "speedup": best["pytorch"] / best["kernel"],
           "max_rel_diff": err, "load_1min": os.getloadavg()[0], "device": env["device"], "torch": env["torch"],
           "commit": env["commit"]}
    print(f"ordered selective scan, no grad: {L} tokens x {K} directions x {args.channels} channels x {args.dstate} "
          f"states, {args.threads} threads, {env['device']}, torch {env['torch']}, best of {args.reps}")
    print(f"PyTorch steps (GLSMAMBA_SCAN_COMPILE={rec['glsmamba_scan_compile']}) {best['pytorch'] * 1e3:.0f} ms = "
          f"{ns['pytorch']:.3f} ns per element-state; C++ kernel {best['kernel'] * 1e3:.0f} ms = {ns['kernel']:.3f} "
          f"ns ({rec['speedup']:.2f}x), its calls {best['alone'] * 1e3:.0f} ms = {ns['alone']:.3f} ns; outputs "
          f"agree to {err:.1e} of their largest")
    append_record(args.out, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
