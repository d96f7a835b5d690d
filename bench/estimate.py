"""Estimated time on an H100 SXM (sm_90) from counted bytes and compiled loops: a lower bound, and the share of
the op's roofline it reaches.

Per launch of a kernel (P programs of w warps, b resident blocks per SM from the compiled kernel's registers and
shared memory, 132 SMs, clock 1.755 GHz):

* HBM time = the launch's unique bytes / 3.35 TB/s (perfect L2 reuse inside the launch, none across launches);
* MUFU time = ceil(P / 132) x (MUFU warp instructions per program x 32 lanes) / (16 lanes per SM per clock);
* issue time = ceil(P / 132) x (warp instructions per program) / (min(4, resident warps) x clock), 4 schedulers
  issuing one instruction per clock each; resident warps = w x min(b, ceil(P / 132));
* the launch's estimate is the largest of the three; a kernel's is the sum over its launches; the op's is the sum
  over its kernels plus its torch ops between launches (their bytes at 3.35 TB/s).

ceil(P / 132) is the number of programs the busiest SM runs: the tail of the last wave counts, the SMs idle in a
launch of fewer than 132 programs do not help. Dynamic instruction counts: each SASS instruction times the
executions of its innermost enclosing loop (the trip counts the traffic counter measured for the ``for`` line the
loop's backward branch carries), straight-line code once per program.

Roofline time of an op = max(compulsory bytes / 3.35 TB/s, the op's minimum MUFU operations / (16 x 132 x
1.755 GHz)); ``est_pct_roofline`` = roofline time / estimated time.

What the model ignores (so the estimate is optimistic, and the share an upper bound): memory and instruction
latency (a warp waiting on a load issues nothing; the estimate assumes other warps always fill the gap),
dependent-issue stalls, L2 misses inside a launch and L2 hits across launches, DRAM and L2 bank or sector
inefficiency (partial 32-byte sectors are counted as the bytes used), shared-memory bank conflicts, launch
overhead and the gaps between launches, clock throttling, and the overlap of a launch's HBM, MUFU and issue time
(taken as perfect).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from glsmamba.bench.sass import SMS, SassReport, blocks_per_sm

HBM_BYTES_PER_S = 3.35e12
CLOCK_HZ = 1.755e9
MUFU_PER_SM_PER_CLOCK = 16
SCHEDULERS_PER_SM = 4
MUFU_PER_S = MUFU_PER_SM_PER_CLOCK * SMS * CLOCK_HZ


@dataclass
class LaunchEstimate:
    hbm_s: float
    mufu_s: float
    issue_s: float
    loop_instr: Fraction  # thread-level instructions in innermost loops (x iterations x threads)
    loop_mufu: Fraction
    loop_items: Fraction  # element-states processed by those loop iterations
    unmapped: list[int]

    @property
    def time_s(self) -> float:
        return max(self.hbm_s, self.mufu_s, self.issue_s)


def items_per_iteration(constexprs: dict[str, Any]) -> int:
    """Element-states one loop iteration handles: the product of the launch's ``BLOCK_*`` constexprs and its
    padded state size ``NP`` (the naming convention of every kernel here; a kernel without them counts 1)."""
    n = 1
    for k, v in constexprs.items():
        if (k.startswith("BLOCK_") or k == "NP") and isinstance(v, int) and not isinstance(v, bool):
            n *= v
    return n


def launch_estimate(compiled: dict[str, Any], programs: int, constexprs: dict[str, Any], unique_bytes: float,
                    loops: dict[int, Fraction]) -> LaunchEstimate:
    """The estimate of one launch (``compiled``: the sm_90 worker's result for it; ``loops``: iterations per
    source line over all programs of the launch)."""
    sass = SassReport.from_json(compiled["sass"])
    warps = compiled["num_warps"]
    smem = compiled["dyn_smem"] + compiled["static_smem"]
    instr = Fraction(sass.outside["total"] * programs)
    mufu = Fraction(sass.outside["mufu"] * programs)
    loop_instr = loop_mufu = loop_items = Fraction(0)
    unmapped = []
    items = items_per_iteration(constexprs)
    for lp in sass.loops:
        iters = loops.get(lp.line)
        if iters is None:
            unmapped.append(lp.line)
            iters = Fraction(programs)
        instr += lp.counts["total"] * iters
        mufu += lp.counts["mufu"] * iters
        if lp.innermost:
            loop_instr += lp.counts["total"] * iters
            loop_mufu += lp.counts["mufu"] * iters
            loop_items += iters * items
    if not sass.loops:  # straight-line kernel: the whole body is the "loop", once per program
        loop_instr, loop_mufu, loop_items = instr, mufu, Fraction(programs * items)
    threads = warps * 32
    busiest = math.ceil(programs / SMS)
    b = max(1, blocks_per_sm(compiled["regs"], warps, smem))
    resident_warps = warps * min(b, busiest)
    per_program_instr = float(instr) / programs * warps  # warp instructions
    per_program_mufu = float(mufu) / programs * warps
    issue = busiest * per_program_instr / (min(SCHEDULERS_PER_SM, resident_warps) * CLOCK_HZ)
    mufu_s = busiest * per_program_mufu * 32 / (MUFU_PER_SM_PER_CLOCK * CLOCK_HZ)
    return LaunchEstimate(unique_bytes / HBM_BYTES_PER_S, mufu_s, issue, loop_instr * threads,
                          loop_mufu * threads, loop_items, unmapped)


def roofline_s(compulsory_bytes: int, min_mufu: int) -> tuple[float, str]:
    """(roofline time, what binds it: ``hbm`` or ``mufu``)."""
    hbm, mufu = compulsory_bytes / HBM_BYTES_PER_S, min_mufu / MUFU_PER_S
    return (hbm, "hbm") if hbm >= mufu else (mufu, "mufu")


def occupancy(compiled: dict[str, Any]) -> tuple[int, float]:
    """(resident blocks per SM, theoretical occupancy = resident warps / 64)."""
    warps = compiled["num_warps"]
    b = blocks_per_sm(compiled["regs"], warps, compiled["dyn_smem"] + compiled["static_smem"])
    return b, b * warps / 64
