"""The paper's parameter and compute numbers (docs/paper.md sections 3 and 4), and this implementation's beside them.

:func:`paper_table` builds base, base-lr and the scan-direction / merge ablations on the ``meta`` device and counts
their trainable parameters and FLOPs (:mod:`model.flops`); ``glsmamba summary --paper`` prints it, and
``bench/config_search.py`` searches the open architecture points against the same rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import GLSMambaConfig, get_config
from .flops import FlopCount, count_flops

# (label, preset, config overrides, trainable parameters in M, "GFLOPs"): GLSMamba-B and -BLR (efficiency table,
# section 3) and the scan-direction / merge ablation rows (section 4); PoseTrack2017, ViT-B, 5 x 256 x 192 clips.
PAPER_ROWS: tuple[tuple[str, str, dict[str, Any], float, float], ...] = (
    ("base", "base", {}, 9.8, 138.9),
    ("base-lr", "base-lr", {}, 9.8, 85.1),
    ("2 directions", "base", {"directions": 2}, 9.1, 137.4),
    ("4 directions", "base", {"directions": 4}, 9.4, 138.1),
    ("6 directions, sum merge", "base", {"merge": "sum"}, 9.1, 137.4),
)

PAPER_CONVENTION = (
    'Convention: the paper\'s "GFLOPs" are multiply-adds of the layers (nn.Linear / nn.Conv / nn.ConvTranspose, as '
    "module-hook counters such as thop, ptflops or mmcv count them): no attention products, no selective scans, no "
    "deformable sampling. Evidence (model/flops.py): 5 frames of ViT-B at 256 x 192 are 82.1 G multiply-adds in "
    "their layers and 85.5 G with the attention products, above BLR's 85.1 in total; the paper's extra scan "
    "directions cost 0 GFLOPs. 'all-op' = everything FlopCounterMode counts, with the project's formulas for the "
    "scans and the deformable sampling (1 multiply-add = 2 FLOPs)."
)


def measure(cfg: GLSMambaConfig, size: tuple[int, int] | None = None, batch: int = 1
            ) -> tuple[nn.Module, FlopCount, tuple[int, int]]:
    """Build ``cfg`` on the meta device and count one ``(batch, T, 3, H, W)`` forward; returns (network, count,
    (H, W)). ``size`` defaults to ``cfg.image_size``."""
    from .glsmamba import GLSMamba

    h, w = size if size is not None else cfg.image_size
    if h % cfg.input_multiple or w % cfg.input_multiple:
        raise ValueError(f"size must be multiples of {cfg.input_multiple} for {cfg.name}, got {h} x {w}")
    with torch.device("meta"):
        net = GLSMamba(cfg)
    return net, count_flops(net, torch.empty(batch, cfg.num_frames, 3, h, w, device="meta")), (h, w)


def paper_row(label: str, cfg: GLSMambaConfig, paper_params_m: float, paper_gflops: float,
              trainable: int, fc: FlopCount, tokens: int) -> dict[str, Any]:
    """One table row: ours beside the paper's, with the relative differences."""
    return {
        "row": label,
        "tokens": tokens,
        "trainable": trainable,
        "paper_params_m": paper_params_m,
        "params_diff": trainable / (paper_params_m * 1e6) - 1,
        "gmacs_paper_convention": fc.paper_macs / 1e9,
        "paper_gflops": paper_gflops,
        "gflops_diff": fc.paper_macs / 1e9 / paper_gflops - 1,
        "gmacs_all": fc.total() / 2e9,
        "gflops_all": fc.total() / 1e9,
        "by_category_gflops": {k: v / 1e9 for k, v in fc.by_category.items()},
        "config": cfg.to_dict(),
    }


def paper_table(overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One dict per :data:`PAPER_ROWS` row (``overrides`` apply to every row): trainable parameters, multiply-adds
    of the layers (the paper's convention), all counted FLOPs, the paper's numbers and the differences."""
    out = []
    for label, preset, row_overrides, paper_params_m, paper_gflops in PAPER_ROWS:
        cfg = get_config(preset, **{**(overrides or {}), **row_overrides})
        net, fc, (h, w) = measure(cfg)
        tokens = cfg.num_frames * (h // cfg.feature_stride) * (w // cfg.feature_stride)
        row = paper_row(label, cfg, paper_params_m, paper_gflops, net.num_parameters(trainable_only=True), fc, tokens)
        out.append({**row, "preset": preset, "overrides": row_overrides})
    return out


def format_paper_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`paper_table` as a fixed-width text table."""
    header = ("row", "tokens", "params", "paper", "diff", "GMACs layers", "paper GFLOPs", "diff", "all-op GMACs",
              "all-op GFLOPs")
    cells = [(r["row"], str(r["tokens"]), f"{r['trainable'] / 1e6:.3f}M", f"{r['paper_params_m']:.1f}M",
              f"{100 * r['params_diff']:+.1f}%", f"{r['gmacs_paper_convention']:.1f}", f"{r['paper_gflops']:.1f}",
              f"{100 * r['gflops_diff']:+.1f}%", f"{r['gmacs_all']:.1f}", f"{r['gflops_all']:.1f}") for r in rows]
    widths = [max(len(header[i]), *(len(c[i]) for c in cells)) for i in range(len(header))]

    def fmt(c: tuple[str, ...]) -> str:
        return "  ".join(c[i].ljust(widths[i]) if i == 0 else c[i].rjust(widths[i]) for i in range(len(c)))

    return "\n".join([fmt(header), "-" * len(fmt(header)), *(fmt(c) for c in cells)])
