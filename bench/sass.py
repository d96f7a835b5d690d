"""sm_90 report: every kernel launch compiled ahead of time for Hopper, its resources and its loop instruction mix.

Nothing here restates a launcher's choices. The launches are intercepted (:func:`bench.traffic.capture`: the public
op runs on CPU tensors, every launch is recorded and skipped), and each one is described by the values its
launcher passed: tensors by dtype and ``data_ptr() % 16``, scalars by value, constexprs and ``num_warps`` /
``num_stages`` as given. A worker process without ``TRITON_INTERPRET`` rebuilds stand-in arguments (CPU tensors
of the same dtype and 16-byte alignment) and calls the kernel's own ``JITFunction.run(..., warmup=True)`` under
a stand-in driver that reports an sm_90 target: Triton's binder then takes exactly the specialisations a CUDA
launch takes (16-divisible pointers and integers, integers equal to 1, ``do_not_specialize``), compiles, and
returns the kernel without launching it.

From the cubin (Triton ships ``cuobjdump`` and ``nvdisasm`` in ``triton/backends/nvidia/bin``):

* ``cuobjdump -res-usage``: registers per thread (``REG``), static shared memory; plus the dynamic shared
  memory Triton requests (``metadata.shared``).
* ``ptxas -v`` on the kernel's PTX, run again with the ptxas and the options Triton's own ``make_cubin`` uses
  for sm_90 (``get_ptxas(90)``, ``-lineinfo --regAllocOptLevel=2 --gpu-name=sm_90a``; its register count must
  equal the cubin's, or the report fails):
  ``spills`` is the spill-store bytes / 4 summed over the functions it reports (the kernel and any subroutine
  it calls). ptxas puts spill slots in the stack frame (``STACK``), not in ``LOCAL``, so cuobjdump's
  ``LOCAL`` (which Triton's ``n_spills`` reads on a real driver) stays 0 however much a kernel spills.
* ``nvdisasm -g``: the SASS with source lines. A loop is a backward branch (``BRA`` to a lower address); the
  branch carries the line of the Python ``for`` it closes, which is how each SASS loop is tied to the trip counts
  the traffic counter measured for that line. Every instruction belongs to its innermost enclosing loop; the
  instructions of each loop body are counted by class: total (without NOPs), MUFU (``MUFU.*``: ex2, lg2, rcp,
  rsq, sin, cos, tanh), FP32 (``FFMA``, ``FMUL``, ``FADD``), SHFL, shared memory (``LDS*``, ``STS*``, ``LDSM``,
  ``STSM``, ``ATOMS``, ``LDGSTS``), barriers (``BAR``) and local memory (``LDL``, ``STL``: where a spill costs).

Occupancy on H100/H200 (sm_90: 65,536 registers, 228 KB shared memory (227 KB per block, 1 KB reserved per
block), 64 warps, 32 blocks per SM, 132 SMs): blocks per SM = the minimum of the register limit (registers
allocated per warp in units of 256), the shared-memory limit, 64 / warps and 32; occupancy = resident warps / 64.

Limits: ptxas may unroll or peel a loop (a peeled iteration counts as straight-line code, once per program);
instructions reached only through ``CALL`` (slow-path subroutines) are counted where they sit in the binary;
predicated-off instructions are counted as issued (they are).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ---- the machine ----------------------------------------------------------------------------------------------
SMS = 132
REGS_PER_SM = 65536
SMEM_PER_SM = 228 * 1024
SMEM_RESERVED_PER_BLOCK = 1024
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
REG_ALLOC_UNIT = 256  # registers, per warp

CLASSES = ("total", "mufu", "fp32", "shfl", "smem", "bar", "local")
_FP32 = {"FFMA", "FMUL", "FADD"}
_SMEM = {"LDS", "STS", "LDSM", "STSM", "ATOMS", "LDGSTS"}
_LOCAL = {"LDL", "STL"}  # local memory: spill reloads and stores


# ------------------------------------------------------------------------------------------------------------------
# launch descriptions (built in the counting process, consumed by the compile worker)
# ------------------------------------------------------------------------------------------------------------------


def describe(value: Any) -> Any:
    """A JSON-able description of one launch argument, enough to rebuild a stand-in with the same specialisation."""
    import torch

    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype).removeprefix("torch."), "align": value.data_ptr() % 16}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    if hasattr(value, "value") and type(value).__name__ == "constexpr":
        return describe(value.value)
    import triton.language as tl

    if isinstance(value, tl.dtype):  # a constexpr element type (e.g. the index width)
        return {"tl_dtype": value.name}
    raise TypeError(f"cannot describe a launch argument of type {type(value).__name__}")


def job(executor: Any, args: Sequence[Any], kwargs: dict[str, Any], grid: Sequence[int]) -> dict[str, Any]:
    """The compile job of one intercepted launch (``executor``: the interpreter's grid executor)."""
    fn = executor.fn
    return {"module": fn.__module__, "kernel": fn.__name__, "args": [describe(a) for a in args],
            "kwargs": {k: describe(v) for k, v in kwargs.items()}, "grid": list(grid)}


def job_key(j: dict[str, Any]) -> str:
    return json.dumps([j["module"], j["kernel"], j["args"], j["kwargs"]], sort_keys=True)


# ------------------------------------------------------------------------------------------------------------------
# the worker (TRITON_INTERPRET unset)
# ------------------------------------------------------------------------------------------------------------------


def _rebuild(desc: dict[str, Any]) -> Any:
    import torch

    if "tensor" in desc:
        dtype = getattr(torch, desc["tensor"])
        el = torch.empty((), dtype=dtype).element_size()
        buf = torch.empty(64, dtype=dtype)
        base = buf.data_ptr() % 16
        if base:  # pragma: no cover - the CPU allocator aligns to 64 bytes
            raise RuntimeError("cannot build a 16-byte aligned stand-in tensor")
        return buf[desc["align"] // el:]
    if "tl_dtype" in desc:
        import triton.language as tl

        return getattr(tl, desc["tl_dtype"])
    return desc["value"]


class _Sm90Driver:
    """Just enough of a Triton driver for ``JITFunction.run(..., warmup=True)`` to compile for sm_90."""

    def __init__(self) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", 90, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> Any:
        return self.target

    def is_active(self) -> bool:
        return True


_SM90: list[_Sm90Driver] = []


def tool(name: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not shipped with this triton ({path})")
    return str(path)


def compile_job(j: dict[str, Any], cache: dict[str, Any]) -> dict[str, Any]:
    """Compile one launch for sm_90 with its own arguments and report its resources and SASS loops."""
    import importlib

    import triton
    from triton.runtime.driver import driver

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("the sm_90 worker must run without TRITON_INTERPRET")
    jit = getattr(importlib.import_module(j["module"]), j["kernel"])
    args = [_rebuild(a) for a in j["args"]]
    kwargs = {k: _rebuild(v) for k, v in j["kwargs"].items()}
    if not _SM90:  # a worker process is dedicated to sm_90: set once, never reset (there is no real driver)
        _SM90.append(_Sm90Driver())
        driver.set_active(_SM90[0])
    kernel = jit.run(*args, grid=tuple(j["grid"]), warmup=True, **kwargs)
    cubin = kernel.asm["cubin"]
    key = kernel.hash if hasattr(kernel, "hash") else str(hash(cubin))
    if key in cache:
        return cache[key]
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        res = subprocess.run([tool("cuobjdump"), "-res-usage", path], capture_output=True, text=True, check=True)
        sass = subprocess.run([tool("nvdisasm"), "-c", "-g", path], capture_output=True, text=True, check=True)
    finally:
        os.unlink(path)
    name = kernel.name if hasattr(kernel, "name") else j["kernel"]
    usage = parse_res_usage(res.stdout, name)
    spill = ptxas_spills(kernel.asm["ptx"], name, usage["REG"])
    md = kernel.metadata
    out = {
        "hash": key, "regs": usage["REG"], "stack_bytes": usage["STACK"], "spill_store_bytes": spill["stores"],
        "spill_load_bytes": spill["loads"], "spills": spill["stores"] // 4,
        "static_smem": usage["SHARED"], "dyn_smem": int(md.shared), "num_warps": int(md.num_warps),
        "num_stages": int(getattr(md, "num_stages", 0)), "triton": triton.__version__,
        "sass": analyse_sass(sass.stdout).to_json(),
    }
    cache[key] = out
    return out


def ptxas_spills(ptx: str, name: str, regs: int) -> dict[str, int]:
    """Spill-store and spill-load bytes ``ptxas -v`` reports for kernel ``name``'s PTX, summed over every
    function it lists; ``regs`` (the cubin's count) must be what this ptxas run allocates too."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "k.ptx")
        src.write_text(ptx)
        cmd = [get_ptxas(90).path, "-lineinfo", "-v", "--regAllocOptLevel=2", "--gpu-name=sm_90a", str(src), "-o",
               str(Path(tmp, "k.o"))]
        run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"ptxas -v failed ({run.returncode}) on {name!r}: {run.stderr[-2000:]}")
    return parse_ptxas_log(run.stderr, name, regs)


def parse_ptxas_log(log: str, name: str, regs: int) -> dict[str, int]:
    """Spill bytes from a ``ptxas -v`` log; checks that kernel ``name`` was given ``regs`` registers."""
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    used = re.search(rf"Compiling entry function '{re.escape(name)}'.*?Used (\d+) registers", log, re.S)
    if not spills or used is None:
        raise ValueError(f"no spill or register report for {name!r} in ptxas -v output:\n{log[:2000]}")
    if int(used.group(1)) != regs:
        raise ValueError(f"ptxas -v gave {name!r} {used.group(1)} registers, the cubin {regs}: its options no "
                         "longer match Triton's make_cubin")
    return {"stores": sum(int(a) for a, _ in spills), "loads": sum(int(b) for _, b in spills)}


def parse_res_usage(text: str, name: str) -> dict[str, int]:
    """The resource line of kernel ``name`` in ``cuobjdump -res-usage`` output."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("Function") and line.strip().rstrip(":").endswith(name):
            fields = dict(re.findall(r"(\w+(?:\[\d+\])?):(\d+)", lines[i + 1]))
            return {k: int(fields.get(k, 0)) for k in ("REG", "STACK", "SHARED", "LOCAL")}
    raise ValueError(f"no resource usage for {name!r} in cuobjdump output:\n{text[:2000]}")


# ------------------------------------------------------------------------------------------------------------------
# SASS analysis
# ------------------------------------------------------------------------------------------------------------------

_INSTR = re.compile(r"/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_LINE = re.compile(r'//## File "(.*?)", line (\d+)')
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


def _class_of(opcode: str) -> list[str]:
    base = opcode.split(".")[0]
    out = []
    if base == "MUFU":
        out.append("mufu")
    if base in _FP32:
        out.append("fp32")
    if base == "SHFL":
        out.append("shfl")
    if base in _SMEM:
        out.append("smem")
    if base == "BAR":
        out.append("bar")
    if base in _LOCAL:
        out.append("local")
    return out


@dataclass
class Loop:
    start: int
    end: int
    file: str
    line: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    depth: int = 0
    innermost: bool = True


@dataclass
class SassReport:
    loops: list[Loop]
    outside: dict[str, int]  # instructions in no loop
    total: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"loops": [vars(lp) for lp in self.loops], "outside": self.outside, "total": self.total}

    @staticmethod
    def from_json(d: dict[str, Any]) -> SassReport:
        return SassReport([Loop(**lp) for lp in d["loops"]], d["outside"], d["total"])


def analyse_sass(text: str) -> SassReport:
    """Loops (backward branches) and instruction classes of one kernel's ``nvdisasm -c -g`` listing."""
    instrs: list[tuple[int, str, str, int]] = []  # (address, opcode, file, line)
    labels: dict[str, int] = {}
    pending: list[str] = []
    branches: list[tuple[int, str, str, int]] = []
    where = ("", 0)
    for raw in text.splitlines():
        line = raw.strip()
        m = _LINE.search(line)
        if m:
            where = (m.group(1), int(m.group(2)))
            continue
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTR.search(line)
        if not m:
            continue
        addr, text_ = int(m.group(1), 16), m.group(2)
        for lab in pending:
            labels[lab] = addr
        pending = []
        body = re.sub(r"^@!?U?P[T\d]+\s+", "", text_.strip())
        opcode = body.split()[0] if body else ""
        instrs.append((addr, opcode, *where))
        if opcode.split(".")[0] == "BRA":
            t = _TARGET.search(body)
            if t:
                branches.append((addr, t.group(1), *where))
    loops = []
    for addr, label, file, line in branches:
        target = labels.get(label)
        if target is not None and target < addr:
            loops.append(Loop(target, addr, file, line))
    loops.sort(key=lambda lp: (lp.start, -lp.end))
    for lp in loops:
        lp.depth = sum(1 for o in loops if o is not lp and o.start <= lp.start and lp.end <= o.end)
        lp.innermost = not any(o is not lp and lp.start <= o.start and o.end <= lp.end for o in loops)
    outside = dict.fromkeys(CLASSES, 0)
    total = dict.fromkeys(CLASSES, 0)
    for addr, opcode, _, _ in instrs:
        if opcode.startswith("NOP"):
            continue
        owner = None
        for lp in loops:  # the innermost enclosing loop: the deepest one containing addr
            if lp.start <= addr <= lp.end and (owner is None or lp.depth > owner.depth):
                owner = lp
        counts = owner.counts if owner is not None else outside
        for c in ("total", *_class_of(opcode)):
            counts[c] += 1
            total[c] += 1
    return SassReport(loops, outside, total)


# ------------------------------------------------------------------------------------------------------------------
# occupancy
# ------------------------------------------------------------------------------------------------------------------


def blocks_per_sm(regs: int, warps: int, smem: int) -> int:
    """Resident blocks per SM on sm_90 for a kernel with ``regs`` registers per thread, ``warps`` warps per block
    and ``smem`` bytes of shared memory per block."""
    per_warp = -(-max(regs, 1) * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by_regs = (REGS_PER_SM // per_warp) // warps
    by_smem = SMEM_PER_SM // (smem + SMEM_RESERVED_PER_BLOCK) if smem else MAX_BLOCKS_PER_SM
    return max(0, min(by_regs, by_smem, MAX_WARPS_PER_SM // warps, MAX_BLOCKS_PER_SM))


# ------------------------------------------------------------------------------------------------------------------
# running the workers
# ------------------------------------------------------------------------------------------------------------------


def compile_all(jobs: list[dict[str, Any]], workers: int = 2, timeout: float = 1800) -> list[dict[str, Any]]:
    """Compile every job in ``workers`` subprocesses (all launches of one kernel function in one worker, so its
    repeated specialisations hit Triton's in-process cache); results in job order."""
    by_fn: dict[str, list[int]] = {}
    for i, j in enumerate(jobs):
        by_fn.setdefault(f"{j['module']}.{j['kernel']}", []).append(i)
    # heaviest first (backward kernels compile slowest), then greedy onto the least loaded worker
    groups = sorted(by_fn.values(), key=lambda idx: (-("bwd" in jobs[idx[0]]["kernel"]), -len(idx)))
    shares: list[list[int]] = [[] for _ in range(max(1, workers))]
    loads = [0.0] * len(shares)
    for idx in groups:
        k = loads.index(min(loads))
        shares[k].extend(idx)
        loads[k] += 3.0 if "bwd" in jobs[idx[0]]["kernel"] else 1.0
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, share in enumerate(shares):
            if not share:
                continue
            src, dst = Path(tmp, f"in{k}.json"), Path(tmp, f"out{k}.json")
            src.write_text(json.dumps([jobs[i] for i in share]))
            cmd = [sys.executable, "-m", "glsmamba.bench.sass", "--worker", str(src), str(dst)]
            procs.append((share, dst, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                       text=True)))
        results: list[dict[str, Any] | None] = [None] * len(jobs)
        for share, dst, p in procs:
            out, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                raise RuntimeError(f"sm_90 compile worker failed ({p.returncode}):\n{err[-4000:]}")
            for i, r in zip(share, json.loads(dst.read_text()), strict=True):
                results[i] = r
    return [r for r in results if r is not None]


def _worker(src: str, dst: str) -> int:
    import time

    jobs = json.loads(Path(src).read_text())
    cache: dict[str, Any] = {}
    out = []
    for j in jobs:
        try:
            t0 = time.process_time()
            out.append(dict(compile_job(j, cache), cpu_s=time.process_time() - t0))
        except Exception as e:
            raise RuntimeError(f"compiling {j['module']}.{j['kernel']} for sm_90 failed: {type(e).__name__}: {e}") \
                from e
    Path(dst).write_text(json.dumps(out))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="sm_90 compile worker (internal)")
    p.add_argument("--worker", nargs=2, metavar=("JOBS", "OUT"), required=True)
    a = p.parse_args(argv)
    return _worker(*a.worker)


if __name__ == "__main__":
    sys.exit(main())
