"""Configuration search: the open architecture points (docs/paper.md section 6) against the paper's parameter and
compute numbers (docs/paper.md sections 3 and 4).

For every point of a grid over the trunk width ``dim``, the inner expansion ``expand``, the FFN ratio (0 = no FFN),
the channel-attention form and reduction, the S6 sharing across directions, the STMM modulator form (depthwise,
or grouped deformable convolutions with channels per group (spatial, temporal)) and the head, it counts the five
rows the paper reports - base, base-lr and the 2-direction / 4-direction / sum-merge ablations - exactly as
``glsmamba summary --paper`` does: trainable parameters, and multiply-adds of the layers (the paper's "GFLOPs",
see model/flops.py). It ranks the points by their largest relative error over the ten numbers and prints the best,
side by side with the paper.

Speed: the network is a sum of its parts, so each part (a block's core, FFN, channel attention and STMM merge; the
embedding; the head; the frozen encoder) is built and counted once on the meta device per distinct setting and
reused; the winner is checked against a whole-network count (``model.paper.paper_table``).

Usage::

    python bench/config_search.py [--top 20] [--csv FILE] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch

from glsmamba.model.blocks import GSMBlock, HeatmapHead, LRMBlock
from glsmamba.model.config import GLSMambaConfig, get_config
from glsmamba.model.embeddings import SpaceTimeEmbedding
from glsmamba.model.encoder import build_encoder
from glsmamba.model.flops import count_flops
from glsmamba.model.paper import PAPER_ROWS, paper_table

# The grid (fields of GLSMambaConfig). d_state 16 and dt_rank ceil(D/16) stay at Mamba's defaults: they move the
# counts by < 1 %.
GRID: dict[str, tuple[Any, ...]] = {
    "dim": (192, 256, 320),
    "expand": (1, 2),
    "ffn_ratio": (0.0, 0.5, 1.0, 2.0, 4.0),
    "ca": (("joint", 8.0), ("joint", 4.0), ("joint", 2.5), ("joint", 2.0), ("frame", 1.0)),
    "ssm_sharing": ("all", "proj"),
    "stmm": (("depthwise", (16, 64), 4), ("grouped", (16, 64), 1), ("grouped", (32, 128), 1)),
    "head": ("conv", "linear"),
}

Metrics = tuple[int, int]  # (trainable parameters, layer FLOPs); FLOPs are 2 per multiply-add


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class PartCounter:
    """Parameters and layer FLOPs of each part of a network, counted once per distinct setting (meta device)."""

    def __init__(self) -> None:
        self.cache: dict[tuple, Metrics] = {}
        self.builds = 0

    def block(self, cfg: GLSMambaConfig, kind: str, shape: tuple[int, int, int]) -> Metrics:
        """A GSM (``kind="gsm"``) or LRM block at the clip ``shape``: the sum of its parts."""
        k = cfg.directions if kind == "gsm" else 2
        keys = {
            "core": ("core", cfg.dim, cfg.expand, cfg.d_state, cfg.dt_rank_, cfg.ssm_sharing, k, shape),
            "ffn": ("ffn", cfg.dim, cfg.ffn_ratio, shape),
        }
        if kind == "gsm":
            keys["ca"] = ("ca", cfg.dim, cfg.num_frames, cfg.ca_form, cfg.ca_reduction, shape)
            stmm = (cfg.stmm_form, cfg.stmm_group_channels, cfg.stmm_groups) if cfg.merge == "stmm" else ()
            keys["merge"] = ("merge", cfg.d_inner, cfg.directions, cfg.merge, stmm, shape)
        if any(key not in self.cache for key in keys.values()):
            self._count_block(cfg, kind, shape, keys)
        parts = [self.cache[key] for key in keys.values()]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)

    def _count_block(self, cfg: GLSMambaConfig, kind: str, shape: tuple[int, int, int], keys: dict) -> None:
        self.builds += 1
        with torch.device("meta"):
            blk = GSMBlock(cfg) if kind == "gsm" else LRMBlock(cfg)
        fc = count_flops(blk, torch.empty(1, shape[0] * shape[1] * shape[2], cfg.dim, device="meta"), shape)
        members = {"ca": ("channel_attn",), "ffn": ("norm2", "ffn"), "merge": ("merge",)}
        taken: set[str] = set()
        for part, names in members.items():
            if part in keys:
                subs = [(n, getattr(blk, n)) for n in names if getattr(blk, n) is not None]
                taken.update(names)
                self.cache[keys[part]] = (sum(_params(m) for _, m in subs),
                                          sum(fc.categories(n)["layers"] for n, _ in subs))
        rest = [(n, m) for n, m in blk.named_children() if n not in taken]
        self.cache[keys["core"]] = (sum(_params(m) for _, m in rest), sum(fc.categories(n)["layers"] for n, _ in rest))

    def embed(self, cfg: GLSMambaConfig, grid: tuple[int, int]) -> Metrics:
        key = ("embed", cfg.encoder_channels, cfg.dim, cfg.num_frames, grid)
        if key not in self.cache:
            with torch.device("meta"):
                m = SpaceTimeEmbedding(cfg.encoder_channels, cfg.dim, cfg.num_frames)
            x = torch.empty(cfg.num_frames, cfg.encoder_channels, *grid, device="meta")
            self.cache[key] = (_params(m), count_flops(m, x, 1).by_category["layers"])
        return self.cache[key]

    def head(self, cfg: GLSMambaConfig, grid: tuple[int, int]) -> Metrics:
        key = ("head", cfg.dim, cfg.num_joints, cfg.head, grid)
        if key not in self.cache:
            with torch.device("meta"):
                m = HeatmapHead(cfg.dim, cfg.num_joints, cfg.head)
            self.cache[key] = (_params(m), count_flops(m, torch.empty(1, *grid, cfg.dim, device="meta"))
                               .by_category["layers"])
        return self.cache[key]

    def encoder(self, cfg: GLSMambaConfig) -> Metrics:
        key = ("encoder", cfg.encoder, cfg.vit_embed_dim, cfg.vit_depth, cfg.feature_stride, cfg.num_frames,
               cfg.image_size)
        if key not in self.cache:
            with torch.device("meta"):
                m = build_encoder(cfg)
            if cfg.freeze_encoder:
                m.requires_grad_(False)
            x = torch.empty(cfg.num_frames, 3, *cfg.image_size, device="meta")
            self.cache[key] = (_params(m), count_flops(m, x).by_category["layers"])
        return self.cache[key]

    def network(self, cfg: GLSMambaConfig) -> Metrics:
        """Trainable parameters and layer FLOPs of the whole network on one ``cfg.image_size`` clip."""
        s = cfg.feature_stride
        grid = (cfg.image_size[0] // s, cfg.image_size[1] // s)
        shape = (cfg.num_frames, *grid)
        parts = [self.encoder(cfg), self.embed(cfg, grid), self.head(cfg, grid)]
        parts += [self.block(cfg, "gsm", shape)] * cfg.num_gsm + [self.block(cfg, "lrm", shape)] * cfg.num_lrm
        return sum(p[0] for p in parts), sum(p[1] for p in parts)


def candidates() -> Iterator[dict[str, Any]]:
    for values in itertools.product(*GRID.values()):
        point = dict(zip(GRID, values, strict=True))
        ca_form, ca_reduction = point.pop("ca")
        stmm_form, group_channels, offset_groups = point.pop("stmm")
        yield {**point, "ca_form": ca_form, "ca_reduction": ca_reduction, "stmm_form": stmm_form,
               "stmm_group_channels": group_channels, "stmm_groups": offset_groups}


def evaluate(counter: PartCounter, point: dict[str, Any]) -> dict[str, Any] | None:
    """The five paper rows of ``point``; None if the point is not a valid configuration."""
    rows = []
    for label, preset, overrides, paper_params_m, paper_gflops in PAPER_ROWS:
        try:
            cfg = get_config(preset, **point, **overrides)
        except ValueError:
            return None
        params, layer_flops = counter.network(cfg)
        rows.append({"row": label, "params": params, "gmacs": layer_flops / 2e9,
                     "params_err": params / (paper_params_m * 1e6) - 1,
                     "gflops_err": layer_flops / 2e9 / paper_gflops - 1})
    worst = max(max(abs(r["params_err"]), abs(r["gflops_err"])) for r in rows)
    return {"point": point, "rows": rows, "worst": worst}


def describe(point: dict[str, Any]) -> str:
    stmm = _label("stmm", (point["stmm_form"], point["stmm_group_channels"], point["stmm_groups"]))
    ca = _label("ca", (point["ca_form"], point["ca_reduction"]))
    return (f"D={point['dim']} x{point['expand']} ffn={point['ffn_ratio']:g} ca={ca} share={point['ssm_sharing']} "
            f"stmm={stmm} head={point['head']}")


def format_results(results: list[dict[str, Any]], top: int) -> str:
    labels = [r[0] for r in PAPER_ROWS]
    paper = "  ".join(f"{lab}: {p:.1f}M {g:.1f}G" for lab, _, _, p, g in PAPER_ROWS)
    lines = [f"paper: {paper}", "",
             "rank  worst   " + "  ".join(f"{lab[:12]:>24}" for lab in labels) + "  point"]
    for i, res in enumerate(results[:top]):
        cells = "  ".join(f"{r['params'] / 1e6:6.3f}M {100 * r['params_err']:+5.1f}% {r['gmacs']:6.1f}G "
                          f"{100 * r['gflops_err']:+5.1f}%" for r in res["rows"])
        lines.append(f"{i + 1:4d}  {100 * res['worst']:4.1f}%  {cells}  {describe(res['point'])}")
    return "\n".join(lines)


def _label(field: str, value: Any) -> str:
    if field == "stmm":
        form, channels, groups = value
        return f"{form}{channels if form == 'grouped' else ''},g{groups}".replace(" ", "")
    if field == "ca":
        return f"{value[0]}/{value[1]:g}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def family_bests(results: list[dict[str, Any]]) -> str:
    """The best worst-difference among the points with each value of each searched field (what every choice costs)."""
    lines = []
    for field in ("dim", "expand", "ffn_ratio", "ca", "ssm_sharing", "stmm", "head"):
        cells = []
        for value in GRID[field]:
            if field == "ca":
                keep = lambda r, v=value: (r["point"]["ca_form"], r["point"]["ca_reduction"]) == v  # noqa: E731
            elif field == "stmm":
                keep = lambda r, v=value: (r["point"]["stmm_form"], r["point"]["stmm_group_channels"],  # noqa: E731
                                           r["point"]["stmm_groups"]) == v
            else:
                keep = lambda r, v=value, f=field: r["point"][f] == v  # noqa: E731
            worst = min((r["worst"] for r in results if keep(r)), default=float("nan"))
            label = _label(field, value)
            cells.append(f"{label} {100 * worst:.1f}%")
        lines.append(f"  {field:12s} " + ",  ".join(cells))
    return "\n".join(lines)


def default_point() -> dict[str, Any]:
    base = get_config("base")
    return {k: getattr(base, k) for k in ("dim", "expand", "ffn_ratio", "ssm_sharing", "head", "ca_form",
                                          "ca_reduction", "stmm_form", "stmm_group_channels", "stmm_groups")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--top", type=int, default=20, help="candidates to print (default 20)")
    p.add_argument("--csv", help="write every candidate's rows to this CSV")
    p.add_argument("--markdown", help="also write the printed report to this file")
    args = p.parse_args(argv)
    t0 = time.time()
    counter = PartCounter()
    results = [r for r in (evaluate(counter, c) for c in candidates()) if r is not None]
    results.sort(key=lambda r: r["worst"])
    within = sum(r["worst"] <= 0.03 for r in results)
    default = evaluate(counter, default_point())
    assert default is not None
    rank = 1 + sum(r["worst"] < default["worst"] for r in results)
    # the composition of parts must equal a whole-network count
    whole = paper_table()
    for mine, ref in zip(default["rows"], whole, strict=True):
        if mine["params"] != ref["trainable"] or abs(mine["gmacs"] - ref["gmacs_paper_convention"]) > 1e-6:
            raise AssertionError(f"part sum {mine} != whole network {ref['row']}: {ref['trainable']}, "
                                 f"{ref['gmacs_paper_convention']}")
    report = [
        f"{len(results)} configurations ({counter.builds} block builds, {time.time() - t0:.0f} s); "
        f"{within} match all ten paper numbers within 3 %.",
        "Columns per paper row: trainable parameters, their difference to the paper, multiply-adds of the layers "
        "(the paper's \"GFLOPs\"), difference. 'worst' = the largest of the ten differences.",
        "",
        format_results(results, args.top),
        "",
        "best worst-difference with each value of each field:",
        family_bests(results),
        "",
        f"the default (model/config.py) ranks {rank} of {len(results)}:",
        format_results([default], 1).splitlines()[-1],
        "(checked against a whole-network count: model.paper.paper_table)",
    ]
    text = "\n".join(report)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("```\n" + text + "\n```\n")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["point", "worst", *(f"{r[0]} {m}" for r in PAPER_ROWS for m in ("params", "gmacs"))])
            for res in results:
                w.writerow([describe(res["point"]), f"{res['worst']:.4f}",
                            *(v for r in res["rows"] for v in (r["params"], f"{r['gmacs']:.3f}"))])
    return 0


if __name__ == "__main__":
    sys.exit(main())
