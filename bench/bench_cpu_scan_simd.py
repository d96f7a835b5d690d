"""What a hand-written CPU kernel would gain over the reference's compiled scan steps (issue 14), measured.

The base network's GSM scan (no grad, dt/B/C shared by the directions: K = 6 space-time orders of a 5 x 64 x 48
grid, 512 channels, N = 16) steps through :func:`reference.ordered_scan.gathered_steps`, compiled by Inductor, 16
tokens per call. ``bench/cpu_scan_simd.cpp`` is the same work written by hand for AVX2 + FMA (a measurement
prototype, not a backend: the reference backend is PyTorch only). This script builds it with the system's C++
compiler (g++ or ``$CXX``), runs both on the same random inputs (the real scan orders), holds the prototype's
outputs to the reference's (fp32 tolerance of the test table), and prints the time per (token, direction, state,
channel) of each, with the prototype also built without its exponential (its floor). One JSON line per run to
``--out``.

    python -m glsmamba.bench.bench_cpu_scan_simd [--threads 2] [--frames 5 --height 64 --width 48] [--out FILE]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from glsmamba.bench.harness import append_record, environment, now_iso
from glsmamba.verify.tolerances import compare

SOURCE = Path(__file__).with_name("cpu_scan_simd.cpp")


def build(no_exp: bool = False, out_dir: str | None = None) -> ctypes.CDLL:
    """The prototype as a shared library (``-O3 -mavx2 -mfma -fopenmp``; the polynomial's coefficients from the
    reference's exp2). Raises RuntimeError naming the compiler when there is none or the build fails."""
    from glsmamba.reference._scan_seq import _EXP2_COEFFS

    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx:
        raise RuntimeError("bench_cpu_scan_simd needs a C++ compiler: no g++ on PATH and CXX is not set")
    out = Path(out_dir or tempfile.mkdtemp(prefix="glsm_simd_")) / f"cpu_scan_simd{'_noexp' if no_exp else ''}.so"
    defs = [f"-DCOEF{k}={c!r}f" for k, c in enumerate(_EXP2_COEFFS)] + (["-DGLSM_NO_EXP"] if no_exp else [])
    cmd = [cxx, "-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", *defs, str(SOURCE), "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"building {SOURCE.name} failed ({' '.join(cmd)}):\n{res.stderr[-2000:]}")
    lib = ctypes.CDLL(str(out))
    lib.gathered_steps.argtypes = [ctypes.c_void_p] * 9 + [ctypes.c_int64] * 5
    lib.gathered_steps.restype = None
    return lib


def simd_scan(lib: ctypes.CDLL, x, dt, Bn, Cn, idx, A2, Dsk, threads: int, h: torch.Tensor | None = None):
    """The prototype over the steps of ``idx``: x, dt ``(M, D)``, Bn, Cn ``(M, N)`` natural order, idx ``(L, R)``
    (the natural token of each step and row), A2 ``(N, D)``, Dsk ``(R, D)`` or None; fp32 contiguous. ``h``: the
    state entering the steps, ``(R, N, D)``, updated in place (zeros when None). Returns ``(y (L, R, D), h)``."""
    D, (L, R), N = x.shape[1], idx.shape, Bn.shape[1]
    if D % 8 or N % 8:
        raise ValueError(f"the prototype takes channels and states in multiples of 8, got D={D}, N={N}")
    h = torch.zeros(R, N, D) if h is None else h
    ts = [t for t in (x, dt, Bn, Cn, idx, A2, Dsk, h) if t is not None]
    if any(not t.is_contiguous() for t in ts) or any(t.dtype != torch.float32 for t in ts if t is not idx):
        raise TypeError("simd_scan takes contiguous fp32 tensors (idx int64)")
    y = torch.empty(L, R, D)
    lib.gathered_steps(x.data_ptr(), dt.data_ptr(), Bn.data_ptr(), Cn.data_ptr(), idx.data_ptr(), A2.data_ptr(),
                       None if Dsk is None else Dsk.data_ptr(), h.data_ptr(), y.data_ptr(), L, R, N, D, threads)
    return y, h


def reference_scan(x, dt, Bn, Cn, idx, A2, Dsk, compiled: bool = True):
    """The reference's no-grad path on the same inputs: ``gathered_steps`` per block of ``BLOCK`` tokens (compiled
    for full blocks when ``compiled``), one call per block as the op makes them (the op's ``index_add_`` of each
    block into the group sums is left out; the blocks' outputs are concatenated instead). Returns
    ``(y (L, R, D), h (R, N, D))``."""
    from glsmamba.reference import _scan_seq
    from glsmamba.reference.ordered_scan import gathered_steps

    L, D = x.shape
    R = idx.shape[1]
    h = torch.zeros(R, D, Bn.shape[1])
    A2c = A2.t().contiguous()[None].expand(R, D, -1).contiguous()
    dirs, ys = torch.arange(R), []
    with torch.no_grad():
        for s in range(0, L, _scan_seq.BLOCK):
            ix = idx[s:s + _scan_seq.BLOCK]
            args = (h, x[None], dt[None], (Bn[None], False), (Cn[None], False), ix, dirs, A2c, Dsk[:, None])
            run = compiled and ix.shape[0] == _scan_seq.BLOCK
            y, h = _scan_seq.run_compiled(gathered_steps, *args) if run else gathered_steps(*args)
            ys.append(y.view(-1, R, D))
    return torch.cat(ys), h.transpose(1, 2).contiguous()


def inputs(shape: tuple[int, int, int], channels: int, dstate: int, seed: int = 0):
    """Random inputs of the base GSM scan's kind on a ``(T, H, W)`` grid: softplus-like dt, A2 = A log2(e) of an
    S4D-real A, the six space-time orders (sts6d) as ``idx (L, 6)``."""
    from glsmamba.reference import _scan_seq
    from glsmamba.reference.space_time import STS6D, scan_orders

    g = torch.Generator().manual_seed(seed)
    L = shape[0] * shape[1] * shape[2]
    A = -torch.arange(1, dstate + 1, dtype=torch.float32)[:, None].expand(dstate, channels).contiguous()
    return dict(x=torch.randn(L, channels, generator=g), dt=torch.rand(L, channels, generator=g) * 0.2,
                Bn=torch.randn(L, dstate, generator=g), Cn=torch.randn(L, dstate, generator=g),
                idx=scan_orders(shape, STS6D).t().contiguous(), A2=A * _scan_seq._LOG2E,
                Dsk=torch.randn(6, channels, generator=g))


def patch_reference(lib: ctypes.CDLL, threads: int) -> None:
    """Makes the reference's no-grad ordered scan step its full blocks through the prototype (a measurement for
    ``bench_network_cpu --simd-gsm-scan``; process-wide, not undone): ``gathered_steps`` is replaced by a function
    of the same contract that calls the prototype on the block's 16 tokens (the state transposed to its layout and
    back per call), and ``run_compiled`` runs it directly. Only one batch row, with x, dt, B and C shared by the
    directions and fp32 (the base network's GSM scans); anything else raises."""
    from glsmamba.reference import _scan_seq, ordered_scan

    compiled_run = _scan_seq.run_compiled

    def steps(h, x, dt, B, C, ix, dirs, A2, D_rows):
        if x.shape[0] != 1 or B[1] or C[1]:
            raise ValueError("the prototype takes one batch row, B and C shared by the directions")
        m, S = ix.shape
        Cch = x.shape[2]
        dsk = None if D_rows is None else D_rows.reshape(S, Cch).contiguous()
        y, state = simd_scan(lib, x[0], dt[0], B[0][0], C[0][0], ix.contiguous(), A2[0].t().contiguous(), dsk,
                             threads, h=h.transpose(1, 2).contiguous())  # the state as (R, N, C)
        return y.view(m, S, 1, Cch), state.transpose(1, 2).contiguous()

    def run(fn, *args):
        return steps(*args) if fn is steps else compiled_run(fn, *args)

    ordered_scan.gathered_steps = steps
    _scan_seq.run_compiled = run


def _best(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=48)
    p.add_argument("--channels", type=int, default=512)
    p.add_argument("--dstate", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="threads of both (torch's intra-op and OpenMP's)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=None, help="append one JSON line with the results to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    shape = (args.frames, args.height, args.width)
    inp = inputs(shape, args.channels, args.dstate)
    L, R = inp["idx"].shape
    elems = L * R * args.channels * args.dstate
    lib, floor_lib = build(), build(no_exp=True)
    want_y, want_h = reference_scan(**inp)  # also compiles
    got_y, got_h = simd_scan(lib, **inp, threads=args.threads)
    for name, want, got in (("y", want_y, got_y), ("last state", want_h, got_h)):
        result = compare(want, got, torch.float32, "fwd")
        if not result.passed:
            raise SystemExit(result.message(f"AVX2 prototype {name}", "fwd", torch.float32))
    err = max((got_y - want_y).abs().max().item() / want_y.abs().max().item(),
              (got_h - want_h).abs().max().item() / want_h.abs().max().item())
    ref_s = _best(lambda: reference_scan(**inp), args.reps)
    simd_s = _best(lambda: simd_scan(lib, **inp, threads=args.threads), args.reps)
    floor_s = _best(lambda: simd_scan(floor_lib, **inp, threads=args.threads), args.reps)
    env = environment(torch.device("cpu"))
    env.pop("_peaks")
    rec = {"timestamp": now_iso(), "grid": list(shape), "tokens": L, "directions": R, "channels": args.channels,
           "dstate": args.dstate, "threads": args.threads, "reference_s": ref_s, "simd_s": simd_s,
           "simd_without_exp_s": floor_s, "reference_ns_per_elem": ref_s / elems * 1e9,
           "simd_ns_per_elem": simd_s / elems * 1e9, "simd_without_exp_ns_per_elem": floor_s / elems * 1e9,
           "speedup": ref_s / simd_s, "max_rel_diff": err, "load_1min": os.getloadavg()[0],
           "device": env["device"], "torch": env["torch"], "commit": env["commit"]}
    print(f"ordered scan steps, no grad: {L} tokens x {R} directions x {args.channels} channels x {args.dstate} "
          f"states, {args.threads} threads, {env['device']}, torch {env['torch']}, best of {args.reps}")
    print(f"reference gathered_steps (Inductor) {ref_s * 1e3:.0f} ms = {rec['reference_ns_per_elem']:.3f} ns per "
          f"element-state; AVX2 prototype {simd_s * 1e3:.0f} ms = {rec['simd_ns_per_elem']:.3f} ns "
          f"({rec['speedup']:.2f}x), without its exponential {rec['simd_without_exp_ns_per_elem']:.3f} ns; "
          f"outputs agree to {err:.1e} of their largest")
    append_record(args.out, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
