"""The AVX2 scan prototype of ``bench/bench_cpu_scan_simd.py`` (a measurement tool, not a backend): it computes what
the reference's gathered steps compute, so the speed it reports is for the same work."""

from __future__ import annotations

import json
import math
import platform
import shutil
from pathlib import Path

import pytest
import torch

from glsmamba.bench import bench_cpu_scan_simd as simd
from tests.harness import assert_close, assert_same_special_values


def _avx2() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


pytestmark = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not _avx2() or not shutil.which("g++"),
    reason="the prototype is x86-64 AVX2 + FMA code built with g++ (this machine lacks one of them)")


def test_prototype_matches_the_reference_gathered_steps(tmp_path):
    """Same inputs (the six space-time orders of a 2 x 4 x 6 grid, 16 channels, 16 states): the prototype's outputs
    and last state equal the reference's eager gathered steps to the fp32 tolerance, and a NaN or inf in one token's
    input reaches exactly the outputs it reaches there. The floor build (no exponential) does not."""
    lib = simd.build(out_dir=str(tmp_path))
    inp = simd.inputs((2, 4, 6), channels=16, dstate=16)
    inp["dt"] = inp["dt"] * 10  # decays well inside (0, 1): the exponential matters
    want_y, want_h = simd.reference_scan(**inp, compiled=False)
    got_y, got_h = simd.simd_scan(lib, **inp, threads=2)
    assert_close("y", want_y, got_y, torch.float32)
    assert_close("last state", want_h, got_h, torch.float32)
    for value in (math.nan, math.inf):
        bad = dict(inp, x=inp["x"].clone())
        bad["x"][17, 3] = value
        want, _ = simd.reference_scan(**bad, compiled=False)
        got, _ = simd.simd_scan(lib, **bad, threads=1)
        assert not torch.isfinite(want).all()
        assert_same_special_values(f"y with {value} at token 17", want, got, torch.float32)
    floor_y, _ = simd.simd_scan(simd.build(no_exp=True, out_dir=str(tmp_path)), **inp, threads=2)
    assert not torch.allclose(floor_y, want_y)


def test_prototype_refuses_what_it_cannot_take(tmp_path):
    lib = simd.build(out_dir=str(tmp_path))
    inp = simd.inputs((1, 2, 3), channels=12, dstate=8)
    with pytest.raises(ValueError, match="multiples of 8, got D=12, N=8"):
        simd.simd_scan(lib, **inp, threads=1)
    inp = simd.inputs((1, 2, 3), channels=8, dstate=8)
    with pytest.raises(TypeError, match="contiguous fp32"):
        simd.simd_scan(lib, **dict(inp, x=inp["x"].double()), threads=1)


def test_bench_script_writes_its_record(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    assert simd.main(["--frames", "1", "--height", "4", "--width", "8", "--channels", "16", "--dstate", "8",
                      "--threads", "1", "--reps", "1", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["tokens"] == 32 and rec["directions"] == 6 and rec["max_rel_diff"] < 1e-4
    assert rec["simd_s"] > 0 and rec["reference_s"] > 0 and rec["commit"] and rec["torch"]
    assert "AVX2 prototype" in capsys.readouterr().out


class _Counting:
    """A prototype library that counts its calls."""

    def __init__(self, lib):
        self.lib, self.calls = lib, 0

    def gathered_steps(self, *args):
        self.calls += 1
        return self.lib.gathered_steps(*args)


def test_patched_reference_steps_through_the_prototype(tmp_path, monkeypatch):
    """``patch_reference`` (``bench_network_cpu --simd-gsm-scan``): the no-grad ordered scan with dt, B and C shared
    by the directions runs its full blocks through the prototype, with the same outputs as without it (the patch is
    undone after the test)."""
    from glsmamba.reference import _scan_seq, ordered_scan
    from glsmamba.reference.space_time import STS6D, STS6D_GROUPS, scan_orders

    monkeypatch.setenv("GLSMAMBA_SCAN_COMPILE", "1")  # the fused (gathered) steps at this small size
    monkeypatch.setattr(ordered_scan, "gathered_steps", ordered_scan.gathered_steps)
    monkeypatch.setattr(_scan_seq, "run_compiled", _scan_seq.run_compiled)
    g = torch.Generator().manual_seed(1)
    shape, C, N = (2, 4, 6), 16, 8
    L = math.prod(shape)
    x = torch.randn(1, L, C, generator=g)
    delta = torch.randn(1, 1, L, C, generator=g).expand(1, 6, L, C)
    A = (-torch.rand(1, C, N, generator=g) - 0.5).expand(6, C, N)
    B, Cm = (torch.randn(1, 1, L, N, generator=g).expand(1, 6, L, N) for _ in range(2))
    D = torch.randn(1, C, generator=g).expand(6, C)
    bias = torch.randn(1, C, generator=g).expand(6, C)
    args = (x, delta, A, B, Cm, D, scan_orders(shape, STS6D), STS6D_GROUPS)
    with torch.no_grad():
        want = ordered_scan.ordered_selective_scan(*args, delta_bias=bias)
        lib = _Counting(simd.build(out_dir=str(tmp_path)))
        simd.patch_reference(lib, threads=2)
        got = ordered_scan.ordered_selective_scan(*args, delta_bias=bias)
    assert lib.calls == L // _scan_seq.BLOCK  # every block of 16 tokens (48 tokens: 3)
    assert_close("ordered scan through the prototype", want, got, torch.float32)
