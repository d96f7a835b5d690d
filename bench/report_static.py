"""The static report's markdown (``static.md``), plot (``static.png``) and README section, from the CSV rows."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

START, END = "<!-- static-report:start -->", "<!-- static-report:end -->"
README_TITLE = "### Each kernel against its roofline (estimated for sm_90, no GPU)"

METHOD = """\
How these numbers are made (details in the docstrings of `bench/traffic.py`, `bench/extrapolate.py`,
`bench/sass.py`, `bench/estimate.py`, `bench/static_ops.py`):

* **Bytes.** Every launch runs under the Triton interpreter with the geometry a CUDA launch uses; the counter
  records per pointer argument the *lane* bytes (what active lanes load and store) and the *unique* bytes (each
  address once per launch: DRAM traffic with perfect L2 reuse inside a launch and none across launches). The
  headline shapes are too large for the interpreter, so the kernels are counted on reduced shapes that keep
  every launch's structure and extrapolated with exact linear models (a check point outside the fit is in the
  tests); the torch ops between launches (partial-sum reductions, copies, gathers) are counted on the headline
  shape itself. `traffic_ratio` = (unique + torch bytes) / compulsory bytes (every input read once, every output
  written once; backward: plus the incoming gradient read and every input gradient written).
* **Machine code.** Every launch compiled for sm_90 with its own arguments, constexprs, `num_warps` and Triton's
  specialisations and the inline-asm fast paths a CUDA launch takes: registers from `cuobjdump -res-usage`,
  spills (spill-store bytes / 4) from `ptxas -v` on the kernel's PTX, the SASS loops from `nvdisasm` (a
  backward branch closes the loop of the Python `for` on its line).
  `loop_instr_per_elem_state`: SASS instructions in the innermost loops, times the iterations the counter
  measured, times the threads, per element-state (per kernel: per state the loop body handles; `all` rows: per
  element-state of the op, all kernels summed).
* **Time.** Per launch the largest of: unique bytes at 3.35 TB/s; MUFU work at 16 lanes/SM/clock; issue at one
  instruction per scheduler per clock (4 per SM), on 132 SMs at 1.755 GHz, the busiest SM's share of the
  programs (the wave tail counts). Roofline = max(compulsory bytes at 3.35 TB/s, the op's minimum exps at the
  MUFU rate); `est_pct_roofline` = roofline / estimate.
* **Ignored, so the estimate is a lower bound and the share an upper bound:** memory and instruction latency
  (the estimate assumes other warps always hide it; kernels at 1-2 blocks per SM will not), L2 misses inside a
  launch and hits across launches, partial DRAM sectors, shared-memory bank conflicts, launch gaps, throttling,
  and imperfect overlap of memory, MUFU and issue time."""


def _mb(b: Any) -> str:
    return f"{int(b) / 1e6:.1f}" if b not in (None, "") else ""


def _f(v: Any, fmt: str) -> str:
    return "" if v is None or v == "" else format(v, fmt)


def summary_table(rows: list[dict[str, Any]]) -> str:
    head = ("| op | shape | mode | traffic ratio | est. us | roofline us | est. % of roofline | bound | "
            "loop instr / elem-state | MUFU / elem-state | max regs | spills |\n"
            "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |\n")
    lines = []
    for r in rows:
        if r["kernel"] != "all" or r["op"].endswith("_unfused"):
            continue
        lines.append(f"| {r['op']} | {r['shape']} | {r['mode']} | {r['traffic_ratio']:.2f} | {r['est_us']:.1f} | "
                     f"{r['roofline_us']:.1f} ({r['roofline_bound']}) | {r['est_pct_roofline']:.1f} | {r['bound']} | "
                     f"{r['loop_instr_per_elem_state']:.1f} | {r['loop_mufu_per_elem_state']:.2f} | {r['regs']} | "
                     f"{r['spills']} |")
    return head + "\n".join(lines) + "\n"


def kernel_table(rows: list[dict[str, Any]]) -> str:
    head = ("| op | shape | mode | kernel | launches | lane MB | unique MB | torch MB | ratio | regs | spills | "
            "smem KB | occupancy | waves | instr / state | MUFU / state | est. us | bound |\n"
            "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
            "---: | ---: | --- |\n")
    lines = []
    for r in rows:
        if r["kernel"] == "all":
            continue
        smem = "" if r.get("smem_bytes") in (None, "") else f"{r['smem_bytes'] / 1024:.0f}"
        lines.append(f"| {r['op']} | {r['shape']} | {r['mode']} | {r['kernel']} | {r['launches']} | "
                     f"{_mb(r['bytes_lane'])} | {_mb(r['bytes_unique'])} | {_mb(r['bytes_torch'])} | "
                     f"{r['traffic_ratio']:.3f} | {r.get('regs', '')} | {r.get('spills', '')} | {smem} | "
                     f"{_f(r.get('occupancy'), '.3f')} | {_f(r.get('waves'), '.2f')} | "
                     f"{_f(r.get('loop_instr_per_elem_state'), '.1f')} | {_f(r.get('loop_mufu_per_elem_state'), '.2f')}"
                     f" | {r['est_us']:.1f} | {r['bound']} |")
    return head + "\n".join(lines) + "\n"


def mix_table(details: dict[Any, Any]) -> str:
    head = ("| op | shape | kernel | total | MUFU | FP32 | SHFL | shared mem | BAR |\n"
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
    lines = []
    for (op, label), d in details.items():
        for (mode, kernel), mix in d.items():
            if mode != "fwd+bwd" or not mix:
                continue
            lines.append(f"| {op} | {label} | {kernel} | {mix.get('total', 0):.1f} | {mix.get('mufu', 0):.2f} | "
                         f"{mix.get('fp32', 0):.1f} | {mix.get('shfl', 0):.2f} | {mix.get('smem', 0):.2f} | "
                         f"{mix.get('bar', 0):.3f} |")
    return head + "\n".join(lines) + "\n"


def unfused_table(rows: list[dict[str, Any]]) -> str:
    head = ("| mode | fused est. us | unfused est. us | fused / unfused | fused traffic ratio | "
            "unfused traffic ratio |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
    lines = []
    for r in rows:
        if r["op"] != "ordered_selective_scan_unfused":
            continue
        f = next(x for x in rows if x["op"] == "ordered_selective_scan" and x["kernel"] == "all"
                 and x["mode"] == r["mode"] and x["shape"] == r["shape"])
        lines.append(f"| {r['mode']} | {f['est_us']:.1f} | {r['est_us']:.1f} | {f['est_us'] / r['est_us']:.2f} | "
                     f"{f['traffic_ratio']:.2f} | {r['traffic_ratio']:.2f} |")
    return head + "\n".join(lines) + "\n"


def write_markdown(rows: list[dict[str, Any]], details: dict[Any, Any], notes: dict[Any, str], path: Path) -> str:
    meta = rows[0]
    parts = [
        "# Static report: each kernel against its roofline (estimated for sm_90, no GPU)\n",
        f"`glsmamba bench --static`, commit {meta['commit']}, triton {meta['triton']}, bf16. "
        "Machine model: H100 SXM (132 SMs, 3.35 TB/s, 1.755 GHz). Rows: `static.csv` (same numbers).\n",
        METHOD + "\n",
        "## Per op (kernel `all`)\n", summary_table(rows),
        "## Fused ordered scan vs the unfused pipeline\n",
        "space_time_scan -> selective_scan_channel_last (K=6 directions folded into 6 x 512 channels) -> "
        "space_time_merge at B2-T5-H64-W48-C512-K6-N16, estimated the same way (the selective scan costed as 6 x "
        "the D=512 row; the torch gathers into scan order counted on the headline shape).\n",
        unfused_table(rows),
        "## Per kernel\n",
        "Kernel rows: `traffic_ratio` is the kernel's unique bytes over the op's compulsory bytes (its share); "
        "`torch ops` is the work between launches. `regs`, `smem`, `spills`: the largest over the kernel's "
        "launches; `occupancy`: the smallest (resident warps / 64); `waves`: programs / (132 x resident blocks), "
        "the largest.\n",
        kernel_table(rows),
        "## Innermost-loop instruction mix per element-state (fwd+bwd)\n",
        "SASS instructions of the innermost loops x measured iterations x threads / element-states the loops "
        "process.\n",
        mix_table(details),
    ]
    if notes:
        parts.append("## Approximations\n")
        parts += [f"* **{op}** ({label}): {note}." for (op, label), note in notes.items()]
        parts.append("")
    text = "\n".join(parts)
    path.write_text(text)
    return text


def write_plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alls = [r for r in rows if r["kernel"] == "all"]
    labels = [f"{r['op'].replace('ordered_selective_scan', 'ordered').replace('selective_scan', 'sel_scan')}"
              f"\n{r['shape'].split('-')[1] if r['op'] == 'selective_scan' else r['shape'][-7:]} {r['mode']}"
              for r in alls]
    fig, axes = plt.subplots(2, 1, figsize=(max(10, 0.55 * len(alls)), 8), sharex=True)
    x = range(len(alls))
    axes[0].bar(x, [r["traffic_ratio"] for r in alls], color="tab:blue")
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("traffic ratio\n(unique + torch) / compulsory")
    axes[1].bar(x, [r["est_pct_roofline"] for r in alls], color="tab:orange")
    axes[1].set_ylabel("estimated % of roofline\n(sm_90, upper bound)")
    axes[1].set_xticks(list(x), labels, rotation=90, fontsize=7)
    fig.suptitle(f"Static report, commit {alls[0]['commit']}: traffic and estimated roofline share per op (no GPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def write_readme(md: str, readme: Path) -> None:
    """Replace the README section between the markers with the summary table of ``md`` and the plot."""
    text = readme.read_text()
    table = md.split("## Per op (kernel `all`)\n", 1)[1].split("## ", 1)[0].strip()
    unfused = md.split("## Fused ordered scan vs the unfused pipeline\n", 1)[1].split("## ", 1)[0].strip()
    section = "\n".join([
        START, README_TITLE, "",
        "`glsmamba bench --static` (no GPU needed): the bytes every kernel moves, counted under the Triton "
        "interpreter, against the bytes each op must move, and each kernel compiled for sm_90, turned into an "
        "estimated H100 time and its share of the op's roofline. Full report, per-kernel rows and method: "
        "[`bench/results/static/static.md`](bench/results/static/static.md) (CSV: `static.csv`). The estimate "
        "ignores latency, L2 misses, bank conflicts and launch gaps: it is a lower bound on time, so the share is "
        "an upper bound.", "", table, "", "Fused vs unfused ordered scan (estimated):", "", unfused, "",
        "![traffic ratio and estimated roofline share per op](bench/results/static/static.png)", END])
    if START in text:
        text = re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _: section, text, flags=re.S)
    else:
        text = text.replace("### Measured results", section + "\n\n### Measured results", 1)
    readme.write_text(text)
