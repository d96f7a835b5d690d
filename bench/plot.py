"""CSV -> PNG plots (matplotlib only), written next to the CSV.

- ``time_<op>[_<variant>]_<mode>.png``: time per call vs tokens, log-log, one line per backend, p20-p80 band,
  out-of-memory points as crosses on the top edge.
- ``memory_<op>[_<variant>]_<mode>.png``: peak memory (above inputs) vs tokens, log-log.
- ``speedup_<op>[_<variant>].png``: every backend's speedup over ``reference`` (p50 ratio) vs tokens, per mode.
- ``speedup_triton.png``: triton over reference for all ops in one figure (when triton rows exist).
- ``crossover.png``: GLSMamba vs full attention: time, time per token and memory vs tokens (network level when
  the network was measured, else the token-mixing ops: scan vs attention).

``python -m glsmamba.bench.plot DIR_OR_CSV`` redraws them.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from glsmamba.bench.harness import read_rows

COLORS = {
    "reference": "tab:blue", "triton": "tab:orange", "compile": "tab:green", "mambapy": "tab:purple",
    "sdpa": "tab:red", "sdpa_math": "tab:brown",
}  # fmt: skip
MODE_ORDER = ("fwd", "bwd", "fwd+bwd")
TOKENS_LABEL = "tokens per clip (T x H x W)"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _f(row: dict[str, str], col: str) -> float | None:
    v = row.get(col, "")
    if v in ("", None):
        return None
    try:
        x = float(v)
    except ValueError:
        return None
    return None if math.isnan(x) else x


def _ok(rows: Iterable[dict[str, str]]) -> list[dict[str, str]]:
    return sorted((r for r in rows if r["status"] == "ok"), key=lambda r: (int(r["tokens"]), int(r["T"])))


def _name(op: str, variant: str) -> str:
    return f"{op}[{variant}]" if variant else op


def _slug(op: str, variant: str, mode: str | None = None) -> str:
    parts = [op] + ([variant] if variant else []) + ([mode.replace("+", "_")] if mode else [])
    return "_".join(parts)


def _context(rows: list[dict[str, str]]) -> str:
    r = rows[0]
    return f"{r['device']}, {r['dtype']}"


def _shape_note(rows: list[dict[str, str]]) -> str:
    r = rows[0]
    n = "" if r["op"].startswith("attention") else f" N={r['N']}"
    return f"B={r['B']} C={r['C']}{n}"


def _color(backend: str) -> str | None:
    return COLORS.get(backend)


def _draw_series(
    ax, rows: list[dict[str, str]], label: str, color: str | None, y: str, band: bool, per_token: bool = False
) -> None:
    """One line (median) with an optional p20-p80 band; ``per_token`` divides by tokens and shows microseconds."""
    pts = []
    for r in _ok(rows):
        n = int(r["tokens"])
        k = 1e3 / n if per_token else 1.0
        v, lo, hi = _f(r, y), _f(r, "ms_p20"), _f(r, "ms_p80")
        if v is not None and v > 0:
            pts.append((n, v * k, None if lo is None else lo * k, None if hi is None else hi * k))
    if not pts:
        return
    xs = [p[0] for p in pts]
    ax.plot(xs, [p[1] for p in pts], marker="o", ms=3.5, lw=1.4, label=label, color=color)
    if band and all(p[2] is not None and p[3] is not None for p in pts):
        ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], color=color, alpha=0.2, lw=0)


def _draw_oom(ax, rows: list[dict[str, str]], label: str, color: str | None) -> bool:
    """Crosses on the top edge of the axes at the token counts that ran out of memory."""
    xs = sorted({int(r["tokens"]) for r in rows if r["status"] == "oom"})
    if not xs:
        return False
    # x in data coordinates, y in axes coordinates (1 = top edge): independent of the y scale and limits
    ax.scatter(xs, [1.0] * len(xs), marker="x", s=60, color=color, label=f"{label}: out of memory",
               transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)  # fmt: skip
    return True


def _human(v: float, _pos: int | None = None) -> str:
    """Tick label: 200, 2k, 15k, 1.5M, 0.5, 0.02."""
    if v <= 0:
        return ""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:g}"


def _log_ticks(axis, lo: float, hi: float) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = math.log10(max(hi, lo * 1.0001) / lo) if lo > 0 else 99
    subs = (1.0, 2.0, 5.0) if decades <= 3.5 else (1.0, 3.0) if decades <= 6 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(_human))
    axis.set_minor_formatter(NullFormatter())


def _finish(ax, title: str, ylabel: str, logy: bool = True) -> None:
    ax.set_xscale("log")
    _log_ticks(ax.xaxis, *ax.get_xlim())
    if logy:
        ax.set_yscale("log")
        _log_ticks(ax.yaxis, *ax.get_ylim())
    ax.set_xlabel(TOKENS_LABEL)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")


def _by(rows: list[dict[str, str]], *cols: str) -> dict[tuple[str, ...], list[dict[str, str]]]:
    out: dict[tuple[str, ...], list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        out[tuple(r[c] for c in cols)].append(r)
    return out


def _save(fig, path: Path, written: list[Path]) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    written.append(path)


def plot_time_memory(rows: list[dict[str, str]], out: Path, written: list[Path]) -> None:
    plt = _plt()
    for (op, variant, mode), group in sorted(_by(rows, "op", "variant", "mode").items()):
        ok = _ok(group)
        if not ok:
            continue
        series = sorted(_by(group, "backend").items())
        title = f"{_name(op, variant)} {mode} ({_shape_note(ok)})\n{_context(ok)}"
        for kind, col, ylabel in (
            ("time", "ms_p50", "time per call [ms] (median; band p20-p80)"),
            ("memory", "mem_delta_mb", f"peak memory above inputs [MiB] ({ok[0]['mem_kind']})"),
        ):
            fig, ax = plt.subplots(figsize=(7, 4.6))
            for (backend,), rs in series:
                _draw_series(ax, rs, backend, _color(backend), col, band=kind == "time")
            for (backend,), rs in series:
                _draw_oom(ax, rs, backend, _color(backend))
            _finish(ax, title, ylabel)
            _save(fig, out / f"{kind}_{_slug(op, variant, mode)}.png", written)


def _speedups(group: list[dict[str, str]], other: str) -> list[tuple[int, float]]:
    key = ("B", "T", "H", "W", "C", "N", "dtype")
    ref = {tuple(r[k] for k in key): _f(r, "ms_p50") for r in _ok(group) if r["backend"] == "reference"}
    pts = []
    for r in _ok(group):
        if r["backend"] != other:
            continue
        base = ref.get(tuple(r[k] for k in key))
        mine = _f(r, "ms_p50")
        if base and mine:
            pts.append((int(r["tokens"]), base / mine))
    return sorted(pts)


def plot_speedups(rows: list[dict[str, str]], out: Path, written: list[Path]) -> None:
    plt = _plt()
    for (op, variant), group in sorted(_by(rows, "op", "variant").items()):
        others = sorted({r["backend"] for r in _ok(group)} - {"reference"})
        modes = [m for m in MODE_ORDER if any(_speedups([r for r in group if r["mode"] == m], o) for o in others)]
        if not modes:
            continue
        fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 4.4), squeeze=False)
        for ax, mode in zip(axes[0], modes, strict=False):
            sub = [r for r in group if r["mode"] == mode]
            for other in others:
                pts = _speedups(sub, other)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3.5, label=other,
                            color=_color(other))  # fmt: skip
            ax.axhline(1.0, color="grey", lw=1, ls="--", label="reference (1x)")
            _finish(ax, f"{_name(op, variant)} {mode}: speedup over reference\n{_context(group)}",
                    "speedup over reference [x] (p50 ratio)")  # fmt: skip
        _save(fig, out / f"speedup_{_slug(op, variant)}.png", written)


def plot_triton_speedup(rows: list[dict[str, str]], out: Path, written: list[Path]) -> None:
    plt = _plt()
    groups = _by(rows, "op", "variant")
    modes = [
        m for m in MODE_ORDER if any(_speedups([r for r in g if r["mode"] == m], "triton") for g in groups.values())
    ]
    if not modes:
        return
    fig, axes = plt.subplots(1, len(modes), figsize=(5.6 * len(modes), 4.6), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=False):
        for (op, variant), g in sorted(groups.items()):
            pts = _speedups([r for r in g if r["mode"] == mode], "triton")
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3.5, label=_name(op, variant))
        ax.axhline(1.0, color="grey", lw=1, ls="--")
        _finish(ax, f"triton over reference, {mode}\n{_context(_ok(rows))}", "speedup [x] (p50 ratio)")
    _save(fig, out / "speedup_triton.png", written)


def _pick_crossover(rows: list[dict[str, str]]) -> tuple[str, list[dict[str, str]], list[dict[str, str]]] | None:
    """(level, glsmamba rows of one backend, attention rows) or None when there is nothing to compare."""
    for level, mine, theirs in (
        ("network", ("glsmamba",), ("attention_net",)),
        ("op", ("ordered_selective_scan", "selective_scan"), ("attention",)),
    ):
        att = [r for r in rows if r["op"] in theirs]
        for op in mine:
            cand = [r for r in rows if r["op"] == op and (op != "ordered_selective_scan" or r["variant"] == "sts6d")]
            for backend in ("triton", "reference", "compile"):
                sel = [r for r in cand if r["backend"] == backend]
                if _ok(sel) and _ok(att):
                    return level, sel, att
    return None


def _crossover_tokens(
    mine: list[dict[str, str]], theirs: list[dict[str, str]], name: str = "GLSMamba"
) -> tuple[str, int | None]:
    """(verdict text, token count from which ``mine`` stays faster, or None) over the sizes both measured."""
    a = {(int(r["tokens"]), r["T"]): _f(r, "ms_p50") for r in _ok(mine)}
    b = {(int(r["tokens"]), r["T"]): _f(r, "ms_p50") for r in _ok(theirs)}
    oom = {(int(r["tokens"]), r["T"]) for r in theirs if r["status"] == "oom"}
    keys = sorted(k for k in a if k in b or k in oom)
    if not keys:
        return "no common sizes", None
    faster = [k in oom or a[k] < b[k] for k in keys]
    span = f"{keys[0][0]}-{keys[-1][0]} tokens"
    if all(faster):
        return f"{name} faster at every common size ({span})", None
    if not faster[-1]:
        return f"attention faster at the largest common size ({span})", None
    i = len(faster)
    while i > 0 and faster[i - 1]:
        i -= 1
    return f"{name} faster from {keys[i][0]} tokens on", keys[i][0]


def plot_crossover(rows: list[dict[str, str]], out: Path, written: list[Path]) -> None:
    pick = _pick_crossover(rows)
    if pick is None:
        return
    level, mine_all, att_all = pick
    modes = [m for m in ("fwd+bwd", "fwd") if _ok([r for r in mine_all if r["mode"] == m])]
    if not modes:
        return
    mode = modes[0]
    mine = [r for r in mine_all if r["mode"] == mode]
    att = [r for r in att_all if r["mode"] == mode]
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    mine_label = f"{_name(mine[0]['op'], mine[0]['variant'])} ({mine[0]['backend']})"
    series = [(mine_label, mine, _color(mine[0]["backend"]))]
    for (op, backend), rs in sorted(_by(att, "op", "backend").items()):
        series.append((f"{op} ({backend})", rs, _color(backend)))
    for label, rs, color in series:
        _draw_series(axes[0], rs, label, color, "ms_p50", band=True)
        _draw_series(axes[1], rs, label, color, "ms_p50", band=True, per_token=True)
        _draw_series(axes[2], rs, label, color, "mem_delta_mb", band=False)
    for ax in axes:
        for label, rs, color in series:
            _draw_oom(ax, rs, label, color)
    name = "GLSMamba" if level == "network" else mine[0]["op"]
    verdict, cross = _crossover_tokens(mine, [r for r in att if r["backend"] == "sdpa"] or att, name)
    if cross is not None:
        for ax in axes[:2]:
            ax.axvline(cross, color="grey", ls=":", lw=1.2)
    ctx = f"{_context(_ok(mine))}, {mode}, {_shape_note(_ok(mine))}"
    what = "GLSMamba network vs attention network" if level == "network" else "scan vs full attention (ops)"
    _finish(axes[0], f"{what}\n{verdict}", "time per call [ms] (band p20-p80)")
    _finish(axes[1], f"time per token (flat = linear cost)\n{ctx}", "time per token [us]")
    _finish(axes[2], f"memory ({level})\n{ctx}", f"peak memory above inputs [MiB] ({_ok(mine)[0]['mem_kind']})")
    _save(fig, out / "crossover.png", written)


def plot_all(csv_path: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw every plot the CSV has data for; returns the PNG paths."""
    csv_path = Path(csv_path)
    out = Path(out_dir) if out_dir is not None else csv_path.parent
    out.mkdir(parents=True, exist_ok=True)
    rows = read_rows(csv_path)
    written: list[Path] = []
    if not _ok(rows):
        return written
    plot_time_memory(rows, out, written)
    plot_speedups(rows, out, written)
    plot_triton_speedup(rows, out, written)
    plot_crossover(rows, out, written)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m glsmamba.bench.plot DIR_OR_CSV", file=sys.stderr)
        return 2
    p = Path(args[0])
    csv_path = p / "results.csv" if p.is_dir() else p
    for path in plot_all(csv_path):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
