"""Smoke test of ``glsmamba bench --quick`` on a tiny subset: CSV schema, statuses, PNGs and summary on disk."""

from __future__ import annotations

import importlib.util
import json

import pytest

from glsmamba import cli
from glsmamba.bench import harness


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def test_quick_sweep_writes_csv_and_plots(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--quick", "--device", "cpu", "--out", str(out), "--T", "1", "2", "--hw", "8x6",
            "--ops", "selective_scan", "attention", "attention_net", "glsmamba", "--cpu-budget-s", "0.02"]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out

    rows = harness.read_rows(out / "results.csv")
    with open(out / "results.csv") as f:
        assert tuple(f.readline().strip().split(",")) == harness.COLUMNS
    ok = {(r["op"], r["backend"], r["mode"]) for r in rows if r["status"] == "ok"}
    for impl in ("sdpa", "sdpa_math"):
        for mode in ("fwd", "fwd+bwd"):
            assert ("attention", impl, mode) in ok
            assert ("attention_net", impl, mode) in ok
    if _has("reference.selective_scan"):
        assert ("selective_scan", "reference", "fwd+bwd") in ok
    # triton is never benched on CPU; compile is skipped on CPU by default: both say why
    assert "selective_scan / triton" in printed and "CUDA only" in printed
    assert not any(r["backend"] == "triton" for r in rows)
    assert {r["tokens"] for r in rows} == {"48", "96"}
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}  # --quick's modes
    for r in rows:
        if r["status"] == "ok":
            assert float(r["ms_p50"]) > 0 and r["mem_kind"].startswith("cpu_peak_rss") and r["commit"]
            assert r["device_kind"] == "cpu" and r["torch"] and r["triton"] and r["timestamp"]

    for name in ("time_attention_fwd.png", "memory_attention_fwd.png", "time_attention_net_conv-depth3_fwd_bwd.png",
                 "memory_attention_net_conv-depth3_fwd_bwd.png", "crossover.png"):  # fmt: skip  (tiny: conv, 2 + 1)
        png = out / name
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (out / "summary.md").read_text()
    assert "## Targets" in md and "| n/a |" in md  # no CUDA rows: the GPU targets are n/a, not PASS/FAIL
    (meta_path,) = out.glob("sweep-*.json")
    meta = json.loads(meta_path.read_text())
    assert meta["counts"]["error"] == 0


def test_skip_existing_resumes_without_duplicates(tmp_path):
    out = tmp_path / "r"
    base = ["bench", "--quick", "--device", "cpu", "--out", str(out), "--T", "1", "--ops", "attention",
            "--backends", "sdpa", "--modes", "fwd", "--no-plot"]  # fmt: skip
    assert cli.main([*base, "--hw", "8x6"]) == 0
    assert cli.main([*base, "--hw", "8x6", "16x12", "--skip-existing"]) == 0
    rows = harness.read_rows(out / "results.csv")
    assert sorted(int(r["tokens"]) for r in rows) == [48, 192]
    assert len({r["run_id"] for r in rows}) == 2


def test_plot_only_redraws(tmp_path):
    out = tmp_path / "b"
    argv = ["bench", "--quick", "--device", "cpu", "--out", str(out), "--T", "1", "--hw", "8x6", "--ops", "attention",
            "--modes", "fwd", "--no-plot"]  # fmt: skip
    assert cli.main(argv) == 0
    assert not list(out.glob("*.png"))
    assert cli.main(["bench", "--plot-only", str(out)]) == 0
    assert (out / "time_attention_fwd.png").exists() and (out / "summary.md").exists()


@pytest.mark.gpu
def test_cuda_sweep_rows(tmp_path):
    out = tmp_path / "g"
    argv = ["bench", "--device", "cuda", "--out", str(out), "--T", "1", "--hw", "16x12", "--ops", "selective_scan",
            "attention", "--backends", "reference", "triton", "sdpa", "--modes", "fwd", "fwd+bwd", "--rep-ms", "10",
            "--no-plot"]  # fmt: skip
    assert cli.main(argv) == 0
    rows = harness.read_rows(out / "results.csv")
    ok = {(r["op"], r["backend"], r["mode"]): r for r in rows if r["status"] == "ok"}
    scan = "selective_scan"
    wanted = [(scan, "triton", "fwd"), (scan, "triton", "fwd+bwd"), ("attention", "sdpa", "fwd")]
    for key in wanted:
        r = ok[key]
        assert r["timer"] == "do_bench" and r["mem_kind"] == "cuda_max_allocated" and r["dtype"] == "bfloat16"
        assert float(r["ms_p20"]) <= float(r["ms_p50"]) <= float(r["ms_p80"])
    r = ok[("selective_scan", "triton", "fwd")]
    assert float(r["gbps"]) > 0
    if harness.device_peaks(r["device"]).mufu is not None:
        assert r["bound"] in ("hbm", "exp") and float(r["pct_roofline"]) > 0
