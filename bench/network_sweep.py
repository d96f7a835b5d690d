"""The CPU network sweep: GLSMamba (reference backend, eager and torch.compile) against full-attention networks.

For each preset (default ``tiny`` and ``base``) the resolution sweep of :mod:`glsmamba.bench.sweep` runs the
GLSMamba network (backends ``reference`` and, with ``--compile``, ``compile``: ``torch.compile`` of the whole
network, its compile time in ``compile_ms``) and the attention network of the same width and depth on the same
encoder (the paper's TransLR/TransHR baselines: the preset's encoder, then full attention over every token of the
clip; ``sdpa``: PyTorch's fused CPU kernel, O(L) memory; ``sdpa_math``: the materialised score matrix, O(L^2)
memory), forward without grad and forward+backward, from 5 x 16 x 12 = 960 to 5 x 64 x 48 = 15,360 tokens, each
preset into ``OUT/<preset>/results.csv``. Then ``OUT/crossover.png`` (time, time per token and
peak memory vs tokens, one row per preset) and ``OUT/summary.md`` (the table and issue 14's checks).

    python -m glsmamba.bench.network_sweep [--presets tiny base] [--compile] [--threads 2] [--out DIR]
    python -m glsmamba.bench.network_sweep --plot-only DIR
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from glsmamba.bench.cases import parse_attention_variant
from glsmamba.bench.harness import read_rows
from glsmamba.bench.plot import _draw_oom, _draw_series, _f, _finish, _ok, _plt

HWS = ("16x12", "32x24", "48x36", "64x48")
BACKENDS = (("glsmamba", "reference"), ("glsmamba", "compile"), ("attention_net", "sdpa"),
            ("attention_net", "sdpa_math"))
STYLE = {"reference": ("tab:blue", "o"), "compile": ("tab:green", "s"), "sdpa": ("tab:red", "^"),
         "sdpa_math": ("tab:brown", "v")}


def run_preset(preset: str, args: argparse.Namespace, out: Path) -> Path:
    from glsmamba.bench import sweep

    argv = ["--device", "cpu", "--dtype", "fp32", "--ops", "glsmamba", "attention_net", "--model-preset", preset,
            "--T", "5", "--hw", *args.hw, "--modes", *args.modes, "--backends", "reference", "sdpa", "sdpa_math",
            *(["compile"] if args.compile else []), "--max-call-s", str(args.max_call_s), "--cpu-budget-s",
            str(args.cpu_budget_s), "--cpu-min-reps", str(args.min_reps), "--out", str(out / preset),
            "--skip-existing", "--no-plot"]
    if args.compile:
        argv += ["--compile-cpu"]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    parser = argparse.ArgumentParser()
    sweep.add_arguments(parser)
    sweep.Sweep(parser.parse_args(argv)).run()
    return out / preset / sweep.CSV_NAME


def _series(rows, op, backend, mode):
    return [r for r in rows if r["op"] == op and r["backend"] == backend and r["mode"] == mode]


def plot(out: Path, presets: list[str]) -> Path | None:
    data = {p: read_rows(out / p / "results.csv") for p in presets if (out / p / "results.csv").exists()}
    if not data:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(data), 3, figsize=(18, 5 * len(data)), squeeze=False)
    for row_axes, (preset, rows) in zip(axes, data.items(), strict=True):
        width = next((r["C"] for r in rows if r["op"] == "glsmamba"), "?")
        for mode, ls in (("fwd", "-"), ("fwd+bwd", "--")):
            for op, backend in BACKENDS:
                rs = _series(rows, op, backend, mode)
                if not rs:
                    continue
                name = "GLSMamba" if op == "glsmamba" else "attention"
                label = f"{name} {backend} {mode}"
                color = STYLE[backend][0]
                for ax, per_token in ((row_axes[0], False), (row_axes[1], True)):
                    before = len(ax.lines)
                    _draw_series(ax, rs, label, color, "ms_p50", band=False, per_token=per_token)
                    for line in ax.lines[before:]:
                        line.set_linestyle(ls)
                        line.set_marker(STYLE[backend][1])
                if mode == "fwd":
                    _draw_series(row_axes[2], rs, label, color, "mem_peak_mb", band=False)
                for ax in row_axes if mode == "fwd" else row_axes[:2]:
                    _draw_oom(ax, rs, label, color)
        ctx = f"{preset} (width {width}), CPU, fp32, batch 1, T=5"
        _finish(row_axes[0], f"time per call, {ctx}\nsolid: forward (no grad), dashed: forward+backward",
                "time per call [ms]")
        _finish(row_axes[1], "time per token (flat = linear cost)", "time per token [us]")
        _finish(row_axes[2], "peak resident memory of one forward (no grad)", "peak RSS [MiB] (cpu_peak_rss)")
    path = out / "crossover.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ms(rows, op, backend, mode, tokens, col="ms_p50") -> float | None:
    hit = [r for r in _ok(_series(rows, op, backend, mode)) if int(r["tokens"]) == tokens]
    return _f(hit[0], col) if hit else None


def _cell(rows, op, backend, mode, tokens, col="ms_p50") -> str:
    hit = [r for r in _series(rows, op, backend, mode) if int(r["tokens"]) == tokens]
    if not hit:
        return "-"
    r = hit[0]
    if r["status"] != "ok":
        return r["status"] + (" (predicted)" if r["note"].startswith("predicted") else "")
    v = _f(r, col)
    extra = ""
    if col == "ms_p50" and backend == "compile":
        extra = f" (compile {(_f(r, 'compile_ms') or 0) / 1e3:.0f} s)"
    return f"{v:,.0f}{extra}" if v is not None else "-"


def _attention_stem(variant: str) -> str:
    """What an ``attention_net`` variant starts with (:func:`glsmamba.bench.cases.parse_attention_variant`)."""
    encoder = parse_attention_variant(variant)[0]
    return "a 4x4 patchify conv stem" if encoder == "stem" else f"the preset's own `{encoder}` encoder"


def summary(out: Path, presets: list[str]) -> Path:
    lines = ["# CPU network sweep: GLSMamba (reference backend) vs full-attention networks", ""]
    for preset in presets:
        path = out / preset / "results.csv"
        if not path.exists():
            continue
        rows = read_rows(path)
        ok = _ok(rows)
        if not ok:
            continue
        r0 = ok[0]
        runs: dict[tuple[str, str], list[str]] = {}  # (commit, date) -> the backends measured there
        for r in ok:
            b = runs.setdefault((r["commit"], r["timestamp"][:10]), [])
            if r["backend"] not in b:
                b.append(r["backend"])
        where = "; ".join(f"commit {c}, {d}: {', '.join(b)}" for (c, d), b in runs.items())
        variants = sorted({r["variant"] for r in ok if r["op"] == "attention_net"})
        attn = " ".join(f"The attention network `{v}`: {_attention_stem(v)}, then full-attention blocks as many as "
                        "GLSMamba's GSM + LRM blocks, at its width." for v in variants)
        lines += [f"## {preset} (width {next((r['C'] for r in rows if r['op'] == 'glsmamba'), '?')})", "",
                  f"{r0['device']}, {r0['threads']} threads, torch {r0['torch']}; {where}.", "",
                  *([attn, ""] if attn else []),
                  "| mode | tokens | GLSMamba reference ms | GLSMamba compile ms | attention sdpa ms | "
                  "attention sdpa_math ms | peak RSS MiB: GLSMamba / sdpa / sdpa_math |",
                  "|---|---|---|---|---|---|---|"]
        tokens = sorted({int(r["tokens"]) for r in rows})
        for mode in ("fwd", "fwd+bwd"):
            for t in tokens:
                mem = " / ".join(_cell(rows, op, b, mode, t, "mem_peak_mb")
                                 for op, b in (("glsmamba", "reference"), *BACKENDS[2:]))
                lines.append(f"| {mode} | {t:,} | " + " | ".join(_cell(rows, op, b, mode, t) for op, b in BACKENDS)
                             + f" | {mem} |")
        lines += ["", "Checks (issue 14):", ""]
        lo, hi = min(tokens), max(tokens)
        for mode in ("fwd", "fwd+bwd"):
            mine = _ms(rows, "glsmamba", "reference", mode, hi)
            math_ = _ms(rows, "attention_net", "sdpa_math", mode, hi)
            oom = any(r["status"] == "oom" and int(r["tokens"]) == hi
                      for r in _series(rows, "attention_net", "sdpa_math", mode))
            if mine is not None and (math_ is not None or oom):
                verdict = "holds" if oom or mine < math_ else "does not hold"
                other = "out of memory" if oom else f"{math_:,.0f} ms"
                lines.append(f"- {mode}: GLSMamba {mine:,.0f} ms vs sdpa_math {other} at {hi:,} tokens: {verdict}")
            a, b = _ms(rows, "glsmamba", "reference", mode, lo), mine
            if a is not None and b is not None:
                growth = (b / hi) / (a / lo)
                lines.append(f"- {mode}: GLSMamba time per token grows {growth:.2f}x from {lo:,} to {hi:,} tokens "
                             f"(target < 1.5x): {'holds' if growth < 1.5 else 'does not hold'}")
        mine = _ms(rows, "glsmamba", "reference", "fwd", hi, "mem_peak_mb")
        for backend in ("sdpa_math", "sdpa"):
            theirs = _ms(rows, "attention_net", backend, "fwd", hi, "mem_peak_mb")
            if mine is not None and theirs is not None:
                lines.append(f"- fwd: peak RSS at {hi:,} tokens, GLSMamba {mine:,.0f} MiB vs {backend} {theirs:,.0f} "
                             f"MiB: {'no larger' if mine <= theirs else 'larger'}")
        lines.append("")
    lines += ["![crossover](crossover.png)", ""]
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "base"])
    p.add_argument("--hw", nargs="+", default=list(HWS), metavar="HxW", help=f"token grids per frame (default {HWS})")
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=("fwd", "fwd+bwd"))
    p.add_argument("--compile", action="store_true", help="also torch.compile the GLSMamba network (slow to build)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-call-s", type=float, default=600.0, help="skip a point predicted to take longer per call")
    p.add_argument("--cpu-budget-s", type=float, default=1.0, help="timing budget per point")
    p.add_argument("--min-reps", type=int, default=3, help="timed calls per point at least (after the first call "
                   "and the memory call; the largest points take minutes each on 2 shared cores)")
    p.add_argument("--out", default=None, help="output folder (default bench/results/local/cpu-network-<time>)")
    p.add_argument("--plot-only", default=None, metavar="DIR", help="only redraw the plot and summary of DIR")
    args = p.parse_args(argv)
    if args.plot_only:
        out = Path(args.plot_only)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(args.out) if args.out else Path(__file__).parent / "results" / "local" / f"cpu-network-{stamp}"
        print(f"network sweep: presets {args.presets}, load {os.getloadavg()[0]:.2f} -> {out}", flush=True)
        for preset in args.presets:
            run_preset(preset, args, out)
    png = plot(out, args.presets)
    md = summary(out, args.presets)
    print(f"-> {png}, {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
