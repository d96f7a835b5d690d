"""Measurement harness: environment stamp, device peaks, timing, peak memory, long-form CSV.

One CSV row per measurement (op, variant, backend, mode, shape, dtype): timings p20/p50/p80, the first call
separately as ``compile_ms`` (JIT / autotune / torch.compile happen there and are excluded from the timings),
peak memory, and, where the op has a traffic model, achieved GB/s and the share of the device's roofline.

Timing:
  CUDA: ``triton.testing.do_bench`` (flushes L2 before every repetition, times with CUDA events; includes the
  CPU launch overhead of small calls), quantiles 0.2 / 0.5 / 0.8.
  CPU:  wall-clock (``time.perf_counter``) quantiles over repetitions.
Memory:
  CUDA: ``torch.cuda.max_memory_allocated`` during one call (``mem_peak_mb`` absolute, ``mem_delta_mb`` above
  what was allocated before the call: inputs, weights and a retained graph are not counted in the delta).
  CPU:  peak resident set size during one call: the kernel's high-water mark (``VmHWM``) is reset through
  ``/proc/self/clear_refs`` and free heap memory is returned with ``malloc_trim`` before the call (Linux); where
  that is not possible a sampling thread reads ``VmRSS``. Approximate: the allocator may reuse memory it holds.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import datetime as _dt
import functools
import gc
import json
import math
import os
import platform
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

MODES = ("fwd", "bwd", "fwd+bwd")
STATUSES = ("ok", "oom", "skip", "error")

# Long-form schema, one row per measurement. Keep in sync with tests/test_bench_quick.py.
COLUMNS = (
    "run_id", "timestamp", "op", "variant", "backend", "mode", "status", "note",
    "B", "T", "H", "W", "C", "N", "K", "dtype", "tokens",
    "ms_p20", "ms_p50", "ms_p80", "compile_ms", "reps", "timer",
    "mem_peak_mb", "mem_delta_mb", "mem_kind",
    "bytes", "gbps", "pct_peak_bw", "mufu_ops", "mufu_per_s", "pct_peak_mufu",
    "roofline_ms", "pct_roofline", "bound", "flops", "tflops",
    "device", "device_kind", "threads", "peak_bw_gbps", "peak_mufu_per_s",
    "torch", "triton", "python", "commit",
)  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Device peaks
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DevicePeaks:
    """Peak HBM bandwidth (bytes/s) and special-function (exp2/MUFU) throughput (ops/s); ``None`` = unknown."""

    name: str
    bw: float | None
    mufu: float | None
    source: str = ""


# (regex on the device name, peak HBM bytes/s, peak MUFU ops/s, note). First match wins; order matters.
# MUFU = 16 ops/clk/SM (Hopper): H100 SXM 132 SMs -> ~3.9e12/s (the figure FlashAttention-3 cites). H200 is the
# same GH100 die (132 SMs, same clocks), so the same MUFU figure; only its HBM3e differs.
KNOWN_PEAKS: tuple[tuple[str, float, float | None, str], ...] = (
    (r"H200", 4.8e12, 3.9e12, "H200 SXM/NVL: HBM3e 4.8 TB/s; GH100 MUFU as H100 SXM"),
    (r"H100.*(NVL)", 3.9e12, None, "H100 NVL: 3.9 TB/s"),
    (r"H100.*(PCIe|PCIE)", 2.0e12, None, "H100 PCIe: 2.0 TB/s"),
    (r"H100", 3.35e12, 3.9e12, "H100 SXM: HBM3 3.35 TB/s, MUFU 16/clk/SM x 132 SMs ~ 3.9e12/s"),
    (r"A100.*80GB", 2.039e12, None, "A100 80GB SXM: 2.04 TB/s"),
    (r"A100", 1.555e12, None, "A100 40GB: 1.56 TB/s"),
)


def device_peaks(name: str) -> DevicePeaks:
    """Known peaks for a device name (``torch.cuda.get_device_name``); unknown devices (and CPUs) get ``None``."""
    for pattern, bw, mufu, note in KNOWN_PEAKS:
        if re.search(pattern, name):
            return DevicePeaks(name, bw, mufu, note)
    return DevicePeaks(name, None, None, "unknown")


# --------------------------------------------------------------------------------------------------------------
# Environment stamp
# --------------------------------------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@functools.cache
def git_commit() -> str:
    """Short commit of the working tree this file lives in (``+dirty`` when it has changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment(device: torch.device) -> dict[str, Any]:
    """The per-run columns: device name/kind and peaks, library versions, commit."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    peaks = device_peaks(name) if device.type == "cuda" else DevicePeaks(name, None, None, "cpu")
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # pragma: no cover - depends on the install
        triton_version = "none"
    return {
        "device": name,
        "device_kind": device.type,
        "threads": torch.get_num_threads(),
        "peak_bw_gbps": "unknown" if peaks.bw is None else peaks.bw / 1e9,
        "peak_mufu_per_s": "unknown" if peaks.mufu is None else peaks.mufu,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "commit": git_commit(),
        "_peaks": peaks,
    }


def append_record(path: str | Path | None, rec: dict[str, Any]) -> None:
    """Appends ``rec`` as one JSON line to ``path`` (its folder made if missing) and says where; nothing when
    ``path`` is None (the bench scripts' ``--out``)."""
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    print(f"-> {path}")


def device_slug(name: str) -> str:
    """A folder name for a device: ``NVIDIA H100 80GB HBM3`` -> ``nvidia-h100-80gb-hbm3``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "unknown"


# --------------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------------


class Skip(Exception):
    """A measurement (or a whole backend/op) that cannot run here; the message is the reason."""


def is_oom(exc: BaseException) -> bool:
    """True for CUDA and CPU allocation failures."""
    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())) or isinstance(exc, MemoryError):
        return True
    msg = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in msg or "can't allocate memory" in msg or "CUBLAS_STATUS_ALLOC_FAILED" in msg
    )


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    else:
        _malloc_trim()


def first_line(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return text[:limit]


# --------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Timing:
    p20: float
    p50: float
    p80: float
    reps: int
    timer: str


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_first_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds of one call, synchronised (used for the first call: compile + autotune + run)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def quantiles(values: Sequence[float], qs: Sequence[float] = (0.2, 0.5, 0.8)) -> list[float]:
    """Linear-interpolation quantiles (numpy's default method), without numpy."""
    xs = sorted(values)
    if not xs:
        raise ValueError("quantiles: values must not be empty")
    out = []
    for q in qs:
        pos = q * (len(xs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        out.append(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))
    return out


def time_cpu(
    fn: Callable[[], Any],
    grad_to_none: Iterable[torch.Tensor] = (),
    budget_s: float = 0.5,
    min_reps: int = 3,
    max_reps: int = 50,
) -> Timing:
    """Wall-clock quantiles of ``fn`` on CPU: repeats until ``budget_s`` is spent (within [min_reps, max_reps])."""
    grads = list(grad_to_none)
    times: list[float] = []
    spent = 0.0
    while len(times) < max_reps and (len(times) < min_reps or spent < budget_s):
        for g in grads:
            g.grad = None
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt * 1e3)
        spent += dt
    p20, p50, p80 = quantiles(times)
    return Timing(p20, p50, p80, len(times), "wallclock")


def time_cuda(fn: Callable[[], Any], grad_to_none: Iterable[torch.Tensor] = (), rep_ms: int = 100) -> Timing:
    """``triton.testing.do_bench`` quantiles (CUDA events, L2 flushed before each repetition)."""
    from triton.testing import do_bench

    grads = list(grad_to_none) or None
    p20, p50, p80 = do_bench(fn, warmup=max(1, rep_ms // 4), rep=rep_ms, grad_to_none=grads, quantiles=[0.2, 0.5, 0.8])
    return Timing(p20, p50, p80, -1, "do_bench")


# --------------------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------------------


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> None:
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _rss_sampler(interval_s: float = 5e-4):
    """Fallback peak-RSS sampler (a thread reading VmRSS); yields a dict whose 'peak_kb' is filled on exit."""
    result = {"peak_kb": _proc_status_kb("VmRSS") or 0}
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            rss = _proc_status_kb("VmRSS") or 0
            result["peak_kb"] = max(result["peak_kb"], rss)
            stop.wait(interval_s)

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    try:
        yield result
    finally:
        stop.set()
        th.join()
        result["peak_kb"] = max(result["peak_kb"], _proc_status_kb("VmRSS") or 0)


def measure_memory(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, str]:
    """Run ``fn`` once; return (peak MiB, peak above the start MiB, kind). Outputs of ``fn`` are dropped inside."""
    MB = 1024.0 * 1024.0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return peak / MB, (peak - before) / MB, "cuda_max_allocated"
    gc.collect()
    _malloc_trim()
    before_kb = _proc_status_kb("VmRSS")
    if before_kb is None:
        fn()
        return float("nan"), float("nan"), "unavailable"
    if _reset_hwm():
        fn()
        peak_kb = _proc_status_kb("VmHWM") or before_kb
        kind = "cpu_peak_rss"
    else:  # pragma: no cover - kernels without clear_refs
        with _rss_sampler() as res:
            fn()
        peak_kb = res["peak_kb"]
        kind = "cpu_peak_rss_sampled"
    return peak_kb / 1024.0, max(0.0, (peak_kb - before_kb) / 1024.0), kind


def cpu_available_bytes() -> float:
    """``MemAvailable`` from /proc/meminfo (bytes), or +inf when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return math.inf


# --------------------------------------------------------------------------------------------------------------
# Roofline
# --------------------------------------------------------------------------------------------------------------


def roofline(
    ms: float | None, nbytes: float | None, mufu_ops: float | None, flops: float | None, peaks: DevicePeaks
) -> dict[str, Any]:
    """Achieved rates and the share of the binding roofline for one timing (median ``ms``).

    The roofline time is max(bytes / peak_bw, mufu_ops / peak_mufu) over the peaks that are known; ``bound``
    names the larger term. A column is left empty where its input or the device peak is unknown.
    """
    out: dict[str, Any] = {"bytes": nbytes, "mufu_ops": mufu_ops, "flops": flops}
    if ms is None or not (ms > 0):
        return out
    s = ms * 1e-3
    if nbytes:
        out["gbps"] = nbytes / s / 1e9
        if peaks.bw:
            out["pct_peak_bw"] = 100.0 * nbytes / s / peaks.bw
    if mufu_ops:
        out["mufu_per_s"] = mufu_ops / s
        if peaks.mufu:
            out["pct_peak_mufu"] = 100.0 * mufu_ops / s / peaks.mufu
    if flops:
        out["tflops"] = flops / s / 1e12
    bounds = {}
    if nbytes and peaks.bw:
        bounds["hbm"] = nbytes / peaks.bw
    if mufu_ops and peaks.mufu:
        bounds["exp"] = mufu_ops / peaks.mufu
    if bounds:
        bound = max(bounds, key=bounds.get)
        out["bound"] = bound
        out["roofline_ms"] = bounds[bound] * 1e3
        out["pct_roofline"] = 100.0 * bounds[bound] / s
    return out


# --------------------------------------------------------------------------------------------------------------
# CSV
# --------------------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return repr(value)  # full precision, never a rounded format
    return str(value)


class CsvWriter:
    """Appends rows with the :data:`COLUMNS` header. An existing file must have exactly that header.

    Rows are flushed one by one so a run that is cut short keeps what it measured.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f), [])
            if tuple(header) != COLUMNS:
                raise ValueError(
                    f"{self.path} exists with a different header ({len(header)} columns); "
                    "write to a new file or folder instead of mixing schemas"
                )
        else:
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(COLUMNS)

    def write(self, row: dict[str, Any]) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"row has columns not in the schema: {sorted(unknown)}")
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(c)) for c in COLUMNS])


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
