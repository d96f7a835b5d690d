"""FLOP counting for ``glsmamba summary``: ``torch.utils.flop_counter.FlopCounterMode`` on the ``meta`` device.

The network runs on meta tensors (no memory, no compute; even ``huge`` at full size is instant). FlopCounterMode
counts every aten matmul and convolution, and the project's two ops through the shape-only custom ops and the
formulas of :mod:`model.ops` (generic counters skip them). Its unit is the FLOP: 1 multiply-add = 2 FLOPs.
Norms, activations, softmax and other element-wise work are not counted.

Every counted FLOP falls in one category, from the innermost module that ran it:

* ``"layers"``: inside an ``nn.Linear``, ``nn.Conv1d/2d/3d`` or ``nn.ConvTranspose1d/2d/3d`` (the layers that
  module-hook counters such as thop, ptflops or mmcv's ``get_model_complexity_info`` see);
* ``"attention"``: the ViT's ``q k^T`` and ``attn v`` products (inside :class:`model.encoder.Attention`);
* ``"scan"``: the selective scans and any other non-layer work of :class:`model.blocks.SpaceTimeS6`;
* ``"deformable"``: the deformable sampling and the non-layer tap mixing of :class:`model.blocks.Modulator`;
* ``"other"``: anything else.

**The paper's convention** (docs/paper.md sections 3 and 4): the paper's "GFLOPs" are multiply-adds of the layers
alone, :attr:`FlopCount.paper_macs` = ``layers / 2``. Evidence: five frames of ViT-B at 256 x 192 cost 82.1 G
multiply-adds in their layers and 85.5 G with the attention products; GLSMamba-BLR costs 85.1 "GFLOPs" in total,
so the attention products cannot be in the count. Solving the two resolution variants (base 138.9, BLR 85.1) for
a frozen encoder cost E and a trunk linear in its tokens gives E = 82.0 G (the layer-only ViT) and a trunk of
3.1 G at 960 tokens; the paper's ablations add scan directions at 0 GFLOPs (the scans are not counted) and count
the STMM modulators at 0.7 / 0.8 G (their offset convolutions, not the deformable sampling).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import ops  # noqa: F401  (registers the FLOP formulas of the shape-only ops)

CATEGORIES = ("layers", "attention", "scan", "deformable", "other")
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _category_types() -> dict[str, tuple[type, ...]]:
    from .blocks import Modulator, SpaceTimeS6
    from .encoder import Attention

    return {"attention": (Attention,), "scan": (SpaceTimeS6,), "deformable": (Modulator,)}


@dataclass
class FlopCount:
    """FLOPs of one forward pass (1 multiply-add = 2 FLOPs).

    Attributes:
        by_module: inclusive FLOPs per module name of the model (``""`` = the whole model); modules that ran no
            counted op are absent.
        by_category: FLOPs per category of :data:`CATEGORIES` (they add up to the total).
        attributed: ``module name -> (category, FLOPs)`` for the layers and the category modules (their work
            outside their layers); what no entry covers is ``"other"``.
    """

    by_module: dict[str, int] = field(default_factory=dict)
    by_category: dict[str, int] = field(default_factory=dict)
    attributed: dict[str, tuple[str, int]] = field(default_factory=dict)

    def total(self, prefix: str = "") -> int:
        """FLOPs of the module named ``prefix`` and everything under it (the whole model for ``""``)."""
        return self.by_module.get(prefix, 0)

    def categories(self, prefix: str = "") -> dict[str, int]:
        """:attr:`by_category` restricted to the module ``prefix`` and everything under it."""
        out = dict.fromkeys(CATEGORIES, 0)
        for name, (cat, n) in self.attributed.items():
            if not prefix or name == prefix or name.startswith(prefix + "."):
                out[cat] += n
        out["other"] = self.total(prefix) - sum(out.values())
        return out

    @property
    def macs(self) -> float:
        """All counted work in multiply-adds (``total() / 2``)."""
        return self.total() / 2

    @property
    def paper_macs(self) -> float:
        """The paper's "GFLOPs" unit: multiply-adds of the layers only (see the module docstring)."""
        return self.by_category.get("layers", 0) / 2


def count_flops(model: nn.Module, *inputs: torch.Tensor) -> FlopCount:
    """Run ``model(*inputs)`` under FlopCounterMode (no grad) and return the :class:`FlopCount`.

    The model and inputs must be on the ``meta`` device (build the model under ``with torch.device("meta"):``):
    on real tensors the registry ops run their implementations, whose inner operations are not the op's cost.

    Example:
        >>> with torch.device("meta"):
        ...     net = GLSMamba(cfg)
        >>> fc = count_flops(net, torch.empty(1, 5, 3, 256, 192, device="meta"))
        >>> fc.total(), fc.paper_macs
    """
    for i, t in enumerate(inputs):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            raise ValueError(f"inputs[{i}] is on {t.device} (shape {tuple(t.shape)}): FLOPs are counted on the "
                             f"meta device; build the model and its inputs under torch.device('meta')")
    with torch.no_grad(), FlopCounterMode(display=False) as mode:
        model(*inputs)
    raw = mode.get_flop_counts()
    root = type(model).__name__
    by_module: dict[str, int] = {}
    for tracked, per_op in raw.items():
        if tracked == "Global":
            name = ""
        elif tracked == root:
            continue  # the same as Global
        elif tracked.startswith(root + "."):
            name = tracked[len(root) + 1:]
        else:
            continue  # a module outside ``model`` (called on its own)
        by_module[name] = int(sum(per_op.values()))
    modules = dict(model.named_modules())
    for name in sorted(modules, key=lambda n: -n.count(".")):  # containers never called (ModuleList): their children
        if name and name not in by_module:
            children = [n for n in by_module if n.startswith(name + ".") and "." not in n[len(name) + 1:]]
            if children:
                by_module[name] = sum(by_module[n] for n in children)
    layers = {n: v for n, v in by_module.items() if n and isinstance(modules.get(n), LAYER_TYPES)}
    attributed = {n: ("layers", v) for n, v in layers.items()}
    for cat, types in _category_types().items():
        for n, m in modules.items():
            if isinstance(m, types) and n in by_module:
                inner = sum(v for k, v in layers.items() if not n or k.startswith(n + "."))
                attributed[n] = (cat, by_module[n] - inner)
    fc = FlopCount(by_module, {}, attributed)
    fc.by_category = fc.categories()
    return fc
