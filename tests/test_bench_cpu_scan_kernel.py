"""``bench/bench_cpu_scan_kernel.py``: it times the reference's no-grad ordered scan with its C++ kernel and with
its PyTorch steps on the same inputs, holds the two outputs to each other, and writes its record."""

from __future__ import annotations

import json

import pytest

from glsmamba.bench import bench_cpu_scan_kernel as bench
from glsmamba.reference import _cpu_kernels

REASON = _cpu_kernels.unavailable_reason()


@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_bench_script_writes_its_record(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GLSMAMBA_SCAN_COMPILE", "0")  # the eager PyTorch steps: no compile in the test
    out = tmp_path / "r.jsonl"
    assert bench.main(["--frames", "1", "--height", "4", "--width", "8", "--channels", "16", "--dstate", "8",
                       "--threads", "1", "--reps", "1", "--out", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["tokens"] == 32 and rec["directions"] == 6 and 0 < rec["max_rel_diff"] < 1e-4
    assert rec["kernel_s"] > 0 and rec["pytorch_steps_s"] > 0 and rec["kernel_call_s"] > 0
    assert rec["glsmamba_scan_compile"] == "0" and rec["commit"] and rec["torch"]
    assert "C++ kernel" in capsys.readouterr().out


def test_bench_script_says_why_without_the_kernel(monkeypatch):
    monkeypatch.setattr(_cpu_kernels, "_LIB", {"reason": "the reference's CPU kernels are unavailable: no g++"})
    with pytest.raises(SystemExit, match="no g\\+\\+"):
        bench.main(["--frames", "1", "--height", "2", "--width", "2", "--reps", "1"])
