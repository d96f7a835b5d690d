"""Bench harness pieces: quantiles, device peaks, roofline and traffic arithmetic, CSV, memory, failure rows."""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import pytest
import torch

from glsmamba.bench import baselines, cases, harness, summary, sweep
from glsmamba.bench.cases import Case, Shape, Target
from tests.harness import assert_close


def test_quantiles_match_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 50):
        xs = rng.exponential(size=n).tolist()
        assert harness.quantiles(xs) == pytest.approx(np.quantile(xs, [0.2, 0.5, 0.8]).tolist(), rel=1e-12)


@pytest.mark.parametrize(
    "name,bw,mufu",
    [
        ("NVIDIA H100 80GB HBM3", 3.35e12, 3.9e12),
        ("NVIDIA H100 PCIe", 2.0e12, None),
        ("NVIDIA H100 NVL", 3.9e12, None),
        ("NVIDIA H200", 4.8e12, 3.9e12),
        ("NVIDIA GeForce RTX 4090", None, None),
    ],
)
def test_device_peaks_table(name, bw, mufu):
    p = harness.device_peaks(name)
    assert (p.bw, p.mufu) == (bw, mufu)


def test_roofline_hand_computed():
    peaks = harness.DevicePeaks("NVIDIA H100 80GB HBM3", 3.35e12, 3.9e12)
    # 3e9 bytes in 4 ms = 750 GB/s; HBM floor 3e9 / 3.35e12 = 0.896 ms; exp floor 7.8e9 / 3.9e12 = 2 ms -> exp-bound
    r = harness.roofline(4.0, 3e9, 7.8e9, None, peaks)
    assert r["gbps"] == pytest.approx(750.0)
    assert r["pct_peak_bw"] == pytest.approx(100 * 750e9 / 3.35e12)
    assert r["bound"] == "exp"
    assert r["roofline_ms"] == pytest.approx(2.0)
    assert r["pct_roofline"] == pytest.approx(50.0)
    # unknown device: rates but no roofline columns
    r = harness.roofline(4.0, 3e9, 7.8e9, None, harness.DevicePeaks("cpu", None, None))
    assert r["gbps"] == pytest.approx(750.0) and "roofline_ms" not in r and "pct_peak_bw" not in r


def test_selective_scan_traffic_target_shape():
    # B=2, D=384, N=16, L=15360, bf16: per token 3*384*2 + 2*16*2 = 2368 bytes; exps 16 + softplus exp and log.
    nbytes, mufu, flops = cases.selective_scan_traffic(2, 384, 15360, 16, 2)["fwd"]
    assert nbytes == 2 * 15360 * 2368
    assert mufu == 2 * 384 * 15360 * 18
    assert flops is None
    r = harness.roofline(1.0, nbytes, mufu, None, harness.device_peaks("NVIDIA H100 80GB HBM3"))
    assert r["bound"] == "exp"  # docs/kernels.md section 5: N=16 bf16 is MUFU-bound on H100
    both = cases.selective_scan_traffic(2, 384, 15360, 16, 2)
    assert both["fwd+bwd"][0] == both["fwd"][0] + both["bwd"][0]


def test_csv_writer_appends_full_precision_and_refuses_other_schema(tmp_path):
    path = tmp_path / "r.csv"
    w = harness.CsvWriter(path)
    w.write({"op": "x", "ms_p50": 1.0 / 3.0, "status": "ok"})
    harness.CsvWriter(path).write({"op": "y", "status": "oom"})
    rows = harness.read_rows(path)
    assert [r["op"] for r in rows] == ["x", "y"]
    assert float(rows[0]["ms_p50"]) == 1.0 / 3.0
    assert tuple(rows[0]) == harness.COLUMNS
    with pytest.raises(ValueError, match="not in the schema"):
        w.write({"bogus": 1})
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="different header"):
        harness.CsvWriter(other)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc (Linux only)")
def test_cpu_peak_memory_sees_a_large_allocation():
    def fn():
        t = torch.ones(64 * 1024 * 1024 // 4 * 4)  # 256 MiB of float32, touched
        return float(t[-1])

    peak, delta, kind = harness.measure_memory(fn, torch.device("cpu"))
    assert kind.startswith("cpu_peak_rss")
    assert delta >= 200.0, (peak, delta)


def test_is_oom():
    assert harness.is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert harness.is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1"))
    assert not harness.is_oom(RuntimeError("shape mismatch"))


def test_slope():
    assert summary.slope([(10, 100), (100, 10000), (1000, 1e6)]) == pytest.approx(2.0)
    assert summary.slope([(10, 5)]) is None


def test_attention_impls_match_explicit_softmax():
    q, k, v = (torch.randn(2, 3, 37, 16, dtype=torch.float64) for _ in range(3))
    ref = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(16), dim=-1) @ v
    for impl in baselines.ATTENTION_IMPLS:
        assert_close(f"attention[{impl}]", ref, baselines.attention(q, k, v, impl=impl))
    with pytest.raises(ValueError, match="impl"):
        baselines.attention(q, k, v, impl="flash3")


def test_attention_net_shapes():
    net = baselines.AttentionNet(32, depth=2, joints=5)
    y = net(torch.randn(2, 3, 3, 4 * 6, 4 * 5))
    assert y.shape == (2, 5, 6, 5)
    with pytest.raises(ValueError, match="images"):
        net(torch.randn(2, 3, 24, 20))


def test_attention_net_on_the_presets_encoder():
    """The sweep's attention network is the paper's attention baseline: the GLSMamba preset's own encoder (frozen as
    the preset's is), then attention blocks as deep as the preset's GSM + LRM blocks."""
    from glsmamba.model import get_config
    from glsmamba.model.encoder import build_encoder

    (target,) = [t for t in cases.targets("tiny") if t.op == "attention_net"]
    cfg = get_config("tiny")
    assert target.variant == f"{cfg.encoder}-depth{cfg.num_gsm + cfg.num_lrm}"
    assert cases.parse_attention_variant(target.variant) == ("conv", 3)
    assert cases.parse_attention_variant("depth6") == ("stem", 6)
    shape = Shape(B=1, T=5, H=4, W=3, C=cfg.dim, N=4)
    net = cases.attention_network(shape, 3, "tiny", "sdpa")
    case = target.build(shape, torch.float32, torch.device("cpu"), "sdpa")  # tiny trains its encoder: all params
    assert len(case.grad_inputs) == len(list(net.parameters())) > len(list(net.encoder.parameters()))
    assert type(net.encoder).__name__ == type(build_encoder(cfg)).__name__
    x = torch.randn(1, 5, 3, 16, 12)
    y = net(x)
    assert y.shape == (1, 17, 4, 3)
    with torch.no_grad():  # the encoder feeds the tokens
        next(net.encoder.parameters()).add_(1.0)
    assert not torch.equal(net(x), y)
    # tiny trains its encoder; a frozen encoder gets no gradient and runs without autograd
    frozen = baselines.AttentionNet(cfg.dim, depth=1, encoder=build_encoder(cfg), encoder_channels=cfg.encoder_channels)
    frozen(x).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in frozen.encoder.parameters())
    assert frozen.stem.weight.grad is not None
    with pytest.raises(ValueError, match="encoder_channels"):
        baselines.AttentionNet(32, encoder=build_encoder(cfg))


def test_mambapy_baseline_matches_recurrent_oracle():
    pytest.importorskip("mambapy", reason="optional baseline: pip install --no-deps mambapy")
    import glsmamba.reference.selective_scan as rs
    from glsmamba.verify.cases import selective_scan_inputs

    x = selective_scan_inputs(batch=2, dim=6, length=37, dstate=4, init="mamba")  # as the benchmark draws them
    ref = rs.selective_scan_recurrent(**x, delta_softplus=True)
    assert_close("mambapy", ref, baselines.mambapy_selective_scan(**x, delta_softplus=True))


def _sweep(tmp_path, extra: list[str]) -> sweep.Sweep:
    parser = argparse.ArgumentParser()
    sweep.add_arguments(parser)
    args = parser.parse_args(["--quick", "--device", "cpu", "--out", str(tmp_path), "--T", "1", "--hw", "4x3", *extra])
    return sweep.Sweep(args)


def test_failures_become_rows_not_crashes(tmp_path):
    def raising(exc):
        def build(shape, dtype, device, backend):
            def fn():
                raise exc

            return Case(fn, [])

        return build

    s = _sweep(tmp_path, ["--modes", "fwd"])
    s.targets = [
        Target("fake_oom", "", ("reference",), raising(torch.OutOfMemoryError("CUDA out of memory."))),
        Target("fake_error", "", ("reference",), raising(ValueError("bad shape"))),
        Target("fake_missing", "", ("reference",), lambda *a: (_ for _ in ()).throw(harness.Skip("not landed"))),
        Target("fake_build_oom", "", ("reference",), lambda *a: (_ for _ in ()).throw(MemoryError())),
    ]
    s.run()
    rows = {r["op"]: r for r in harness.read_rows(s.csv)}
    assert rows["fake_oom"]["status"] == "oom"
    assert rows["fake_build_oom"]["status"] == "oom" and rows["fake_build_oom"]["note"].startswith("build:")
    assert rows["fake_error"]["status"] == "error" and "bad shape" in rows["fake_error"]["note"]
    assert "fake_missing" not in rows and "not landed" in s.reasons["fake_missing / reference"]


def test_cpu_memory_guard_records_predicted_oom(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "cpu_available_bytes", lambda: 1024.0)  # pretend the host has 1 KiB free
    s = _sweep(tmp_path, ["--ops", "attention", "--backends", "sdpa_math", "--modes", "fwd", "fwd+bwd"])
    s.run()
    rows = harness.read_rows(s.csv)
    assert [r["status"] for r in rows] == ["oom", "oom"]
    assert all(r["note"].startswith("predicted") for r in rows)


def test_cpu_memory_guard_scales_the_last_measured_point(tmp_path, monkeypatch):
    """Without a memory model the guard scales the last measured point (4x the tokens: 4x its MiB)."""
    monkeypatch.setattr(sweep, "cpu_available_bytes", lambda: 2 * 30 * 2**20)  # half of it: 30 MiB
    monkeypatch.setattr(sweep, "measure_memory", lambda fn, dev: (fn(), (100.0, 10.0, "cpu_peak_rss"))[1])
    s = _sweep(tmp_path, ["--modes", "fwd", "--hw", "4x3", "8x6", "16x12"])
    s.targets = [Target("net", "", ("reference",), lambda shape, *a: Case(lambda: None, []))]
    s.run()
    rows = harness.read_rows(s.csv)
    assert [(int(r["tokens"]), r["status"]) for r in rows] == [(12, "ok"), (48, "oom"), (192, "oom")]
    assert rows[1]["note"].startswith("predicted") and rows[2]["note"].startswith("not run: out of memory")


def test_measurement_row_fields(tmp_path):
    calls = []

    def build(shape, dtype, device, backend):
        x = torch.randn(shape.B, shape.tokens, shape.C, requires_grad=True)
        calls.append(shape)
        return Case(lambda: (x * 2).sum(-1), [x], cases.scan_traffic(shape.B, shape.C, shape.tokens, 1, 4), K=1)

    s = _sweep(tmp_path, ["--modes", "bwd", "fwd", "fwd+bwd"])
    s.targets = [Target("double", "v", ("reference",), build)]
    s.run()
    rows = harness.read_rows(s.csv)
    assert [r["mode"] for r in rows] == ["fwd", "fwd+bwd", "bwd"]
    shape = Shape(1, 1, 4, 3, 64, 16)
    assert calls == [shape]
    for r in rows:
        assert r["status"] == "ok" and r["variant"] == "v" and r["timer"] == "wallclock"
        assert int(r["tokens"]) == 12 and r["dtype"] == "float32" and r["K"] == "1"
        assert float(r["ms_p20"]) <= float(r["ms_p50"]) <= float(r["ms_p80"])
        one = 2 * 12 * 64 * 4 + 8 * 12  # read x, write one copy (K=1), int64 index
        assert float(r["bytes"]) == (2 * one if r["mode"] == "fwd+bwd" else one)
        assert r["pct_roofline"] == ""  # CPU: no device peaks


def test_time_budget_stops_without_rows(tmp_path):
    s = _sweep(tmp_path, ["--ops", "attention", "--time-budget", "0"])
    s.run()
    assert harness.read_rows(s.csv) == [] and s.not_run == 2 * 2  # sdpa, sdpa_math x quick's fwd, fwd+bwd


def _rows(tmp_path, specs: list[dict]) -> list[dict[str, str]]:
    w = harness.CsvWriter(tmp_path / "s.csv")
    for spec in specs:
        w.write({"status": "ok", "variant": "", "dtype": "bfloat16", "B": 1, "C": 192, "N": 16, "T": 5, "H": 64,
                 "W": 48, "tokens": 15360, **spec})  # fmt: skip
    return harness.read_rows(tmp_path / "s.csv")


def test_summary_target_checks(tmp_path):
    scan = dict(op="selective_scan", backend="triton", B=2, C=384, N=16, tokens=15360)
    rows = _rows(tmp_path, [
        {**scan, "mode": "fwd", "ms_p50": 0.07, "roofline_ms": 0.0525, "pct_roofline": 75.0, "bound": "exp"},
        {**scan, "mode": "fwd+bwd", "ms_p50": 1.0},
        {**scan, "backend": "compile", "mode": "fwd+bwd", "ms_p50": 12.0},
        dict(op="glsmamba", backend="triton", mode="fwd", T=16, H=16, W=12, tokens=3072, ms_p50=3.072),
        dict(op="glsmamba", backend="triton", mode="fwd", T=16, H=128, W=96, tokens=196608, ms_p50=300.0),
        dict(op="glsmamba", backend="triton", mode="fwd", ms_p50=18.0, mem_delta_mb=100.0),
        dict(op="attention_net", backend="sdpa", mode="fwd", ms_p50=20.0, mem_delta_mb=200.0),
        dict(op="attention_net", backend="sdpa_math", mode="fwd", status="oom"),
    ])  # fmt: skip
    assert summary.check_scan_roofline(rows)[0] == "PASS"
    verdict, detail = summary.check_scan_vs_compile(rows)
    assert verdict == "PASS" and "12.0x" in detail
    verdict, detail = summary.check_linear(rows)  # 1.0 -> 1.53 us per token over 3k-197k tokens
    assert verdict == "PASS" and "1.53x" in detail
    assert summary.check_headline(rows)[0] == "PASS"
    slow = [dict(r, ms_p50="25.0") if r["op"] == "glsmamba" and r["tokens"] == "15360" else r for r in rows]
    assert summary.check_headline(slow)[0] == "FAIL"  # 25 ms vs attention's 20 ms
    low = [dict(r, pct_roofline="60.0") if r["backend"] == "triton" and r["mode"] == "fwd" else r for r in rows]
    assert summary.check_scan_roofline(low)[0] == "FAIL"
    assert summary.check_scan_roofline([])[0] == "n/a"


def test_crossover_verdict():
    from glsmamba.bench.plot import _crossover_tokens

    def rows(op, pts, oom=()):
        out = [{"op": op, "status": "ok", "tokens": str(n), "T": "1", "ms_p50": str(ms)} for n, ms in pts]
        return out + [{"op": op, "status": "oom", "tokens": str(n), "T": "1"} for n in oom]

    mine = rows("glsmamba", [(100, 5.0), (1000, 10.0), (10000, 100.0), (100000, 1000.0)])
    theirs = rows("attention_net", [(100, 1.0), (1000, 20.0), (10000, 50.0)], oom=[100000])
    # faster at 1000, slower at 10000, faster (attention OOM) at 100000: stays faster from 100000 on
    assert _crossover_tokens(mine, theirs)[1] == 100000
    assert _crossover_tokens(mine[:2], theirs[:2])[1] == 1000


def test_summary_of_a_cpu_sweep_says_why_targets_are_na(tmp_path):
    """A quick CPU sweep (small sizes, float32, no triton rows): every target n/a with its reason, the measurements
    table at the largest size measured, and slopes over all sizes when none has two points >= 2,000 tokens."""
    small = dict(dtype="float32", B=1, C=64, device_kind="cpu")
    specs = []
    for t, h, w, scale in ((1, 16, 12, 1.0), (5, 32, 24, 16.0)):
        size = dict(T=t, H=h, W=w, tokens=t * h * w)
        specs += [{**small, **size, "op": "selective_scan", "backend": "reference", "mode": "fwd",
                   "ms_p50": 0.5 * scale},
                  {**small, **size, "op": "glsmamba", "backend": "reference", "mode": "fwd", "ms_p50": 10 * scale},
                  {**small, **size, "op": "attention_net", "backend": "sdpa", "mode": "fwd", "ms_p50": 5 * scale}]
    _rows(tmp_path, specs)
    md = summary.write_summary(tmp_path / "s.csv").read_text()
    targets = [ln for ln in md.splitlines() if ln.startswith("| triton") or ln.startswith("| network")]
    assert len(targets) == 4 and all("| n/a |" in ln for ln in targets)
    assert "needs a GPU (the triton backend is timed on CUDA only; this sweep ran on cpu)" in targets[0]
    assert "needs bfloat16; this sweep ran float32" in targets[0] and "needs a GPU" in targets[1]
    assert "this sweep's largest size is T=5 32x24 (3,840 tokens)" in targets[2]
    # the headline pair, for information, at the largest size: glsmamba 160 ms vs sdpa 80 ms
    assert "fwd at T=5 32x24 (3,840 tokens): glsmamba 160 ms vs sdpa 80 ms (0.50x)" in targets[3]
    assert "## All measurements at T=5 32x24 (3,840 tokens): the largest size this sweep measured" in md
    assert "| selective_scan | reference | fwd | 1 | 64 | 16 | 8 |" in md  # 0.5 ms x 16
    # slope of 16x the time over 20x the tokens: log(16) / log(20)
    assert f"| selective_scan | reference | fwd | 2 | 192-3840 | {math.log(16) / math.log(20):.2f} |" in md
    assert "all ok points: no op has two sizes >= 2,000 tokens" in md


def test_network_sweep_names_the_attention_networks_stem():
    from glsmamba.bench.network_sweep import _attention_stem

    assert _attention_stem("vit-depth6") == "the preset's own `vit` encoder"
    assert _attention_stem("conv-depth3") == "the preset's own `conv` encoder"
    for old in ("depth6", "stem-depth6"):  # rows from before the encoder was shared, and the fallback stem
        assert _attention_stem(old) == "a 4x4 patchify conv stem"
