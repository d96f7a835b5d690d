"""``glsmamba summary``: parameters (total, trainable) and FLOPs per module of a GLSMamba network.

The network is built and run on the ``meta`` device (no memory, no compute), so even ``huge`` at full size is
instant. FLOPs come from :mod:`model.flops` (1 multiply-add = 2 FLOPs; linear layers, convolutions, attention
products, and the selective scans and deformable sampling that generic counters skip).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from glsmamba.commands import add_set_argument, parse_set_overrides, positive_int

HELP = "parameters (total, trainable) and FLOPs per module of a GLSMamba preset at a given clip size"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="base", choices=("tiny", "base", "huge"), help="preset (default base)")
    parser.add_argument("--frames", type=positive_int, default=None, help="clip length T (default: the preset's)")
    parser.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
                        help="input frame size (default: the preset's image_size, 256 192 for base)")
    parser.add_argument("--batch", type=positive_int, default=1, help="clips per batch (default 1)")
    parser.add_argument("--depth", type=int, default=2, choices=(1, 2, 3),
                        help="module tree depth of the rows (default 2)")
    add_set_argument(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def summarize(preset: str = "base", frames: int | None = None, size: tuple[int, int] | None = None, batch: int = 1,
              depth: int = 2, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parameters and FLOPs per module (rows down to ``depth``) of ``preset`` on a ``(batch, T, 3, H, W)`` clip."""
    import torch

    from glsmamba.model import GLSMamba, get_config
    from glsmamba.model.blocks import Modulator, SpaceTimeS6
    from glsmamba.model.flops import count_flops

    overrides = dict(overrides or {})
    if frames is not None:
        overrides["num_frames"] = frames
    cfg = get_config(preset, **overrides)
    h, w = size if size is not None else cfg.image_size
    if h % cfg.input_multiple or w % cfg.input_multiple:
        raise ValueError(f"size must be multiples of {cfg.input_multiple} for {preset}, got {h} x {w}")
    with torch.device("meta"):
        net = GLSMamba(cfg)
    fc = count_flops(net, torch.empty(batch, cfg.num_frames, 3, h, w, device="meta"))
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
    scans = sum(v for n, m in net.named_modules() if isinstance(m, SpaceTimeS6) for k, v in fc.by_module.items()
                if k == n)
    deform = sum(v for n, m in net.named_modules() if isinstance(m, Modulator) for k, v in fc.by_module.items()
                 if k == n)
    return {
        "preset": preset,
        "config": cfg.to_dict(),
        "input": [batch, cfg.num_frames, 3, h, w],
        "tokens": cfg.num_frames * (h // 4) * (w // 4),
        "params": net.num_parameters(),
        "trainable": net.num_parameters(trainable_only=True),
        "flops": fc.total(),
        "scan_flops": scans,
        "deformable_flops": deform,
        "rows": rows,
    }


def _m(n: int) -> str:
    return f"{n / 1e6:.3f}M"


def _g(n: int) -> str:
    return f"{n / 1e9:.2f}"


def run(args: argparse.Namespace) -> int:
    try:
        overrides = parse_set_overrides(args)
        info = summarize(args.preset, args.frames, tuple(args.size) if args.size else None, args.batch, args.depth,
                         overrides)
    except (ValueError, TypeError) as e:
        print(f"glsmamba summary: {e}")
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    b, t, _, h, w = info["input"]
    print(f"GLSMamba {info['preset']}: input (B={b}, T={t}, 3, {h}, {w}), {info['tokens']} tokens per clip at 1/4")
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
    print(f"\nof which selective scans {_g(info['scan_flops'])} GFLOPs, deformable STMM sampling "
          f"{_g(info['deformable_flops'])} GFLOPs (counted by the project; generic FLOP counters skip them).")
    print("FLOPs: 1 multiply-add = 2 FLOPs (halve to compare with multiply-add counts such as fvcore's); norms, "
          "activations and softmax are not counted.")
    return 0
