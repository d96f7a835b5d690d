"""The GLSMamba network on CPU, reference backend: the forward time split into the frozen encoder and the trunk.

Builds the network (default: the ``base`` preset, frozen ViT-B encoder), runs ``--reps`` forward passes of one
``1 x T x 3 x H x W`` clip (default 5 x 256 x 192: 5 x 64 x 48 = 15,360 trunk tokens) under ``torch.no_grad`` on
the reference backend, and times, inside each pass, the encoder (ViT + deconvolutions) and the trunk (everything
after the frozen encoder: embedding, GSM and LRM blocks, head). Prints the medians, the trunk / encoder ratio
(issue 14 asks for <= 3) in wall time and in process CPU time (robust to other jobs taking the cores), the
trunk's split (scans, STMM merges, the rest) and the peak RSS of one pass, and
appends one JSON line per run to ``--out`` (with the date, CPU, thread count, machine load, ``OMP_WAIT_POLICY``,
torch and commit). On a machine shared with other jobs, ``OMP_WAIT_POLICY=PASSIVE`` keeps the OpenMP threads from
spinning while the other one is descheduled (with 2 threads and a load of 8 the default spin wait made the tiny
network 6x slower); say which was used.

    python -m glsmamba.bench.bench_network_cpu [--preset base] [--threads 2] [--reps 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from glsmamba.bench.harness import append_record, environment, measure_memory, now_iso


class _Clock:
    """Wall time and process CPU time (all threads) spent inside the wrapped modules' forward, per label (every
    label is a disjoint part of the network)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def clear(self) -> None:
        self.spent.clear()
        self.cpu.clear()

    def wrap(self, module: torch.nn.Module, label: str) -> None:
        inner = module.forward

        def timed(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.spent[label] = self.spent.get(label, 0.0) + time.perf_counter() - t0
                self.cpu[label] = self.cpu.get(label, 0.0) + time.process_time() - c0

        module.forward = timed


def build(preset: str, height: int, width: int):
    from glsmamba.model import GLSMamba, get_config

    cfg = get_config(preset, backend="reference", image_size=(height, width))
    torch.manual_seed(0)
    return GLSMamba(cfg).eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--frames", type=int, default=5)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--reps", type=int, default=3, help="timed forward passes after one warm-up pass")
    p.add_argument("--out", default=None, help="append one JSON line with the results to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from glsmamba.reference import _cpu_kernels

    kernel = _cpu_kernels.enabled()
    net = build(args.preset, args.height, args.width)
    cfg = net.config
    if args.frames != cfg.num_frames:
        raise SystemExit(f"--frames must be the preset's num_frames ({cfg.num_frames}), got {args.frames}")
    frames = torch.randn(1, cfg.num_frames, 3, args.height, args.width)
    clock = _Clock()
    clock.wrap(net.encoder, "encoder")
    for blk in (*net.gsm, *net.lrm):
        clock.wrap(blk.ssm, "scans")
        if getattr(blk, "merge", None) is not None:
            clock.wrap(blk.merge, "stmm")

    totals, parts, cpu_totals, cpu_parts = [], [], [], []
    with torch.no_grad():
        for rep in range(args.reps + 1):
            clock.clear()
            t0, c0 = time.perf_counter(), time.process_time()
            net(frames)
            total, cpu_total = time.perf_counter() - t0, time.process_time() - c0
            if rep:  # the first pass warms caches and the allocator
                totals.append(total)
                parts.append(dict(clock.spent))
                cpu_totals.append(cpu_total)
                cpu_parts.append(dict(clock.cpu))
        peak_mb, delta_mb, mem_kind = measure_memory(lambda: net(frames), torch.device("cpu"))
    enc = statistics.median(p["encoder"] for p in parts)
    total = statistics.median(totals)
    trunk = statistics.median(t - p["encoder"] for t, p in zip(totals, parts, strict=True))
    scans = statistics.median(p.get("scans", 0.0) for p in parts)
    stmm = statistics.median(p.get("stmm", 0.0) for p in parts)
    cpu_enc = statistics.median(p["encoder"] for p in cpu_parts)
    cpu_trunk = statistics.median(t - p["encoder"] for t, p in zip(cpu_totals, cpu_parts, strict=True))
    env = environment(torch.device("cpu"))
    env.pop("_peaks")
    t, h, w = cfg.num_frames, args.height // 4, args.width // 4
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rec = {
        "timestamp": now_iso(), "preset": args.preset, "clip": [1, t, 3, args.height, args.width],
        "tokens": t * h * w, "threads": torch.get_num_threads(), "reps": args.reps, "load_1min": load,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "glsmamba_scan_compile": os.environ.get("GLSMAMBA_SCAN_COMPILE", "auto"),
        "glsmamba_cpu_kernel": _cpu_kernels.mode(), "cpu_scan_kernel": kernel,
        "forward_s": total, "encoder_s": enc, "trunk_s": trunk, "trunk_over_encoder": trunk / enc,
        "trunk_scans_s": scans, "trunk_stmm_s": stmm, "trunk_other_s": trunk - scans - stmm,
        "cpu_encoder_s": cpu_enc, "cpu_trunk_s": cpu_trunk, "cpu_trunk_over_encoder": cpu_trunk / cpu_enc,
        "forward_s_all": totals, "peak_rss_mb": peak_mb, "peak_above_start_mb": delta_mb, "mem_kind": mem_kind,
        "device": env["device"], "torch": env["torch"], "commit": env["commit"],
    }  # fmt: skip
    print(f"{args.preset}: 1 x {t} x 3 x {args.height} x {args.width} ({t * h * w} trunk tokens), reference backend, "
          f"no grad, {rec['threads']} threads, {env['device']}, torch {env['torch']}, load {load:.2f}, "
          f"OMP_WAIT_POLICY={rec['omp_wait_policy'] or 'unset'}"
          + f", GLSMAMBA_SCAN_COMPILE={rec['glsmamba_scan_compile']}, no-grad scan steps by the "
          + ("C++ kernel" if kernel else "PyTorch steps") + f" (GLSMAMBA_CPU_KERNEL={rec['glsmamba_cpu_kernel']})")
    print(f"forward {total:.3f} s = encoder {enc:.3f} s + trunk {trunk:.3f} s "
          f"(scans {scans:.3f} s, STMM {stmm:.3f} s, rest {trunk - scans - stmm:.3f} s); medians of {args.reps}")
    print(f"trunk / encoder = {trunk / enc:.2f} (target <= 3); in process CPU time (all threads): encoder "
          f"{cpu_enc:.3f} s, trunk {cpu_trunk:.3f} s, ratio {cpu_trunk / cpu_enc:.2f}")
    print(f"peak RSS {peak_mb:.0f} MiB ({delta_mb:.0f} MiB above the start)")
    append_record(args.out, rec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
