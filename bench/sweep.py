"""The resolution sweep: every target x backend x mode x (T, H, W), one CSV row per measurement, then plots.

``python -m glsmamba.bench [options]`` and ``glsmamba bench [options]`` run :func:`run`. Nothing here crashes on a
failing measurement: out-of-memory is recorded as status ``oom``, other exceptions as ``error`` (with the
message in ``note``), and points that are skipped on purpose (time budget, predicted too slow, compile size
limit) as ``skip``. Targets or backends that cannot run at all here (triton without CUDA, mambapy not
installed) are skipped with one printed reason each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from glsmamba.bench import cases
from glsmamba.bench.cases import Case, Shape, Target
from glsmamba.bench.harness import (
    MODES,
    CsvWriter,
    Skip,
    cpu_available_bytes,
    environment,
    first_line,
    free_memory,
    is_oom,
    measure_memory,
    now_iso,
    read_rows,
    roofline,
    time_cpu,
    time_cuda,
    time_first_call,
)

FULL_T = (1, 5, 8, 16)
FULL_HW = ((16, 12), (32, 24), (64, 48), (128, 96))
QUICK_T = (1, 5)
QUICK_HW = ((16, 12), (32, 24))
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CSV_NAME = "results.csv"


# --------------------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------------------


def _hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--hw expects HxW like 64x48, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"--hw sizes must be >= 1, got {text!r}")
    return h, w


def _positive(text: str) -> int:
    value = int(text) if text.strip().lstrip("+-").isdigit() else None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sweep's options (shared by ``python -m glsmamba.bench`` and ``glsmamba bench``)."""
    g = parser.add_argument_group("what to run")
    g.add_argument("--quick", action="store_true", help="small sweep (T in 1,5; 16x12 and 32x24; C=64): < 2 min on CPU")
    g.add_argument(
        "--ops",
        nargs="+",
        default=None,
        metavar="NAME",
        help="targets to run: op names (selective_scan, ordered_selective_scan, ...), op[variant], "
        "or groups 'ops', 'net', 'baselines' (default: all)",
    )
    g.add_argument(
        "--backends",
        nargs="+",
        default=None,
        metavar="NAME",
        help="backends to run: reference triton compile sdpa sdpa_math mambapy (default: all)",
    )
    g.add_argument(
        "--modes",
        nargs="+",
        default=None,
        choices=MODES,
        help="modes to time (default: all three; --quick: fwd and fwd+bwd)",
    )
    g.add_argument(
        "--T", nargs="+", type=_positive, default=None, help=f"frames (default {FULL_T}, quick {QUICK_T})"
    )
    g.add_argument(
        "--hw",
        nargs="+",
        type=_hw,
        default=None,
        metavar="HxW",
        help="token grids per frame (default 16x12 32x24 64x48 128x96; quick 16x12 32x24)",
    )
    g.add_argument("--B", type=_positive, default=None, help="op batch (default 2, quick 1)")
    g.add_argument("--C", type=_positive, default=None, help="op channels D (default 384, quick 64)")
    g.add_argument("--N", type=_positive, default=16, help="state size (default 16)")
    g.add_argument("--net-batch", type=_positive, default=1, help="batch for the networks (default 1)")
    g.add_argument(
        "--net-width",
        type=_positive,
        default=None,
        help="width of the networks (default: the GLSMamba preset's width; else 192, quick 64)",
    )
    g.add_argument(
        "--model-preset",
        default=None,
        help=f"GLSMamba preset (default {cases.MODEL_PRESET_CUDA!r} on CUDA, {cases.MODEL_PRESET_CPU!r} on CPU)",
    )
    g.add_argument("--dtype", default="auto", choices=("auto", *DTYPES), help="auto: bf16 on CUDA, fp32 on CPU")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; quick on CPU: 1, steadier on a shared host)",
    )
    g = parser.add_argument_group("limits")
    g.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="S",
        help="stop measuring after S seconds (remaining points are recorded as skip); quick default 75",
    )
    g.add_argument(
        "--max-call-s",
        type=float,
        default=None,
        metavar="S",
        help="skip a point whose single call is predicted (from the previous size) to take > S seconds "
        "(default 5 on CUDA, 2 on CPU, 1 with --quick on CPU)",
    )
    g.add_argument(
        "--compile-max-tokens",
        type=int,
        default=16384,
        help="largest token count compiled with torch.compile (the selective-scan reference traces a "
        "fixed-size graph, but the ordered-scan reference loops over directions and window sizes; default 16384)",
    )
    g.add_argument(
        "--compile-cpu",
        action="store_true",
        help="also bench torch.compile on CPU (inductor's C++ build takes tens of seconds per case)",
    )
    g.add_argument("--rep-ms", type=int, default=100, help="do_bench repetition time per measurement (CUDA)")
    g.add_argument("--cpu-budget-s", type=float, default=None, help="wall-clock budget per CPU measurement")
    g = parser.add_argument_group("output")
    g.add_argument("--out", default=None, help="output folder (default bench/results/local/<timestamp>)")
    g.add_argument("--no-plot", action="store_true", help="write the CSV only")
    g.add_argument(
        "--skip-existing",
        action="store_true",
        help="append to DIR/results.csv, skipping points it already has as ok or oom (resume / combine)",
    )
    g.add_argument(
        "--plot-only", default=None, metavar="DIR", help="only (re)draw plots + summary from DIR/results.csv"
    )
    g.add_argument("-q", "--quiet", action="store_true", help="print only skip reasons and the output paths")


# --------------------------------------------------------------------------------------------------------------
# Sweep
# --------------------------------------------------------------------------------------------------------------


def _select(all_targets: list[Target], names: Sequence[str] | None) -> list[Target]:
    if not names:
        return all_targets
    groups = {
        "ops": [t for t in all_targets if t.kind == "op" and t.op != "attention"],
        "net": [t for t in all_targets if t.kind == "net"],
        "baselines": [t for t in all_targets if t.op in ("attention", "attention_net")],
    }
    chosen: list[Target] = []
    for name in names:
        if name in groups:
            hits = groups[name]
        else:
            hits = [t for t in all_targets if name in (t.op, t.key)]
        if not hits:
            known = sorted({t.op for t in all_targets} | {t.key for t in all_targets} | set(groups))
            raise SystemExit(f"--ops: unknown target {name!r}; known: {', '.join(known)}")
        chosen += [t for t in hits if t not in chosen]
    return [t for t in all_targets if t in chosen]


class Sweep:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        if args.device == "auto":
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(args.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here")
        cuda = self.device.type == "cuda"
        threads = args.threads or (1 if args.quick and not cuda else None)
        if threads:
            torch.set_num_threads(threads)
        self.dtype = DTYPES[args.dtype] if args.dtype != "auto" else (torch.bfloat16 if cuda else torch.float32)
        q = args.quick
        self.Ts = tuple(args.T or (QUICK_T if q else FULL_T))
        self.hws = tuple(args.hw or (QUICK_HW if q else FULL_HW))
        self.B = args.B or (1 if q else 2)
        self.C = args.C or (64 if q else 384)
        self.N = args.N
        self.preset = args.model_preset or (cases.MODEL_PRESET_CUDA if cuda else cases.MODEL_PRESET_CPU)
        width, d_state = cases.model_dims(self.preset)
        self.net_width = args.net_width or width or (64 if q else 192)
        self.net_N = d_state or self.N
        self.time_budget = args.time_budget if args.time_budget is not None else (75.0 if q else None)
        default_max_call = 5.0 if cuda else (1.0 if q else 2.0)
        self.modes = tuple(args.modes or (("fwd", "fwd+bwd") if q else MODES))
        self.max_call_s = args.max_call_s if args.max_call_s is not None else default_max_call
        self.cpu_budget_s = args.cpu_budget_s if args.cpu_budget_s is not None else (0.1 if q else 1.0)
        self.targets = _select(cases.targets(self.preset), args.ops)
        self.backends = set(args.backends) if args.backends else None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.out = Path(args.out) if args.out else Path(__file__).parent / "results" / "local" / stamp
        self.out.mkdir(parents=True, exist_ok=True)
        self.csv = self.out / CSV_NAME
        self.done: set[tuple[str, ...]] = set()
        if args.skip_existing and self.csv.exists():
            self.done = {_row_key(r["op"], r["variant"], r["backend"], r["mode"], r, r["dtype"])
                         for r in read_rows(self.csv) if r["status"] in ("ok", "oom")}  # fmt: skip
        self.writer = CsvWriter(self.csv)
        self.env = environment(self.device)
        self.peaks = self.env.pop("_peaks")
        self.run_id = f"{stamp}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.t0 = time.perf_counter()
        self.last_ok: dict[tuple[str, str], tuple[int, float]] = {}
        self.oom_at: dict[tuple[str, str, str], int] = {}
        self.reasons: dict[str, str] = {}
        self.counts = {"ok": 0, "oom": 0, "skip": 0, "error": 0}
        self.not_run = 0

    # ---- helpers -------------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        if not self.args.quiet:
            print(text, flush=True)

    def skip_once(self, target: Target, backend: str, reason: str) -> None:
        key = f"{target.key} / {backend}"
        if key not in self.reasons:
            self.reasons[key] = reason
            print(f"skip {key}: {reason}", flush=True)

    def shapes(self) -> list[Shape]:
        pts = [Shape(self.B, t, h, w, self.C, self.N) for t in self.Ts for (h, w) in self.hws]
        return sorted(pts, key=lambda s: (s.tokens, s.T))

    def shape_for(self, target: Target, shape: Shape) -> Shape:
        if target.kind == "net":
            return replace(shape, B=self.args.net_batch, C=self.net_width, N=self.net_N)
        return shape

    def row(self, target: Target, backend: str, mode: str, shape: Shape, case: Case | None = None) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "timestamp": now_iso(), "op": target.op, "variant": target.variant,
            "backend": backend, "mode": mode, "B": shape.B, "T": shape.T, "H": shape.H, "W": shape.W,
            "C": shape.C, "N": shape.N, "K": None if case is None else case.K,
            "dtype": str(self.dtype).replace("torch.", ""), "tokens": shape.tokens, **self.env,
        }  # fmt: skip

    def emit(self, row: dict[str, Any]) -> None:
        self.writer.write(row)
        self.counts[row["status"]] += 1
        head = f"{row['op']}{'[' + row['variant'] + ']' if row['variant'] else ''} {row['backend']} {row['mode']}"
        where = f"T{row['T']} {row['H']}x{row['W']} ({row['tokens']} tok)"
        if row["status"] == "ok":
            extra = f" {row['pct_roofline']:.0f}% roofline" if row.get("pct_roofline") else ""
            self.say(
                f"  {head:<48} {where:<24} {row['ms_p50']:10.3f} ms  first {row['compile_ms']:9.1f} ms  "
                f"mem {row['mem_delta_mb']:9.1f} MiB{extra}"
            )
        else:
            self.say(f"  {head:<48} {where:<24} {row['status'].upper()}: {row.get('note', '')}")

    # ---- one measurement -----------------------------------------------------------------------------------
    def measure(self, case: Case, mode: str) -> dict[str, Any]:
        dev = self.device
        grads = case.grad_inputs
        run, state = make_runner(case, mode, dev)
        for g in grads:
            g.grad = None
        compile_ms = time_first_call(run, dev)  # compile / autotune / first-touch happen here
        for g in grads:
            g.grad = None
        mem_peak, mem_delta, mem_kind = measure_memory(run, dev)  # second call: also the warm-up of the timer
        if dev.type == "cuda":
            timing = time_cuda(run, grads, rep_ms=self.args.rep_ms)
        else:
            timing = time_cpu(run, grads, budget_s=self.cpu_budget_s)
        for g in grads:
            g.grad = None
        state.clear()
        nbytes, mufu, flops = case.traffic.get(mode, (None, None, None))
        return {
            "status": "ok", "ms_p20": timing.p20, "ms_p50": timing.p50, "ms_p80": timing.p80,
            "compile_ms": compile_ms, "reps": timing.reps if timing.reps > 0 else None, "timer": timing.timer,
            "mem_peak_mb": mem_peak, "mem_delta_mb": mem_delta, "mem_kind": mem_kind,
            **roofline(timing.p50, nbytes, mufu, flops, self.peaks),
        }  # fmt: skip

    # ---- the loop --------------------------------------------------------------------------------------------
    def planned_skip(self, target: Target, backend: str, shape: Shape) -> str | None:
        """A reason to skip (target, backend) at ``shape`` before building it, or None."""
        if backend == "compile" and shape.tokens > self.args.compile_max_tokens:
            return f"torch.compile limited to <= {self.args.compile_max_tokens} tokens (--compile-max-tokens)"
        last = self.last_ok.get((target.key, backend))
        if last is not None and shape.tokens > last[0]:
            predicted = last[1] * (shape.tokens / last[0]) ** target.exponent / 1e3
            if predicted > self.max_call_s:
                return f"predicted {predicted:.1f} s per call (from {last[0]} tokens) > --max-call-s {self.max_call_s}"
        return None

    def run_backend(self, target: Target, backend: str, shape: Shape) -> None:
        # fwd+bwd before bwd: its first call then carries the whole training compile (bwd's setup forward is untimed)
        modes = [m for m in ("fwd", "fwd+bwd", "bwd") if m in self.modes]
        if self.done:
            dt = str(self.dtype).replace("torch.", "")
            modes = [m for m in modes if _row_key(target.op, target.variant, backend, m, shape, dt) not in self.done]
            if not modes:
                return
        if self.time_budget is not None and time.perf_counter() - self.t0 > self.time_budget:
            self.not_run += len(modes)  # counted and reported once at the end, not one row each
            return
        reason = self.planned_skip(target, backend, shape)
        if reason is not None:
            for mode in modes:
                self.emit({**self.row(target, backend, mode, shape), "status": "skip", "note": reason})
            return
        # Out-of-memory: carried to larger sizes (recorded, not re-run); on CPU predicted before allocating.
        todo = []
        for mode in modes:
            at = self.oom_at.get((target.key, backend, mode))
            if at is not None and shape.tokens >= at:
                note = f"not run: out of memory at {at} tokens already"
                self.emit({**self.row(target, backend, mode, shape), "status": "oom", "note": note})
                continue
            if self.device.type == "cpu":
                est = cases.estimate_bytes(target, shape, self.dtype, mode, backend)
                limit = 0.5 * cpu_available_bytes()
                if est is not None and est > limit:
                    note = f"predicted {est / 2**30:.1f} GiB > half the available host memory ({limit / 2**30:.1f} GiB)"
                    self.emit({**self.row(target, backend, mode, shape), "status": "oom", "note": note})
                    self.oom_at[(target.key, backend, mode)] = shape.tokens
                    continue
            todo.append(mode)
        if not todo:
            return
        try:
            case = target.build(shape, self.dtype, self.device, backend)
        except Skip as e:
            self.skip_once(target, backend, str(e))
            return
        except Exception as e:
            status, note = ("oom" if is_oom(e) else "error"), "build: " + first_line(e)
            case = None
        if case is None:  # outside the except block, so the failed frames' tensors can be freed
            free_memory(self.device)
            for mode in todo:
                self.emit({**self.row(target, backend, mode, shape), "status": status, "note": note})
                if status == "oom":
                    self.oom_at[(target.key, backend, mode)] = shape.tokens
            return
        for mode in todo:
            base = self.row(target, backend, mode, shape, case)
            if mode not in case.modes:
                continue
            try:
                res = self.measure(case, mode)
            except Exception as e:
                res = {"status": "oom" if is_oom(e) else "error", "note": first_line(e)}
            if res["status"] != "ok":
                free_memory(self.device)
                if res["status"] == "oom":
                    self.oom_at[(target.key, backend, mode)] = shape.tokens
            self.emit({**base, **res})
            if res["status"] == "ok":
                key = (target.key, backend)
                prev = self.last_ok.get(key)
                ms = res["ms_p50"] if prev is None or prev[0] != shape.tokens else max(prev[1], res["ms_p50"])
                self.last_ok[key] = (shape.tokens, ms)
        del case
        free_memory(self.device)

    def backends_for(self, target: Target) -> list[str]:
        out = []
        for b in target.backends:
            if self.backends is not None and b not in self.backends:
                continue
            if b == "compile" and self.device.type == "cpu" and not self.args.compile_cpu:
                self.skip_once(target, b, "torch.compile on CPU builds C++ per case (slow); pass --compile-cpu")
                continue
            out.append(b)
        return out

    def run(self) -> Path:
        dt = str(self.dtype).replace("torch.", "")
        print(f"bench: {self.env['device']} ({self.device.type}), {dt}, torch {self.env['torch']}, "
              f"triton {self.env['triton']}, commit {self.env['commit']}", flush=True)  # fmt: skip
        print(f"bench: ops B={self.B} C={self.C} N={self.N}; networks B={self.args.net_batch} "
              f"width={self.net_width} preset={self.preset}; writing {self.csv}", flush=True)  # fmt: skip
        for shape in self.shapes():
            self.say(f"[{time.perf_counter() - self.t0:7.1f} s] T={shape.T} H={shape.H} W={shape.W} "
                     f"({shape.tokens} tokens)")  # fmt: skip
            # torch.compile last at each size: its first call can take minutes, the others' seconds
            pairs = [(t, b) for t in self.targets for b in self.backends_for(t)]
            for target, backend in sorted(pairs, key=lambda p: p[1] == "compile"):
                if f"{target.key} / {backend}" not in self.reasons:
                    self.run_backend(target, backend, self.shape_for(target, shape))
        elapsed = time.perf_counter() - self.t0
        meta = {
            "run_id": self.run_id, "elapsed_s": elapsed, "argv": sys.argv, "counts": self.counts,
            "not_run": self.not_run, "skipped": self.reasons, "device": self.env["device"], "dtype": dt,
            "shapes": {"T": self.Ts, "hw": self.hws, "B": self.B, "C": self.C, "N": self.N,
                       "net_batch": self.args.net_batch, "net_width": self.net_width, "preset": self.preset},
        }  # fmt: skip
        (self.out / f"sweep-{self.run_id}.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if self.not_run:
            print(f"bench: time budget of {self.time_budget:.0f} s exhausted: {self.not_run} measurements not run "
                  "(no rows written for them)", flush=True)  # fmt: skip
        print(f"bench: {self.counts} in {elapsed:.1f} s -> {self.csv}", flush=True)
        return self.csv


def _row_key(op: str, variant: str, backend: str, mode: str, shape: Any, dtype: str) -> tuple[str, ...]:
    dims = (shape["B"], shape["T"], shape["H"], shape["W"], shape["C"], shape["N"]) if isinstance(shape, dict) else (
        shape.B, shape.T, shape.H, shape.W, shape.C, shape.N)  # fmt: skip
    return (op, variant, backend, mode, *(str(d) for d in dims), dtype)


def make_runner(case: Case, mode: str, device: torch.device) -> tuple[Callable[[], None], dict[str, Any]]:
    """A zero-argument closure running ``case`` in ``mode``, and its state dict (clear it to free the graph).

    ``fwd`` runs under ``torch.no_grad`` (inference); ``fwd+bwd`` runs forward and ``backward(dy)`` with a fixed
    random ``dy``; ``bwd`` runs one forward now (not timed) and the closure repeats ``backward`` on its retained
    graph.
    """
    state: dict[str, Any] = {}

    def backward(out: Any, retain: bool) -> None:
        t = _first_tensor(out)
        if "dy" not in state:
            state["dy"] = torch.randn_like(t)
        t.backward(state["dy"], retain_graph=retain)

    if mode == "fwd":

        def run() -> None:
            with torch.no_grad(), case.context(device):
                case.fn()

    elif mode == "fwd+bwd":

        def run() -> None:
            with case.context(device):
                out = case.fn()
            backward(out, retain=False)

    elif mode == "bwd":
        with case.context(device):
            state["out"] = case.fn()

        def run() -> None:
            backward(state["out"], retain=True)

    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return run, state


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for o in out:
            if isinstance(o, torch.Tensor) and o.requires_grad:
                return o
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    raise TypeError(f"the benchmarked function returned no tensor (got {type(out).__name__})")


def run(args: argparse.Namespace) -> int:
    """Run the sweep (or only the plots) described by ``args``; returns a process exit code."""
    from glsmamba.bench import plot, summary

    if args.plot_only:
        folder = Path(args.plot_only)
        csv_path = folder / CSV_NAME if folder.is_dir() else folder
        if not csv_path.exists():
            print(f"--plot-only: {csv_path} does not exist", file=sys.stderr)
            return 2
        pngs = plot.plot_all(csv_path, csv_path.parent)
        md = summary.write_summary(csv_path, csv_path.parent)
        print(f"bench: {len(pngs)} plots and {md} in {csv_path.parent}")
        return 0
    csv_path = Sweep(args).run()
    if not args.no_plot:
        pngs = plot.plot_all(csv_path, csv_path.parent)
        md = summary.write_summary(csv_path, csv_path.parent)
        print(f"bench: {len(pngs)} plots and {md.name} written next to the CSV", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m glsmamba.bench", description="glsmamba speed/memory sweep over resolution (CSV + PNG plots)"
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
