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
