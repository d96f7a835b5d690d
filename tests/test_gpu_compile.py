"""Every Triton kernel compiled ahead of time for sm_90 without a GPU, from the launches the launchers make.

The interpreter runs kernels through numpy and never lowers them, so a kernel can pass every CPU test and still
fail to compile for a GPU. Here every op runs small with the CUDA geometry while ``bench.traffic.capture``
records its launches (nothing executes), and each distinct launch is compiled for sm_90 by the sm_90 report's
worker processes (``bench/sass.py``: the kernel's own ``JITFunction.run(..., warmup=True)`` with the launch's
arguments, so the constexprs, ``num_warps`` and specialisations are the launcher's, not restated here). The test
fails if a kernel does not compile or spills registers, and checks that the report finds each kernel's loops
where the source has them. ~1-3 min on 2 cores (Triton's cache makes reruns fast). Skipped when this Triton
cannot compile ahead of time here.
"""

from __future__ import annotations

import inspect
import os
import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="the launches are intercepted under the interpreter (TRITON_INTERPRET=1)")


def _runs():
    """(name, launch_config changes, zero-argument function running the op forward and backward)."""
    from glsmamba.bench import static_ops
    from glsmamba.kernels.selective_scan import selective_scan

    def ss(N: int, **kw):
        def run():
            g = torch.Generator().manual_seed(0)
            u, delta, z = (torch.randn(1, 64, 512, generator=g).bfloat16().requires_grad_() for _ in range(3))
            A = -torch.rand(64, N, generator=g).requires_grad_()
            Bm, Cm = (torch.randn(1, N, 512, generator=g).bfloat16().requires_grad_() for _ in range(2))
            Dv, bias = (torch.randn(64, generator=g).requires_grad_() for _ in range(2))
            out, last = selective_scan(u, delta, A, Bm, Cm, Dv, z=z, delta_bias=bias, delta_softplus=True,
                                       return_last_state=True)
            torch.autograd.backward((out, last), (torch.ones_like(out), torch.ones_like(last)))
        return run

    def spec_run(spec, **p):
        def run():
            case = spec.build(dict(spec.points[0], **p), True)
            out = case.run()
            torch.autograd.backward(out, torch.ones_like(out))
        return run

    ordered, windows = static_ops.ordered_spec("sts6d"), static_ops.ordered_spec("windows")
    return [
        ("selective scan, gate, last state, chunked forward", {}, ss(16)),
        ("selective scan N=1, one chunk", dict(tiles_per_chunk=4, bwd_splits=1), ss(1)),
        ("ordered scan STS6D, backward channel ranges", dict(bwd_splits=2),
         spec_run(ordered, C=64, thw=(2, 8, 20), L=320)),
        ("ordered scan windows", {}, spec_run(windows, C=64)),
        # a machine of 1/8 the SMs: 2-channel tiles (the windows' choice at the headline shape); for STS6D 16
        # channels in two 8-channel warps (its choice at the headline shape)
        ("ordered scan windows, 2-row tiles", dict(scale=Fraction(1, 8)), spec_run(windows, C=64)),
        ("ordered scan STS6D, 16-row tiles of two warps", dict(scale=Fraction(1, 8)),
         spec_run(ordered, C=64, thw=(2, 8, 20), L=320)),
        ("space-time scan", {}, spec_run(static_ops.space_time_spec("space_time_scan"))),
        ("space-time merge", {}, spec_run(static_ops.space_time_spec("space_time_merge"))),
        ("deformable", {}, spec_run(static_ops.deformable_spec(), G=4)),
    ]


def _for_lines(module: str, kernel: str) -> set[int]:
    import importlib

    fn = getattr(importlib.import_module(module), kernel)
    while hasattr(fn, "fn"):  # @triton.heuristics / @triton.jit wrappers down to the Python function
        fn = fn.fn
    lines, first = inspect.getsourcelines(fn)
    return {first + i for i, line in enumerate(lines) if re.match(r"\s*for \w+ in (tl\.)?range\(", line)}


def test_every_kernel_compiles_for_sm90_without_spills():
    from glsmamba.bench import sass
    from glsmamba.bench.traffic import capture
    from glsmamba.kernels._utils import launch_config

    try:
        sass.tool("ptxas")
        sass.tool("cuobjdump")
        sass.tool("nvdisasm")
    except FileNotFoundError as e:
        pytest.skip(f"this triton cannot compile for sm_90 here: {e}")
    jobs: dict[str, dict] = {}
    for name, knobs, run in _runs():
        def record(ex, args, kwargs, launch, name=name):
            j = sass.job(ex, args, kwargs, launch.grid)
            jobs.setdefault(sass.job_key(j), dict(j, what=name))

        with launch_config(cuda_geometry=True, fast=True, **knobs), capture(record):
            run()
    kernels = {(j["module"], j["kernel"]) for j in jobs.values()}
    expected = set()
    for mod in ("_scan_common", "selective_scan", "ordered_scan", "space_time", "deformable"):
        src = Path(__file__).resolve().parents[1] / "kernels" / f"{mod}.py"
        expected |= {(f"glsmamba.kernels.{mod}", k) for k in re.findall(r"^def (_\w+_kernel)\(", src.read_text(),
                                                                          re.M)}
    assert kernels == expected, f"kernels never launched by the runs above: {sorted(expected - kernels)}"
    results = sass.compile_all(list(jobs.values()), workers=2)
    # spills: ptxas -v's spill stores (bench/sass.py), with the inline-asm fast paths a CUDA launch takes
    spilled = sorted({(j["kernel"], j["what"]) for j, r in zip(jobs.values(), results, strict=True) if r["spills"]})
    assert not spilled, f"kernels that spill registers on sm_90: {spilled}"
    looped = set()
    for j, r in zip(jobs.values(), results, strict=True):
        report = sass.SassReport.from_json(r["sass"])
        assert report.total["total"] > 0 and 0 < r["regs"] <= 255
        found = {lp.line for lp in report.loops if Path(lp.file).name == j["module"].rsplit(".", 1)[-1] + ".py"}
        assert found <= _for_lines(j["module"], j["kernel"]), (j["kernel"], found)
        if found:
            looped.add(j["kernel"])
    # (a launch with a trip count of 1 has no loop left: Triton specialises integers equal to 1 as constants)
    for k in ("_ss_fwd_kernel", "_ss_bwd_kernel", "_os_fwd_kernel", "_os_bwd_kernel", "_deform_fwd_kernel"):
        assert k in looped, f"{k}: no SASS loop tied to a `for` line of its source"
