"""``glsmamba verify``: the one tolerance table, its comparison, its exit codes, and the interpreter set-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import glsmamba.model.backend as registry
from glsmamba.cli import main
from glsmamba.commands import verify as verify_cmd
from glsmamba.verify import driver, tolerances
from tests import harness

ROOT = Path(__file__).resolve().parents[1]


def test_the_harness_imports_the_one_tolerance_table():
    # tests/harness.py and glsmamba verify share one table: imported, never copied
    assert harness.FWD is tolerances.FWD and harness.tol is tolerances.tol
    assert harness.GRAD_FACTOR == tolerances.GRAD_FACTOR
    assert "FWD_TOL" not in vars(verify_cmd) and "GRAD_FACTOR" not in vars(verify_cmd)


def test_compare_uses_the_harness_criterion():
    ref = torch.tensor([1.0, -2.0, 0.0])
    atol, rtol = tolerances.tol("float32").atol, tolerances.tol("float32").rtol
    inside = ref + torch.tensor([0.9 * (atol + rtol * 1.0), 0.0, 0.9 * atol])
    outside = ref + torch.tensor([0.0, 0.0, 1.1 * atol])
    assert tolerances.compare(ref, inside, "float32", "fwd").passed
    bad = tolerances.compare(ref, outside, "float32", "fwd")
    assert not bad.passed and bad.max_abs == pytest.approx(1.1 * atol)
    assert tolerances.compare(ref, outside, "float32", "grad").passed  # grads get x5
    assert not tolerances.compare(ref, torch.tensor([1.0, float("nan"), 0.0]), "float32", "fwd").passed
    assert not tolerances.compare(ref, ref[:2], "float32", "fwd").passed
    assert tolerances.compare(None, None, "float32", "grad").passed
    assert not tolerances.compare(ref, None, "float32", "grad").passed
    assert bad.first == (2,) and bad.outside == 1  # the first mismatch, as the harness reports it
    with pytest.raises(AssertionError, match=r"1 of 3 elements outside, first at \[2\]"):
        harness.assert_close("x", ref, outside)
    # a NaN in the reference fails too (a NaN compares false with every bound)
    assert not tolerances.compare(torch.tensor([float("nan")]), torch.tensor([0.0]), "float32").passed


def test_verify_quick_passes_and_covers_every_op(capsys, monkeypatch):
    from glsmamba.verify import driver
    from glsmamba.verify.cases import Sizes

    real = driver.level_plan

    def smaller(level, on_gpu):  # the interpreter pays per sequential step: CI runs every op at a quarter the length
        _, dtypes = real(level, on_gpu)
        return Sizes(1, 2, 3, 2, channels=4, dstate=2, length=9, window=(2, 2), offset_groups=2), dtypes

    monkeypatch.setattr(driver, "level_plan", smaller)
    assert main(["verify", "--quick", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["passed"] and info["level"] == "quick"
    ops = {r["op"] for r in info["rows"]}
    assert ops == set(registry.OPS) | {"GLSMamba (whole network)"}
    assert all(r["passed"] and r["backend"] == "triton" for r in info["rows"])
    assert {"fwd", "bwd"} <= {r["check"].split()[0] for r in info["rows"]}


def _broken_impl(real_get_impl, broken_op: str, mode: str):
    def get_impl(op, backend):
        fn = real_get_impl(op, backend)
        if op != broken_op or backend != "triton":
            return fn

        def wrong(*args, **kwargs):
            if mode == "raise":
                raise RuntimeError("kernel exploded")
            return fn(*args, **kwargs) * 1.01
        return wrong
    return get_impl


@pytest.mark.parametrize("mode", ["wrong", "raise"])
def test_verify_fails_on_a_wrong_kernel(monkeypatch, capsys, mode):
    monkeypatch.setattr(registry, "get_impl", _broken_impl(registry.get_impl, "space_time_scan", mode))
    assert main(["verify", "--ops", "space_time_scan", "--no-model"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "space_time_scan" in out and "FAILED" in out
    if mode == "raise":
        assert "kernel exploded" in out


def test_verify_sets_the_interpreter_itself():
    # a fresh process without TRITON_INTERPRET: verify must enable the interpreter before triton is imported
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "GLSMAMBA_BACKEND")}
    env["PYTHONPATH"] = str(ROOT)
    if torch.cuda.is_available():
        pytest.skip("with CUDA the compiled kernels run; the interpreter set-up is for CPU-only machines")
    proc = subprocess.run([sys.executable, "-m", "glsmamba", "verify", "--ops", "space_time_merge", "--no-model",
                           "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = json.loads(proc.stdout)
    assert info["passed"] and info["device"].startswith("cpu") and len(info["rows"]) == 2


def test_prepare_environment_refuses_after_triton_import(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("only meaningful without CUDA")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    import triton  # noqa: F401  (already imported by conftest)

    assert "TRITON_INTERPRET=1" in driver.prepare_environment()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert driver.prepare_environment() is None


def test_op_cases_cover_the_registry_and_run_on_the_reference():
    from glsmamba.verify.cases import OP_CASES, VERIFY_CASES, Sizes, with_grad

    assert {op for op, _ in OP_CASES} == set(registry.OPS) == {op for op, _ in VERIFY_CASES}
    sizes = Sizes(2, 2, 3, 4, channels=6, dstate=3, length=11, window=(2, 3), offset_groups=1)
    for (op, variant), case in OP_CASES.items():
        kw = case.inputs(sizes, torch.float32, "cpu", 7)
        again = case.inputs(sizes, torch.float32, "cpu", torch.Generator().manual_seed(7))
        for k, v in kw.items():  # an int seeds a fresh generator: the same values
            assert not isinstance(v, torch.Tensor) or torch.equal(v, again[k]), (op, variant, k)
        leaves = with_grad(kw, case.grads)
        out = registry.get_impl(op, "reference")(**leaves)
        outs = out if isinstance(out, tuple) else (out,)
        grads = torch.autograd.grad(sum(o.sum() for o in outs), [leaves[k] for k in case.grads])
        assert all(g is not None and torch.isfinite(g).all() for g in grads), (op, variant)


def test_mamba_init_of_the_op_cases():
    from glsmamba.verify.cases import ordered_scan_inputs

    x = ordered_scan_inputs(2, shape=(1, 2, 3), channels=4, dstate=3, init="mamba")
    assert torch.equal(x["A"], -torch.arange(1.0, 4.0).expand(2, 4, 3)) and torch.equal(x["D"], torch.ones(2, 4))
    dt = torch.nn.functional.softplus(x["delta_bias"])  # the step the bias alone gives: log-uniform in [1e-3, 1e-1]
    assert bool(((dt > 0.99e-3) & (dt < 1.01e-1)).all())
    with pytest.raises(ValueError, match="init must be one of"):
        ordered_scan_inputs(2, init="xavier")
