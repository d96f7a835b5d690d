"""The project's own FLOP counter (``glsmamba summary``).

Counting convention: one multiply-add = 2 FLOPs (fvcore-style counters report multiply-adds; divide by 2 to compare).
Counted: every ``nn.Linear``, ``nn.Conv2d`` and ``nn.ConvTranspose2d`` (forward hooks, from the real shapes), the
ViT attention products (``q k^T`` and ``attn v``), and the registry ops, which generic counters skip:

* ordered selective scan: per direction, token, channel and state ~9 FLOPs (``dt*A``, ``exp``, ``a*h``, ``dt*u``,
  ``*B``, ``+``, ``C*h``, ``+`` and the ``sum``), plus 2 per (token, channel) for the ``D`` skip and 1 per
  (token, channel) for the merge add: ``K * L * Di * (9 N + 3)`` per clip;
* deformable aggregation: per token, tap and channel 4 bilinear multiply-adds + mask, weight, accumulate:
  ``10 * L * P * C`` per clip.

Norms, activations, softmax and other element-wise work are not counted (as in fvcore / thop).

Usage: the network runs on the ``meta`` device under :class:`FlopCounter` (no memory, no compute); while a counter
is active the model's op call sites report their FLOPs with :func:`add` and return shape-only placeholders instead
of calling the registry.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

_active: list[FlopCounter] = []


def counting() -> bool:
    """True while a :class:`FlopCounter` is active (op call sites then skip the real op)."""
    return bool(_active)


def add(module: nn.Module, n: int) -> None:
    """Attribute ``n`` FLOPs to ``module`` in the active counter (no-op when none)."""
    if _active:
        _active[-1].record(module, int(n))


def selective_scan_flops(batch: int, directions: int, tokens: int, channels: int, d_state: int) -> int:
    """FLOPs of an ordered selective scan over ``directions`` orders (see the module docstring)."""
    return batch * directions * tokens * channels * (9 * d_state + 3)


def deformable_flops(batch: int, tokens: int, channels: int, taps: int) -> int:
    """FLOPs of ``deformable_aggregate`` (see the module docstring)."""
    return 10 * batch * tokens * taps * channels


def _linear_hook(counter: FlopCounter):
    def hook(m: nn.Linear, inputs, out):
        counter.record(m, 2 * out.numel() * m.in_features)
    return hook


def _conv_hook(counter: FlopCounter):
    def hook(m: nn.Conv2d, inputs, out):
        k = m.kernel_size[0] * m.kernel_size[1]
        counter.record(m, 2 * out.numel() * (m.in_channels // m.groups) * k)
    return hook


def _deconv_hook(counter: FlopCounter):
    def hook(m: nn.ConvTranspose2d, inputs, out):
        k = m.kernel_size[0] * m.kernel_size[1]
        counter.record(m, 2 * inputs[0].numel() * (m.out_channels // m.groups) * k)
    return hook


class FlopCounter:
    """Context manager counting FLOPs per named module of ``model`` during the forward passes run inside it.

    Example:
        >>> with torch.device("meta"):
        ...     net = GLSMamba(cfg)
        >>> with FlopCounter(net) as fc:
        ...     net(torch.empty(1, 5, 3, 256, 192, device="meta"))
        >>> fc.total()
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.names = {m: n for n, m in model.named_modules()}
        self.by_module: dict[str, int] = defaultdict(int)
        self._handles: list = []

    def record(self, module: nn.Module, n: int) -> None:
        self.by_module[self.names.get(module, f"<unregistered {type(module).__name__}>")] += n

    def __enter__(self) -> FlopCounter:
        for m in self.model.modules():
            if isinstance(m, nn.Linear):
                self._handles.append(m.register_forward_hook(_linear_hook(self)))
            elif isinstance(m, nn.Conv2d):
                self._handles.append(m.register_forward_hook(_conv_hook(self)))
            elif isinstance(m, nn.ConvTranspose2d):
                self._handles.append(m.register_forward_hook(_deconv_hook(self)))
        _active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        _active.remove(self)

    def total(self, prefix: str = "") -> int:
        """FLOPs of the modules named ``prefix`` or under ``prefix.`` (everything for ``""``)."""
        if not prefix:
            return sum(self.by_module.values())
        return sum(v for k, v in self.by_module.items() if k == prefix or k.startswith(prefix + "."))


def count_flops(model: nn.Module, *inputs: torch.Tensor) -> FlopCounter:
    """Run ``model(*inputs)`` under a :class:`FlopCounter` (no grad) and return the counter."""
    with torch.no_grad(), FlopCounter(model) as fc:
        model(*inputs)
    return fc
