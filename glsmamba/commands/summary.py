"""``glsmamba summary``: parameters (total, trainable) and FLOPs per module of a GLSMamba network, and with
``--paper`` the side-by-side table with the paper's parameter and compute numbers.

The network is built and run on the ``meta`` device (no memory, no compute), so even ``huge`` at full size is
instant. FLOPs come from :mod:`model.flops` (``torch.utils.flop_counter.FlopCounterMode``; 1 multiply-add = 2 FLOPs;
linear layers, convolutions, attention products, and the selective scans and deformable sampling that generic
counters skip). The paper's "GFLOPs" are multiply-adds of the layers alone (the reasoning is in
:mod:`model.flops`); ``--paper`` shows that count beside the full one.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from glsmamba.commands import add_set_argument, parse_set_overrides, positive_int

HELP = "parameters (total, trainable) and FLOPs per module of a GLSMamba preset at a given clip size"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="base", choices=("tiny", "base", "base-lr", "huge"),
                        help="preset (default base)")
    parser.add_argument("--frames", type=positive_int, default=None, help="clip length T (default: the preset's)")
    parser.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
                        help="input frame size (default: the preset's image_size, 256 192 for base)")
    parser.add_argument("--batch", type=positive_int, default=1, help="clips per batch (default 1)")
    parser.add_argument("--depth", type=int, default=2, choices=(1, 2, 3),
                        help="module tree depth of the rows (default 2)")
    add_set_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--paper", action="store_true",
                        help="the paper's table instead (docs/paper.md sections 3-4): trainable parameters and "
                             "GFLOPs of base, base-lr and the scan-direction / merge ablations beside the paper's "
                             "(--set applies to every row)")


def summarize(preset: str = "base", frames: int | None = None, size: tuple[int, int] | None = None, batch: int = 1,
              depth: int = 2, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parameters and FLOPs per module (rows down to ``depth``) of ``preset`` on a ``(batch, T, 3, H, W)`` clip."""
    from glsmamba.model import get_config
    from glsmamba.model.paper import measure

    overrides = dict(overrides or {})
    if frames is not None:
        overrides["num_frames"] = frames
    cfg = get_config(preset, **overrides)
    net, fc, (h, w) = measure(cfg, size, batch)
    rows = []
    for name, module in net.named_modules():
        level = 0 if name == "" else name.count(".") + 1
        if level == 0 or level > depth:
            continue
        params = list(module.parameters())
        rows.append({
            "module": name,
            "type": type(module).__name__,
            "params": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "flops": fc.total(name),
        })
    return {
        "preset": preset,
        "config": cfg.to_dict(),
        "input": [batch, cfg.num_frames, 3, h, w],
        "feature_stride": cfg.feature_stride,
        "tokens": cfg.num_frames * (h // cfg.feature_stride) * (w // cfg.feature_stride),
        "params": net.num_parameters(),
        "trainable": net.num_parameters(trainable_only=True),
        "flops": fc.total(),
        "flops_by_category": fc.by_category,
        "macs_paper": fc.paper_macs,
        "scan_flops": fc.by_category["scan"],
        "deformable_flops": fc.by_category["deformable"],
        "rows": rows,
    }


def _m(n: int) -> str:
    return f"{n / 1e6:.3f}M"


def _g(n: int) -> str:
    return f"{n / 1e9:.2f}"


def run(args: argparse.Namespace) -> int:
    try:
        overrides = parse_set_overrides(args)
        if args.paper:
            from glsmamba.model.paper import PAPER_CONVENTION, format_paper_table, paper_table

            rows = paper_table(overrides)
        else:
            info = summarize(args.preset, args.frames, tuple(args.size) if args.size else None, args.batch,
                             args.depth, overrides)
    except (ValueError, TypeError) as e:
        print(f"glsmamba summary: {e}")
        return 2
    if args.paper:
        if args.json:
            print(json.dumps({"rows": rows, "convention": PAPER_CONVENTION}, indent=2))
            return 0
        print("GLSMamba beside the paper (docs/paper.md sections 3-4): trainable parameters and compute of one "
              "5 x 256 x 192 clip")
        print(format_paper_table(rows))
        print()
        print(PAPER_CONVENTION)
        return 0
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    b, t, _, h, w = info["input"]
    print(f"GLSMamba {info['preset']}: input (B={b}, T={t}, 3, {h}, {w}), {info['tokens']} tokens per clip at "
          f"1/{info['feature_stride']}")
    header = ("module", "type", "params", "trainable", "GFLOPs", "% FLOPs")
    cells = [(("  " * r["module"].count(".")) + r["module"], r["type"], _m(r["params"]), _m(r["trainable"]),
              _g(r["flops"]), f"{100 * r['flops'] / max(1, info['flops']):.1f}") for r in info["rows"]]
    cells.append(("total", "", _m(info["params"]), _m(info["trainable"]), _g(info["flops"]), "100.0"))
    widths = [max(len(header[i]), *(len(c[i]) for c in cells)) for i in range(len(header))]
    fmt = lambda c: "  ".join(c[i].ljust(widths[i]) if i < 2 else c[i].rjust(widths[i]) for i in range(len(c)))
    print(fmt(header))
    print("-" * len(fmt(header)))
    for c in cells[:-1]:
        print(fmt(c))
    print("-" * len(fmt(header)))
    print(fmt(cells[-1]))
    cat = info["flops_by_category"]
    print(f"\nof which layers {_g(cat['layers'])}, attention products {_g(cat['attention'])}, selective scans "
          f"{_g(cat['scan'])}, deformable STMM sampling and tap mixing {_g(cat['deformable'])} GFLOPs (the scans and "
          f"the sampling counted with the project's formulas; generic FLOP counters skip them).")
    print(f"FLOPs: 1 multiply-add = 2 FLOPs; norms, activations and softmax are not counted. The paper's convention "
          f"(multiply-adds of the layers only): {info['macs_paper'] / 1e9:.2f} G.")
    return 0
