"""Input checks (and the STMM tap tables) shared by the references and the Triton kernels: one message for one
mistake on either backend.

Kept apart from the implementations so that the kernels import only these (``kernels/`` may import reference's
input checks and tables, nothing else of it), and the static report's count cache (``bench/static.py``) is not
invalidated by a change to a reference implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from glsmamba.reference.space_time import (
    _check_groups,
    _check_orders,
    _check_reset,
    _check_same_device,
    _check_shape,
    _check_tensor,
)

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class ScanDims:
    batch: int
    dim: int
    length: int
    dstate: int
    groups: int


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def check_selective_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None, *,
                                channel_last: bool = False) -> ScanDims:
    """Validate selective-scan arguments; raise TypeError/ValueError naming the offending argument.

    Shared by the reference and the Triton backend so both reject bad input with the same message.
    """
    lay = "(B, L, D)" if channel_last else "(B, D, L)"
    bc_lay = "(B, L, N) or (B, L, G, N)" if channel_last else "(B, N, L) or (B, G, N, L)"
    named = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, t in named.items():
        if t is None and name in ("D", "z", "delta_bias"):
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOATS:
            raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got dtype {t.dtype}")
    if u.dim() != 3:
        raise ValueError(f"u must have shape {lay}, got rank {u.dim()} shape {_shape(u)}")
    if channel_last:
        batch, length, dim = u.shape
    else:
        batch, dim, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have the shape of u {_shape(u)}, got {_shape(delta)}")
    if delta.dtype != u.dtype:
        raise TypeError(f"delta must have u's dtype {u.dtype}, got {delta.dtype}")
    if z is not None:
        if z.shape != u.shape:
            raise ValueError(f"z must have the shape of u {_shape(u)}, got {_shape(z)}")
        if z.dtype != u.dtype:
            raise TypeError(f"z must have u's dtype {u.dtype}, got {z.dtype}")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must have shape (D, N) = ({dim}, N), got {_shape(A)}")
    dstate = A.shape[1]
    if dstate < 1:
        raise ValueError(f"A must have at least one state column, got {_shape(A)}")
    for name, t in (("B", B), ("C", C)):
        if t.dim() not in (3, 4):
            raise ValueError(f"{name} must have shape {bc_lay}, got rank {t.dim()} shape {_shape(t)}")
    if B.dim() != C.dim():
        raise ValueError(f"B and C must have the same rank, got B {_shape(B)} and C {_shape(C)}")
    if channel_last:
        groups = 1 if B.dim() == 3 else B.shape[2]
        expected = (batch, length, dstate) if B.dim() == 3 else (batch, length, groups, dstate)
    else:
        groups = 1 if B.dim() == 3 else B.shape[1]
        expected = (batch, dstate, length) if B.dim() == 3 else (batch, groups, dstate, length)
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != expected:
            raise ValueError(f"{name} must have shape {expected} (layout {bc_lay}, N={dstate} from A), got {_shape(t)}")
    if groups < 1 or dim % groups != 0:
        raise ValueError(f"the number of B/C groups G={groups} must divide D={dim}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"{name} must have shape (D,) = ({dim},), got {_shape(t)}")
    devices = {name: t.device for name, t in named.items() if t is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{k}={v}" for k, v in devices.items())
        raise ValueError(f"all tensors must be on one device, got {listing}")
    return ScanDims(batch, dim, length, dstate, groups)


@dataclass(frozen=True)
class OrderedScanDims:
    batch: int
    length: int
    channels: int
    dstate: int
    directions: int
    groups: tuple[int, ...]


def _check_ordered_scan(x, delta, A, B, C, D, orders, groups, reset, delta_bias
                        ) -> tuple[OrderedScanDims, torch.Tensor]:
    """Validate :func:`ordered_selective_scan` arguments (shared with kernels/); returns (dims, inverse orders)."""
    x = _check_tensor(x, "x", 3, what=" (Bsz, L, C)")
    Bsz, L, Cch = x.shape
    delta = _check_tensor(delta, "delta", 4, what=" (Bsz, K, L, C)")
    K = delta.shape[1]
    if (delta.shape[0], delta.shape[2], delta.shape[3]) != (Bsz, L, Cch):
        raise ValueError(f"delta must have shape (Bsz, K, L, C) = ({Bsz}, K, {L}, {Cch}) to match x of shape "
                         f"{tuple(x.shape)}, got shape {tuple(delta.shape)}")
    if delta.dtype != x.dtype:
        raise TypeError(f"delta must have x's dtype {x.dtype}, got {delta.dtype} (shape {tuple(delta.shape)})")
    A = _check_tensor(A, "A", 3, what=" (K, C, N)")
    if A.shape[:2] != (K, Cch) or A.shape[2] < 1:
        raise ValueError(f"A must have shape (K, C, N) = ({K}, {Cch}, N >= 1), got shape {tuple(A.shape)}")
    N = A.shape[2]
    for name, t in (("B", B), ("C", C)):
        t = _check_tensor(t, name, 4, what=" (Bsz, K, L, N)")
        if tuple(t.shape) != (Bsz, K, L, N):
            raise ValueError(f"{name} must have shape (Bsz, K, L, N) = ({Bsz}, {K}, {L}, {N}), "
                             f"got shape {tuple(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            t = _check_tensor(t, name, 2, what=" (K, C)")
            if tuple(t.shape) != (K, Cch):
                raise ValueError(f"{name} must have shape (K, C) = ({K}, {Cch}), got shape {tuple(t.shape)}")
    if isinstance(orders, torch.Tensor) and orders.dim() == 2 and orders.shape[0] != K:
        raise ValueError(f"orders must have shape (K, L) = ({K}, {L}) (K directions of delta), "
                         f"got shape {tuple(orders.shape)}")
    inv = _check_orders(orders, L)
    gs = _check_groups(groups, K)
    _check_reset(reset, K, L, x)
    _check_same_device(x, "x", delta=delta, A=A, B=B, C=C, D=D, delta_bias=delta_bias, orders=orders)
    return OrderedScanDims(Bsz, L, Cch, N, K, gs), inv


SPATIAL_TAPS: torch.Tensor = torch.tensor([[0, dh, dw] for dh in (-1, 0, 1) for dw in (-1, 0, 1)], dtype=torch.int64)
"""The 3x3 spatial taps at dt = 0, ``(9, 3)`` rows ``(dt, dh, dw)``, dh major."""

TEMPORAL_TAPS: torch.Tensor = torch.tensor([[dt, 0, 0] for dt in (-1, 0, 1)], dtype=torch.int64)
"""The temporal taps dt in (-1, 0, 1) at the same pixel, ``(3, 3)`` rows ``(dt, dh, dw)``."""


def _check_deformable(x: object, offsets: object, mask: object, weight: object, taps: object,
                      shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Validate the :func:`deformable_aggregate` arguments; returns ``(T, H, W, Goff)``."""
    x = _check_tensor(x, "x", 3, what=" (Bsz, L, C)")
    Bsz, L, C = x.shape
    T, H, W = _check_shape(shape)
    if T * H * W != L:
        raise ValueError(f"shape {(T, H, W)} has T*H*W = {T * H * W} tokens but x has L = {L} "
                         f"(x shape {tuple(x.shape)})")
    if not isinstance(taps, torch.Tensor):
        raise TypeError(f"taps must be an integer torch.Tensor of shape (P, 3), got {type(taps).__name__}")
    if taps.dim() != 2 or taps.shape[1] != 3 or taps.shape[0] < 1:
        raise ValueError(f"taps must have shape (P, 3) with P >= 1 rows (dt, dh, dw), got shape {tuple(taps.shape)}")
    if taps.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"taps must have an integer dtype (int64 or int32), got {taps.dtype}")
    P = taps.shape[0]
    weight = _check_tensor(weight, "weight", 2, what=" (P, C)")
    if tuple(weight.shape) != (P, C):
        raise ValueError(f"weight must have shape (P, C) = ({P}, {C}), got shape {tuple(weight.shape)}")
    offsets = _check_tensor(offsets, "offsets", 5, what=" (Bsz, L, Goff, P, 2)")
    Goff = offsets.shape[2]
    if offsets.shape[3] != P:
        raise ValueError(f"offsets must have one (off_h, off_w) pair per tap: shape (Bsz, L, Goff, P={P}, 2), "
                         f"got shape {tuple(offsets.shape)} ({offsets.shape[3]} taps)")
    if Goff < 1 or tuple(offsets.shape) != (Bsz, L, Goff, P, 2):
        raise ValueError(f"offsets must have shape (Bsz, L, Goff, P, 2) = ({Bsz}, {L}, Goff, {P}, 2), "
                         f"got shape {tuple(offsets.shape)}")
    if C % Goff != 0:
        raise ValueError(f"the channel count C = {C} of x must be divisible by the offset groups "
                         f"Goff = {Goff} (offsets shape {tuple(offsets.shape)})")
    mask = _check_tensor(mask, "mask", 4, what=" (Bsz, L, Goff, P)")
    if tuple(mask.shape) != (Bsz, L, Goff, P):
        raise ValueError(f"mask must have shape (Bsz, L, Goff, P) = ({Bsz}, {L}, {Goff}, {P}), "
                         f"got shape {tuple(mask.shape)}")
    _check_same_device(x, "x", offsets=offsets, mask=mask, weight=weight)
    return T, H, W, Goff
