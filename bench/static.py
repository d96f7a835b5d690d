"""``glsmamba bench --static``: every kernel against its roofline, estimated for sm_90 without a GPU.

For each op of ``bench/static_ops.py`` at its headline shape, forward, backward and both:

1. the launches at the headline shape are captured (``bench.traffic.capture``, CUDA geometry, nothing runs) and
   the torch ops between them counted (exact: their bytes depend on shapes only);
2. each launch is compiled for sm_90 with its own arguments (``bench/sass.py``, worker processes): registers,
   spills, shared memory, occupancy, SASS loops;
3. the kernels' bytes and loop trip counts are counted under the interpreter on reduced shapes and extrapolated
   to the headline shape (``bench/traffic.py``, ``bench/extrapolate.py``);
4. the estimate (``bench/estimate.py``) and the report: ``bench/results/static/static.csv``, ``static.md``,
   ``static.png`` and the README section between the ``static-report`` markers.

Steps 2 and 3 run in parallel processes (``--workers``, default 2). Deterministic: two runs at one commit give the
same CSV except the ``commit`` column.

Counted points are cached in ``counts.json`` next to the CSV (committed with it), each with a digest of everything
its count depends on (:func:`sources_digest`: the op's kernels and launchers and every module they import, the
counter, the op builds, the count driver, the triton/torch/numpy releases). A count is a pure function of those,
so a cached point is the point counted again; a change to an op's kernels or launchers changes that op's digest
and its points are counted afresh (``--recount`` counts every point). The interpreter step is most of a cold
run (about 25 CPU-minutes, 2026-12-02); the capture, the sm_90 compile and the report are redone every run.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "static"
README = Path(__file__).resolve().parent.parent / "README.md"
COLUMNS = ("op", "kernel", "mode", "shape", "dtype", "launches", "bytes_compulsory", "bytes_lane", "bytes_unique",
           "bytes_torch", "traffic_ratio", "regs", "spills", "smem_bytes", "occupancy", "waves",
           "loop_instr_per_elem_state", "loop_mufu_per_elem_state", "est_us", "est_pct_roofline", "bound", "triton",
           "commit")
MODES = ("fwd", "bwd", "fwd+bwd")
UNFUSED = "ordered_selective_scan_unfused"


# ------------------------------------------------------------------------------------------------------------------
# counting (interpreter processes)
# ------------------------------------------------------------------------------------------------------------------


def _launch_record(la: Any) -> dict[str, Any]:
    return {"kernel": la.kernel, "programs": la.programs, "lane": la.lane, "unique": la.unique,
            "loops": {str(k): v for k, v in la.loops.items()}, "phase": la.phase, "grid": list(la.grid),
            "constexprs": {k: v for k, v in la.constexprs.items() if isinstance(v, (bool, int, float, str))}}


def _run_case(case: Any, grad: bool, trace: Any) -> None:
    import torch

    out = case.run()
    if grad:
        trace.paused = True
        dout = case.dout(out)
        trace.paused = False
        trace.phase = "bwd"
        torch.autograd.backward(out, dout)


def count_point(spec: Any, params: dict[str, Any], config: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Counted launches of one reduced point: ``{"fwd": [...], "grad": [...]}`` (no-grad forward; forward and
    backward with gradients)."""
    from glsmamba.bench.traffic import capture, count
    from glsmamba.kernels._utils import launch_config

    out = {}
    with launch_config(cuda_geometry=True, **config):
        for grad in (False, True):  # fill the launchers' caches (group tables, ...) outside the count
            case = spec.build(params, grad)
            with capture() as tr:
                _run_case(case, grad, tr)
        for grad in (False, True):
            case = spec.build(params, grad)
            with count() as tr:
                _run_case(case, grad, tr)
            out["grad" if grad else "fwd"] = [_launch_record(la) for la in tr.launches]
    return out


_COUNT_MODULES = ("glsmamba.bench.traffic", "glsmamba.bench.static_ops", "glsmamba.model.backend")
# imported by the op builds only for the unfused pipeline, which is captured every run, never counted
_NOT_COUNTED = ("glsmamba.bench.bench_ordered_scan",)


def _module_file(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:  # `from module import name`: the name is not a module
        return None
    return None if spec is None or spec.origin is None else Path(spec.origin)


def _imports(name: str, path: Path) -> set[str]:
    """The ``glsmamba`` modules the module ``name`` (source ``path``) imports (any scope, relative imports
    resolved), with their packages."""
    out: set[str] = set()
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from package import module`
    mods = {m for m in out if m.startswith("glsmamba.")}
    return {".".join(m.split(".")[:i]) for m in mods for i in range(2, len(m.split(".")) + 1)}


def _source_files(op: str) -> list[Path]:
    """The source files a count of ``op`` can run: its Triton module (``model.backend.OPS``), the counter, the op
    builds and the backend lookup, with every ``glsmamba`` module they import, transitively, and the ``__init__``
    of every package on the way (whose own imports define modules a count does not run). An over-approximation:
    a module imported but not used still counts."""
    from glsmamba.model.backend import OPS

    todo = [f"glsmamba.kernels.{OPS[op]}", *_COUNT_MODULES]
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        if name in seen or name in _NOT_COUNTED or (f := _module_file(name)) is None or f.suffix != ".py":
            continue
        seen[name] = f
        if f.name != "__init__.py":  # a package's own imports (the model behind model.backend) define, not count
            todo += sorted(_imports(name, f))
    return [seen[k] for k in sorted(seen)]


def sources_digest(op: str) -> str:
    """sha256 over what a count of ``op``'s points depends on: the source files of :func:`_source_files` (the
    kernels and their launchers, the reference modules they import for input checks and scan-order tables, the
    counter, the op builds), this module's count driver, and the triton, torch and numpy releases."""
    import numpy
    import torch
    import triton

    h = hashlib.sha256()
    for f in _source_files(op):
        h.update(f"{f.parent.name}/{f.name}\0".encode())
        h.update(f.read_bytes())
    for fn in (count_point, _launch_record, _run_case):
        h.update(inspect.getsource(fn).encode())
    h.update(f"triton {triton.__version__} torch {torch.__version__} numpy {numpy.__version__}".encode())
    return h.hexdigest()


def load_counts(path: Path, digests: dict[str, str]) -> dict[str, Any]:
    """The cached counts of ``path`` (key -> counted point) whose sources digest is ``digests[key]``."""
    if not path.exists():
        return {}
    counts = json.loads(path.read_text())["counts"]
    return {k: v["result"] for k, v in counts.items() if k in digests and v["sources"] == digests[k]}


def save_counts(path: Path, digests: dict[str, str], counts: dict[str, Any]) -> None:
    """One line per point (diffs stay readable); only the points of this run are kept."""
    lines = [f"{json.dumps(k)}: {json.dumps(dict(sources=digests[k], result=v), sort_keys=True)}"
             for k, v in sorted(counts.items())]
    body = ",\n".join(lines)
    path.write_text(f'{{"counts": {{\n{body}\n}}}}\n')


def capture_full(spec: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The headline shape's launches (with compile jobs) and torch bytes, forward and forward+backward."""
    from glsmamba.bench import sass
    from glsmamba.bench.traffic import capture
    from glsmamba.kernels._utils import launch_config

    res: dict[str, Any] = {"jobs": []}
    # captured, never run: the launches a CUDA device takes, inline-asm fast paths included (LaunchConfig.fast)
    with launch_config(cuda_geometry=True, fast=True), capture() as tr:  # fill the launchers' caches (tables, ...)
        _run_case(spec.build(dict(params, zeros=True), False), False, tr)
    for grad in (False, True):
        jobs: list[dict[str, Any]] = []
        def record(ex: Any, a: Any, kw: Any, la: Any, jobs: list[dict[str, Any]] = jobs) -> None:
            jobs.append(sass.job(ex, a, kw, la.grid))

        case = spec.build(dict(params, zeros=True), grad)  # values do not matter when nothing runs
        with launch_config(cuda_geometry=True, fast=True), capture(record) as tr:
            _run_case(case, grad, tr)
        launches = [_launch_record(la) for la in tr.launches]
        for la, j in zip(launches, jobs, strict=True):
            la["job"] = len(res["jobs"])
            res["jobs"].append(j)
        res["grad" if grad else "fwd"] = launches
        res["torch_grad" if grad else "torch_fwd"] = {ph: tr.torch_bytes(ph) for ph in ("fwd", "bwd")}
        res["torch_ops_grad" if grad else "torch_ops_fwd"] = {ph: sum(1 for o in tr.torch_ops if o.phase == ph)
                                                             for ph in ("fwd", "bwd")}
        res["launch_objs_grad" if grad else "launch_objs_fwd"] = tr.launches
    return res


def _spec_of(index: int) -> Any:
    from glsmamba.bench.static_ops import build_ordered_unfused, specs

    return build_ordered_unfused() if index < 0 else specs()[index]


def _capture_task(t: dict[str, Any]) -> dict[str, Any]:
    spec = _spec_of(t["spec"])
    rec = capture_full(spec, spec.full)
    derived = spec.derive(spec.full, rec.pop("launch_objs_grad"))
    rec.pop("launch_objs_fwd")
    rec["derived"] = {k: v for k, v in derived.items() if k not in spec.full}
    return rec


def _count_task(t: dict[str, Any]) -> dict[str, Any]:
    spec = _spec_of(t["spec"])
    return count_point(spec, spec.points[t["point"]], dict(t["pins"], scale=Fraction(t["scale"])))


def _worker(kind: str, src: str, dst: str) -> int:
    run_task = {"capture": _capture_task, "count": _count_task}[kind]
    out = []
    for t in json.loads(Path(src).read_text()):
        t0 = time.process_time()
        res = run_task(t)
        res["cpu_s"] = time.process_time() - t0
        out.append(res)
    Path(dst).write_text(json.dumps(out))
    return 0


def _interp_env() -> dict[str, str]:
    return dict(os.environ, TRITON_INTERPRET="1")


def pool(kind: str, tasks: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """Run ``capture`` or ``count`` tasks in ``workers`` interpreter processes (costliest first, greedy)."""
    shares: list[list[int]] = [[] for _ in range(max(1, workers))]
    loads = [0.0] * len(shares)
    for i in sorted(range(len(tasks)), key=lambda i: -tasks[i].get("cost", 1)):
        k = loads.index(min(loads))
        shares[k].append(i)
        loads[k] += tasks[i].get("cost", 1)
    results: list[Any] = [None] * len(tasks)
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for k, share in enumerate(shares):
            if not share:
                continue
            src, dst = Path(tmp, f"t{k}.json"), Path(tmp, f"r{k}.json")
            src.write_text(json.dumps([tasks[i] for i in share]))
            cmd = [sys.executable, "-m", "glsmamba.bench.static", "--worker", kind, str(src), str(dst)]
            procs.append((share, dst, subprocess.Popen(cmd, env=_interp_env(), stderr=subprocess.PIPE, text=True)))
        for share, dst, p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                raise RuntimeError(f"{kind} worker failed ({p.returncode}):\n{err[-4000:]}")
            for i, r in zip(share, json.loads(dst.read_text()), strict=True):
                results[i] = r
    return results


# ------------------------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------------------------


def _mode_launches(rec: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    if mode == "fwd":
        return rec["fwd"]
    return [la for la in rec["grad"] if mode == "fwd+bwd" or la["phase"] == "bwd"]


def _torch(full: dict[str, Any], mode: str, key: str = "torch") -> int:
    if mode == "fwd":
        return full[f"{key}_fwd"]["fwd"]
    g = full[f"{key}_grad"]
    return g["bwd"] if mode == "bwd" else g["fwd"] + g["bwd"]


def op_rows(spec: Any, full_params: dict[str, Any], full: dict[str, Any], points: list[dict[str, Any]],
            compiled: list[dict[str, Any]], meta: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """CSV rows of one op (every mode) and the per-kernel details the markdown report shows."""
    from glsmamba.bench import estimate as est
    from glsmamba.bench.extrapolate import extrapolate_mode
    from glsmamba.bench.sass import SMS, SassReport

    feats = [spec.features(p) for p in spec.points]
    at = spec.features(full_params)
    rows, details = [], {}
    for mode in MODES:
        fl = _mode_launches(full, mode)
        ex = extrapolate_mode([_mode_launches(p, mode) for p in points], feats, fl, at, integral=spec.exact,
                              multiplier=spec.multiplier(full_params))
        comp = spec.compulsory(full_params, mode)
        roof, roof_bound = est.roofline_s(comp, spec.min_mufu(full_params, mode))
        kernel_rows, bound_time = [], {"hbm": 0.0, "mufu": 0.0, "issue": 0.0}
        tot_loop_instr = tot_loop_mufu = Fraction(0)
        for k, e in ex.items():
            launches = [la for la in fl if la["kernel"] == k]
            progs = sum(la["programs"] for la in launches)
            parts = {"hbm": 0.0, "mufu": 0.0, "issue": 0.0}
            loop_instr = loop_mufu = loop_items = Fraction(0)
            mix: dict[str, Fraction] = {}
            regs = spills = smem = 0
            occ, waves = 1.0, 0.0
            for la, loops in zip(launches, e["launch_loops"], strict=True):
                c = compiled[la["job"]]
                le = est.launch_estimate(c, la["programs"], la["constexprs"],
                                         e["unique"] * la["programs"] / progs, loops)
                if le.unmapped:  # a SASS loop whose `for` line the counter never saw: counted once per program
                    details.setdefault("unmapped", set()).add(f"{k.rsplit('.', 1)[-1]} (lines {le.unmapped})")
                which = max(("hbm", le.hbm_s), ("mufu", le.mufu_s), ("issue", le.issue_s), key=lambda t: t[1])[0]
                parts[which] += le.time_s
                loop_instr, loop_mufu, loop_items = loop_instr + le.loop_instr, loop_mufu + le.loop_mufu, \
                    loop_items + le.loop_items
                for lp in SassReport.from_json(c["sass"]).loops:
                    if lp.innermost:
                        it = loops.get(lp.line, Fraction(la["programs"]))
                        for cls, n in lp.counts.items():
                            mix[cls] = mix.get(cls, Fraction(0)) + n * it * c["num_warps"] * 32
                b, o = est.occupancy(c)
                regs, spills = max(regs, c["regs"]), max(spills, c["spills"])
                smem = max(smem, c["dyn_smem"] + c["static_smem"])
                occ, waves = min(occ, o), max(waves, la["programs"] / (SMS * max(b, 1)))
            t = sum(parts.values())
            for key, v in parts.items():
                bound_time[key] += v
            tot_loop_instr += loop_instr
            tot_loop_mufu += loop_mufu
            short = k.rsplit(".", 1)[-1]
            details[(mode, short)] = {cls: float(v / loop_items) if loop_items else 0.0 for cls, v in mix.items()}
            kernel_rows.append(dict(
                op=spec.op, kernel=short, mode=mode, launches=len(launches), bytes_compulsory=comp,
                bytes_lane=e["lane"], bytes_unique=e["unique"], bytes_torch=0, traffic_ratio=e["unique"] / comp,
                regs=regs, spills=spills, smem_bytes=smem, occupancy=occ, waves=waves,
                loop_instr_per_elem_state=float(loop_instr / loop_items) if loop_items else 0.0,
                loop_mufu_per_elem_state=float(loop_mufu / loop_items) if loop_items else 0.0,
                est_us=t * 1e6, est_pct_roofline=None, bound=max(parts, key=parts.get)))
        tb = _torch(full, mode)
        t_torch = tb / est.HBM_BYTES_PER_S
        bound_time["hbm"] += t_torch
        if tb:
            ops = _torch(full, mode, "torch_ops")
            kernel_rows.append(dict(
                op=spec.op, kernel="torch ops", mode=mode, launches=ops, bytes_compulsory=comp, bytes_lane=0,
                bytes_unique=0, bytes_torch=tb, traffic_ratio=tb / comp, est_us=t_torch * 1e6, bound="hbm"))
        t_all = sum(r["est_us"] for r in kernel_rows) / 1e6
        uniq = sum(r["bytes_unique"] for r in kernel_rows)
        ks = [r for r in kernel_rows if r["kernel"] != "torch ops"]
        rows += kernel_rows
        rows.append(dict(
            op=spec.op, kernel="all", mode=mode, launches=sum(r["launches"] for r in ks), bytes_compulsory=comp,
            bytes_lane=sum(r["bytes_lane"] for r in ks), bytes_unique=uniq, bytes_torch=tb,
            traffic_ratio=(uniq + tb) / comp, regs=max(r["regs"] for r in ks), spills=max(r["spills"] for r in ks),
            smem_bytes=max(r["smem_bytes"] for r in ks), occupancy=min(r["occupancy"] for r in ks),
            waves=max(r["waves"] for r in ks),
            loop_instr_per_elem_state=float(tot_loop_instr / spec.elem_states(full_params)),
            loop_mufu_per_elem_state=float(tot_loop_mufu / spec.elem_states(full_params)),
            est_us=t_all * 1e6, est_pct_roofline=100 * roof / t_all, bound=max(bound_time, key=bound_time.get),
            roofline_us=roof * 1e6, roofline_bound=roof_bound))
    for r in rows:
        r.update(shape=spec.label, dtype=str(spec.dtype).removeprefix("torch.").replace("bfloat16", "bf16"), **meta)
    return rows, details


def unfused_rows(rows: list[dict[str, Any]], unfused: dict[str, Any], ordered_label: str,
                 meta: dict[str, str]) -> list[dict[str, Any]]:
    """``ordered_selective_scan_unfused`` (kernel ``all``): space_time_scan -> selective_scan_channel_last (the K
    directions folded into K*C channels) -> space_time_merge at the ordered scan's headline shape. Its kernels are
    costed from the component ops' rows (the scan and merge rows exactly; the selective scan as K times the
    D=512 row, whose kernels do per direction what the folded call does); its torch ops (gathers into scan order,
    layout copies) are counted on the headline shape."""
    from glsmamba.bench.estimate import HBM_BYTES_PER_S

    def get(op: str, mode: str, shape: str | None = None) -> dict[str, Any]:
        return next(r for r in rows if r["op"] == op and r["mode"] == mode and r["kernel"] == "all"
                    and (shape is None or r["shape"] == shape))

    out = []
    for mode in MODES:
        ordered = get("ordered_selective_scan", mode, ordered_label)
        parts = [(get("space_time_scan", mode), 1), (get("space_time_merge", mode), 1),
                 (get("selective_scan", mode, "B2-D512-N16-L15360"), 6)]
        kern_t = sum(w * (r["est_us"] - r["bytes_torch"] / HBM_BYTES_PER_S * 1e6) for r, w in parts)
        tb = _torch(unfused, mode)
        uniq = sum(w * r["bytes_unique"] for r, w in parts)
        est_us = kern_t + tb / HBM_BYTES_PER_S * 1e6
        out.append(dict(meta, op=UNFUSED, kernel="all", mode=mode, shape=ordered_label, dtype=ordered["dtype"],
                        launches=sum(w * r["launches"] for r, w in parts), bytes_compulsory=ordered["bytes_compulsory"],
                        bytes_lane=sum(w * r["bytes_lane"] for r, w in parts), bytes_unique=uniq, bytes_torch=tb,
                        traffic_ratio=(uniq + tb) / ordered["bytes_compulsory"], est_us=est_us,
                        est_pct_roofline=100 * ordered["roofline_us"] / est_us, bound="",
                        regs=max(r["regs"] for r, _ in parts), spills=max(r["spills"] for r, _ in parts)))
    return out


def _fmt(col: str, v: Any) -> str:
    if v is None or v == "":
        return ""
    if col in ("traffic_ratio", "occupancy"):
        return f"{v:.3f}"
    if col in ("waves", "loop_instr_per_elem_state", "loop_mufu_per_elem_state", "est_us"):
        return f"{v:.2f}"
    if col == "est_pct_roofline":
        return f"{v:.1f}"
    return str(v)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([_fmt(c, r.get(c)) for c in COLUMNS])


# ------------------------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------------------------


def run(out: Path = RESULTS, workers: int = 2, update_readme: bool = True, say: Any = print,
        recount: bool = False) -> Path:
    """Capture, compile, count (or take the points' counts from ``out/counts.json`` when made with the same
    sources, unless ``recount``), extrapolate, estimate; write the CSV, markdown, plot (and README section)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("bench.static.run needs TRITON_INTERPRET=1 (use `glsmamba bench --static`)")
    import triton

    from glsmamba.bench import sass
    from glsmamba.bench.harness import git_commit
    from glsmamba.bench.report_static import write_markdown, write_plot, write_readme
    from glsmamba.bench.static_ops import specs
    from glsmamba.bench.traffic import check_triton

    check_triton()
    t0 = time.time()
    commit = git_commit()  # before this run writes counts.json (a tracked file): the commit measured, not "+dirty"
    all_specs = specs()
    # the unfused pipeline's torch ops are the heaviest capture: first
    caps = pool("capture", [dict(spec=i, cost=4 if i < 0 else 1) for i in [-1, *range(len(all_specs))]], workers)
    unfused = caps[0]
    fulls, full_params, jobs = [], [], []
    for spec, f in zip(all_specs, caps[1:], strict=True):
        offset = len(jobs)
        jobs += f.pop("jobs")
        for la in f["fwd"] + f["grad"]:
            la["job"] += offset
        fulls.append(f)
        full_params.append(dict(spec.full, **f.pop("derived")))
    say(f"captured {len(jobs)} launches at the headline shapes ({time.time() - t0:.0f} s)")
    compiled: list[Any] = []
    errors: list[BaseException] = []

    def compile_thread() -> None:
        try:
            compiled.extend(sass.compile_all(jobs, workers=workers))
        except BaseException as e:  # surfaced after the join
            errors.append(e)

    th = threading.Thread(target=compile_thread)
    th.start()
    tasks, keys, slot, uses = [], [], {}, []  # identical points of two specs (the selective scan's D=384 and 512)
    for si, (spec, fp) in enumerate(zip(all_specs, full_params, strict=True)):  # run once
        for pi, p in enumerate(spec.points):
            t = dict(spec=si, point=pi, pins=spec.pin(p, fp), scale=str(spec.scale(p, fp)), cost=spec.cost(p))
            key = repr((spec.op, spec.build.__name__, sorted(p.items()), sorted(t["pins"].items()), t["scale"]))
            if key not in slot:
                slot[key] = len(tasks)
                tasks.append(t)
                keys.append(key)
            uses.append((si, slot[key]))
    op_digest = {op: sources_digest(op) for op in {spec.op for spec in all_specs}}
    digests = {k: op_digest[all_specs[t["spec"]].op] for k, t in zip(keys, tasks, strict=True)}
    cached = {} if recount else load_counts(out / "counts.json", digests)
    todo = [i for i, k in enumerate(keys) if k not in cached]
    fresh = dict(zip([keys[i] for i in todo], pool("count", [tasks[i] for i in todo], workers), strict=True))
    unique = [cached[k] if k in cached else fresh[k] for k in keys]
    out.mkdir(parents=True, exist_ok=True)
    save_counts(out / "counts.json", digests, dict(zip(keys, unique, strict=True)))  # kept if a later step fails
    counted = [unique[i] for _, i in uses]
    cpu: dict[str, float] = {}
    for t, c in zip(tasks, unique, strict=True):
        name = f"{all_specs[t['spec']].op}[{all_specs[t['spec']].label}]"
        cpu[name] = cpu.get(name, 0.0) + c["cpu_s"]
    say(f"counted {len(todo)} reduced shapes, {len(tasks) - len(todo)} more from {out / 'counts.json'} "
        f"({time.time() - t0:.0f} s; interpreter CPU s per op when counted: "
        + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()) + ")")
    th.join()
    if errors:
        raise errors[0]
    say(f"compiled {len(jobs)} launches for sm_90 ({time.time() - t0:.0f} s; "
        f"{sum(c['cpu_s'] for c in compiled):.0f} CPU s in the workers, ptxas not included)")
    meta = {"triton": triton.__version__, "commit": commit}
    rows, details, notes = [], {}, {}
    for si, spec in enumerate(all_specs):
        pts = [c for (sj, _), c in zip(uses, counted, strict=True) if sj == si]
        r, d = op_rows(spec, full_params[si], fulls[si], pts, compiled, meta)
        rows += r
        unmapped = d.pop("unmapped", set())
        details[(spec.op, spec.label)] = d
        note = spec.note if not spec.exact else ""
        if unmapped:
            note += ("; " if note else "") + ("SASS loops not tied to a counted Python loop (counted once per "
                                              "program, so their instructions are undercounted): "
                                              + ", ".join(sorted(unmapped)))
        if note:
            notes[(spec.op, spec.label)] = note
    rows += unfused_rows(rows, unfused, all_specs[2].label, meta)
    write_csv(rows, out / "static.csv")
    md = write_markdown(rows, details, notes, out / "static.md")
    write_plot(rows, out / "static.png")
    if update_readme:
        write_readme(md, README)
    say(f"wrote {out / 'static.csv'}, static.md, static.png in {time.time() - t0:.0f} s")
    return out / "static.csv"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m glsmamba.bench.static", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=RESULTS, help=f"output folder (default {RESULTS})")
    p.add_argument("--workers", type=int, default=2, help="processes for counting and for compiling (default 2)")
    p.add_argument("--no-readme", action="store_true", help="do not rewrite the README section")
    p.add_argument("--recount", action="store_true",
                   help="count every reduced shape under the interpreter even if OUT/counts.json holds it")
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        return _worker(*a.worker)
    if os.environ.get("TRITON_INTERPRET") != "1":  # re-run in a process that imports triton for the interpreter
        return subprocess.call([sys.executable, "-m", "glsmamba.bench.static", *(argv or sys.argv[1:])],
                               env=_interp_env())
    run(a.out, a.workers, update_readme=not a.no_readme, recount=a.recount)
    return 0


if __name__ == "__main__":
    sys.exit(main())
