"""The FLOP counter (hand-counted layers and scans) and ``glsmamba summary``."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from glsmamba.cli import main
from glsmamba.commands.summary import summarize
from glsmamba.model import GLSMamba, GLSMambaConfig, get_config
from glsmamba.model.flops import FlopCounter, count_flops

parse_overrides = GLSMambaConfig.parse_overrides  # the one --set parser


def test_layer_flops_by_hand():
    net = nn.Sequential(nn.Linear(8, 4), nn.Conv2d(3, 5, 3, padding=1), nn.ConvTranspose2d(5, 2, 4, stride=2,
                                                                                               padding=1))
    with FlopCounter(net) as fc:
        net[0](torch.zeros(3, 8))
        y = net[1](torch.zeros(1, 3, 6, 7))
        net[2](y)
    assert fc.by_module["0"] == 2 * 3 * 8 * 4
    assert fc.by_module["1"] == 2 * (5 * 6 * 7) * 3 * 9           # every output element: 3 x 3 x 3 MACs
    assert fc.by_module["2"] == 2 * (5 * 6 * 7) * 2 * 16          # every input element scatters 2 x 4 x 4 MACs
    assert fc.total() == sum(fc.by_module.values())
    grouped = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    with FlopCounter(grouped) as fc2:
        grouped(torch.zeros(1, 4, 5, 5))
    assert fc2.by_module[""] == 2 * (4 * 25) * 9                 # depthwise: 1 input channel per output


def test_scans_and_deformable_are_counted_by_hand():
    cfg = get_config("tiny")
    with torch.device("meta"):
        net = GLSMamba(cfg)
    t, h, w = 5, 16, 12
    fc = count_flops(net, torch.empty(1, t, 3, 64, 48, device="meta"))
    l, di, n = t * h * w, cfg.d_inner, cfg.d_state
    per_dir = l * di * (9 * n + 3)
    assert fc.by_module["gsm.0.ssm"] == 6 * per_dir                # 6 directions; shared projections (hooks)
    assert fc.by_module["lrm.0.ssm"] == 2 * per_dir
    assert fc.by_module["gsm.1.merge.spatial"] == 10 * l * 9 * di  # 9 taps
    assert fc.by_module["gsm.1.merge.temporal"] == 10 * l * 3 * di  # 3 taps
    assert fc.by_module["gsm.0.ssm.x_proj"] == 2 * l * di * (cfg.dt_rank_ + 2 * n)
    assert fc.by_module["embed.proj"] == 2 * l * cfg.conv_channels[-1] * cfg.dim


def test_vit_attention_products_counted():
    cfg = get_config("base", vit_depth=1)
    with torch.device("meta"):
        net = GLSMamba(cfg)
    fc = count_flops(net, torch.empty(2, 5, 3, 256, 192, device="meta"))
    n, c = 16 * 12, 768
    assert fc.by_module["encoder.vit.blocks.0.attn"] == 2 * 5 * 4 * n * n * c  # q k^T and attn v per image


def test_summarize_base_rows_add_up():
    info = summarize("base", depth=1)
    assert info["input"] == [1, 5, 3, 256, 192] and info["tokens"] == 5 * 64 * 48
    rows = {r["module"]: r for r in info["rows"]}
    assert set(rows) == {"encoder", "embed", "gsm", "lrm", "head"}
    assert sum(r["params"] for r in rows.values()) == info["params"]
    assert sum(r["trainable"] for r in rows.values()) == info["trainable"]
    assert sum(r["flops"] for r in rows.values()) == info["flops"]
    assert rows["encoder"]["trainable"] == 0 and info["trainable"] == rows["embed"]["trainable"] + rows["gsm"][
        "trainable"] + rows["lrm"]["trainable"] + rows["head"]["trainable"]
    assert 0 < info["scan_flops"] < rows["gsm"]["flops"] + rows["lrm"]["flops"]
    assert info["deformable_flops"] > 0


def test_summarize_overrides_and_sizes():
    a = summarize("base", size=(128, 96), depth=1)
    b = summarize("base", depth=1)
    assert a["tokens"] * 4 == b["tokens"] and a["flops"] < b["flops"]
    no_stmm = summarize("base", depth=1, overrides={"merge": "sum"})
    assert no_stmm["deformable_flops"] == 0 and no_stmm["trainable"] < b["trainable"]
    assert parse_overrides(["directions=4", "merge=sum", "window=[4,3]"]) == {
        "directions": 4, "merge": "sum", "window": (4, 3)}
    with pytest.raises(ValueError, match="FIELD=VALUE"):
        parse_overrides(["directions"])


def test_summary_command_text_and_json(capsys):
    assert main(["summary", "--preset", "base"]) == 0
    out = capsys.readouterr().out
    assert "gsm.3" in out and "lrm.1" in out and "selective scans" in out and "9.019M" in out
    assert main(["summary", "--preset", "tiny", "--json", "--set", "directions=2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["directions"] == 2 and info["preset"] == "tiny"
    assert main(["summary", "--preset", "base", "--size", "250", "192"]) == 2
    assert "multiples of 16" in capsys.readouterr().out
