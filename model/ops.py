"""The network's calls of the registry ops, and their shape-only twins on the ``meta`` device.

On real tensors :func:`ordered_selective_scan` and :func:`deformable_aggregate` run the backend registry's op
(:func:`model.backend.get_op`, resolved at each call). Meta tensors carry no data, so there the same calls run two
shape-only torch custom ops (``glsmamba_shape::ordered_selective_scan``, ``glsmamba_shape::deformable_aggregate``:
fake implementations only). They exist so that ``torch.utils.flop_counter.FlopCounterMode`` sees each op as one
call and counts it with the formulas registered here (``register_flop_formula``); :mod:`model.flops` builds the
project's counter on that.

FLOP formulas (1 multiply-add = 2 FLOPs, FlopCounterMode's unit):

* ordered selective scan: per direction, token, channel and state ~9 FLOPs (``dt*A``, ``exp``, ``a*h``, ``dt*u``,
  ``*B``, ``+``, ``C*h``, ``+`` and the sum over states), plus 2 per (token, channel) for the ``D`` skip and 1 for
  the merge add: ``Bsz * K * L * C * (9 N + 3)``;
* deformable aggregation: per token, tap and channel 4 bilinear multiply-adds + mask, weight and accumulate:
  ``10 * Bsz * L * P * C``;
* ``aten.baddbmm_`` (in place): as torch's ``baddbmm`` (FlopCounterMode has no formula for the in-place op).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.flop_counter import baddbmm_flop, register_flop_formula

from .backend import get_op


def selective_scan_flops(batch: int, directions: int, tokens: int, channels: int, d_state: int) -> int:
    """FLOPs of an ordered selective scan over ``directions`` orders (see the module docstring)."""
    return batch * directions * tokens * channels * (9 * d_state + 3)


def deformable_flops(batch: int, tokens: int, channels: int, taps: int) -> int:
    """FLOPs of ``deformable_aggregate`` with ``taps`` taps (see the module docstring)."""
    return 10 * batch * tokens * taps * channels


# ------------------------------------------------------------------------------------------ shape-only custom ops
@torch.library.custom_op("glsmamba_shape::ordered_selective_scan", mutates_args=())
def _scan_shape(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                num_groups: int) -> torch.Tensor:
    raise RuntimeError("glsmamba_shape ops run on the meta device only (real tensors go through the registry)")


@_scan_shape.register_fake
def _(x, delta, A, B, C, num_groups):
    return x.new_empty(x.shape[0], num_groups, x.shape[1], x.shape[2])


@torch.library.custom_op("glsmamba_shape::deformable_aggregate", mutates_args=())
def _deformable_shape(x: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor
                      ) -> torch.Tensor:
    raise RuntimeError("glsmamba_shape ops run on the meta device only (real tensors go through the registry)")


@_deformable_shape.register_fake
def _(x, offsets, mask, weight):
    return torch.empty_like(x)


@register_flop_formula(torch.ops.glsmamba_shape.ordered_selective_scan)
def _scan_flop(x_shape, delta_shape, a_shape, b_shape, c_shape, num_groups, out_shape=None, **kwargs) -> int:
    batch, k, length, channels = delta_shape
    return selective_scan_flops(batch, k, length, channels, a_shape[-1])


@register_flop_formula(torch.ops.glsmamba_shape.deformable_aggregate)
def _deformable_flop(x_shape, offsets_shape, mask_shape, weight_shape, out_shape=None, **kwargs) -> int:
    batch, length, channels = x_shape
    return deformable_flops(batch, length, channels, mask_shape[-1])


# torch counts ``baddbmm`` but not its in-place twin; the grouped STMM form accumulates its taps with ``baddbmm_``
register_flop_formula(torch.ops.aten.baddbmm_, get_raw=True)(baddbmm_flop)  # already shape-wrapped


SHAPE_OPS = {
    "ordered_selective_scan": torch.ops.glsmamba_shape.ordered_selective_scan.default,
    "deformable_aggregate": torch.ops.glsmamba_shape.deformable_aggregate.default,
}


# ------------------------------------------------------------------------------------------ the call sites
def ordered_selective_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                           D: torch.Tensor | None, orders: torch.Tensor, groups: Sequence[int],
                           reset: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                           delta_softplus: bool = False) -> torch.Tensor:
    """The registry's ``ordered_selective_scan`` (docs/design.md section 3.3); its shape-only op on meta tensors."""
    if x.device.type == "meta":
        return _scan_shape(x, delta, A, B, C, max(groups) + 1)
    return get_op("ordered_selective_scan")(x, delta, A, B, C, D, orders, groups, reset=reset,
                                            delta_bias=delta_bias, delta_softplus=delta_softplus)


def deformable_aggregate(x: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                         taps: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The registry's ``deformable_aggregate`` (docs/design.md section 3.4); its shape-only op on meta tensors."""
    if x.device.type == "meta":
        return _deformable_shape(x, offsets, mask, weight)
    return get_op("deformable_aggregate")(x, offsets, mask, weight, taps, shape)
