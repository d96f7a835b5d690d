"""The backend registry: resolution rules, explicit-request errors, per-call switching."""

from __future__ import annotations

import pytest
import torch

from glsmamba.model import backend


def test_auto_resolves_cpu_to_reference():
    assert backend.resolve("auto", torch.device("cpu")) == "reference"
    assert backend.resolve("auto", None) == "reference"


def test_bad_backend_name_names_argument():
    with pytest.raises(ValueError, match="backend must be one of"):
        backend.resolve("cuda", None)
    with pytest.raises(ValueError, match="backend must be one of"):
        with backend.use_backend("fast"):
            pass


def test_explicit_triton_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(backend.BackendUnavailableError, match="interpreter"):
        backend.resolve("triton", torch.device("cpu"))


def test_explicit_triton_with_interpreter_on_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend.resolve("triton", torch.device("cpu")) == "triton"


def test_context_and_default_precedence(monkeypatch):
    monkeypatch.delenv("GLSMAMBA_BACKEND", raising=False)
    assert backend.current_backend() == "auto"
    monkeypatch.setenv("GLSMAMBA_BACKEND", "reference")
    assert backend.current_backend() == "reference"
    try:
        backend.set_default_backend("triton")
        assert backend.current_backend() == "triton"
        with backend.use_backend("reference"):
            assert backend.current_backend() == "reference"
            with backend.use_backend("auto"):
                assert backend.current_backend() == "auto"
        assert backend.current_backend() == "triton"
    finally:
        backend.set_default_backend(None)


def test_unknown_op():
    with pytest.raises(ValueError, match="unknown op"):
        backend.get_op("conv9d")


def test_info_command_reports_backends(capsys):
    from glsmamba.cli import main

    assert main(["info", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"reference": "available"' in out
    assert '"triton"' in out
    assert '"reference_cpu_kernels": "' in out


def test_info_says_whether_the_reference_cpu_kernels_run(monkeypatch):
    from glsmamba.commands import info
    from glsmamba.reference import _cpu_kernels

    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "0")
    assert info.collect()["reference_cpu_kernels"] == "off (GLSMAMBA_CPU_KERNEL=0): PyTorch only"
    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "auto")
    monkeypatch.setattr(_cpu_kernels, "_LIB", {"reason": "the reference's CPU kernels are unavailable: no g++"})
    assert info.collect()["reference_cpu_kernels"] == (
        "unavailable, PyTorch paths run: the reference's CPU kernels are unavailable: no g++")
    monkeypatch.setattr(_cpu_kernels, "_LIB", {"lib": object()})
    assert info.collect()["reference_cpu_kernels"].startswith("available (GLSMAMBA_CPU_KERNEL=auto; cache ")


def test_dispatch_under_torch_compile_does_not_recompile(monkeypatch):
    """The dispatcher traced by dynamo: the second and third calls reuse the first graph (the call count was once a
    guarded constant, so every call recompiled until dynamo's limit and then ran eagerly); calls inside the graph
    are not counted, eager calls are."""
    import torch._dynamo

    from glsmamba.reference.space_time import STS6D, scan_orders

    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)
    orders = scan_orders((2, 2, 3), STS6D)
    fn = torch.compile(lambda x: backend.call("space_time_scan", x, orders, backend="reference") * 2,
                       backend="eager")
    backend.reset_call_counts()
    x = torch.randn(1, 12, 4)
    want = backend.call("space_time_scan", x, orders, backend="reference") * 2
    for _ in range(3):
        torch.testing.assert_close(fn(x), want, rtol=0, atol=0)
    assert backend.call_counts() == {("space_time_scan", "reference"): 1}
    torch._dynamo.reset()
