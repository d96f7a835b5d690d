"""Direction-aware selective scan over space-time scan orders (pure PyTorch reference).

For each direction k (orders[k] a permutation of the L tokens), with per-direction ``delta[:, k]``, ``B[:, k]``,
``C[:, k]`` given in natural token order and ``x`` shared by all directions::

    u_j = x[:, orders[k, j]]   (and likewise delta, B, C read at orders[k, j])
    h_j = exp(dt_j A[k]) h_{j-1} + dt_j u_j B_j      (h_{j-1} := 0 where reset[k, j]; h_{-1} = 0)
    y_j = C_j . h_j + D[k] u_j,    dt = softplus(delta + delta_bias[k])  (if delta_softplus)
    out[:, groups[k], orders[k, j]] += y_j

i.e. ``space_time_scan -> selective_scan_channel_last (per direction, per reset segment) -> space_time_merge``.
This reference does exactly that: it permutes copies, runs ``reference.selective_scan.selective_scan_channel_last``
per direction (the segments between resets become independent batch rows, grouped by length), un-permutes and
sums each group in fp32. The per-direction outputs are in x's dtype (the selective scan's contract), so the
low-precision result is that of the unfused composition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from glsmamba.reference.selective_scan import selective_scan_channel_last
from glsmamba.reference.space_time import (
    _check_groups,
    _check_orders,
    _check_reset,
    _check_same_device,
    _check_tensor,
)


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


def _segments(reset_row: torch.Tensor | None, L: int) -> dict[int, torch.Tensor]:
    """Start positions of the reset segments of one direction, grouped by segment length."""
    if reset_row is None:
        return {L: torch.zeros(1, dtype=torch.int64)}
    starts = sorted(set([0] + reset_row.nonzero().flatten().tolist()))
    ends = starts[1:] + [L]
    by_len: dict[int, list[int]] = {}
    for s, e in zip(starts, ends, strict=True):
        by_len.setdefault(e - s, []).append(s)
    return {n: torch.tensor(v, dtype=torch.int64) for n, v in by_len.items()}


def ordered_selective_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           C: torch.Tensor, D: torch.Tensor | None, orders: torch.Tensor, groups: Sequence[int],
                           reset: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                           delta_softplus: bool = True) -> torch.Tensor:
    """Selective scan of the tokens read in each order, written back in natural order and summed per group.

    Args:
        x: ``[Bsz, L, C]`` natural-order input, shared by all directions.
        delta: ``[Bsz, K, L, C]`` natural-order time steps per direction (before bias / softplus).
        A: ``[K, C, N]`` (float32).
        B: ``[Bsz, K, L, N]`` natural order.
        C: ``[Bsz, K, L, N]`` natural order.
        D: ``[K, C]`` skip per direction, or None.
        orders: ``[K, L]`` int64 permutations (``orders[k, j]`` = natural index read at step j).
        groups: K ints: output group of each direction (G = max + 1, every id used).
        reset: ``[K, L]`` bool or None: the state is zeroed before step j where ``reset[k, j]``.
        delta_bias: ``[K, C]`` or None.
        delta_softplus: softplus (threshold 20) on ``delta + delta_bias``.

    Returns:
        ``[Bsz, G, L, C]`` in x's dtype.

    Example:
        >>> from glsmamba.reference.space_time import STS6D, STS6D_GROUPS, scan_orders
        >>> o = scan_orders((2, 3, 4), STS6D); x = torch.randn(1, 24, 8)
        >>> out = ordered_selective_scan(x, torch.randn(1, 6, 24, 8), -torch.rand(6, 8, 4), torch.randn(1, 6, 24, 4),
        ...                              torch.randn(1, 6, 24, 4), None, o, STS6D_GROUPS)
        >>> out.shape
        torch.Size([1, 3, 24, 8])
    """
    dims, inv = _check_ordered_scan(x, delta, A, B, C, D, orders, groups, reset, delta_bias)
    Bsz, L, Cch, K = dims.batch, dims.length, dims.channels, dims.directions
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    G = max(dims.groups) + 1
    out = torch.zeros(Bsz, G, L, Cch, dtype=acc, device=x.device)
    for k in range(K):
        perm = orders[k]
        u = x.index_select(1, perm)  # (Bsz, L, C) in scan order k
        dl = delta[:, k].index_select(1, perm)
        Bk = B[:, k].index_select(1, perm)
        Ck = C[:, k].index_select(1, perm)
        Dk = None if D is None else D[k]
        bk = None if delta_bias is None else delta_bias[k]
        y = torch.empty_like(u)
        for n, starts in _segments(None if reset is None else reset[k].cpu(), L).items():
            # the segments of length n become independent batch rows: (Bsz * S, n, ...)
            rows = (starts[:, None] + torch.arange(n)).reshape(-1).to(x.device)
            S = starts.numel()

            def seg(t: torch.Tensor) -> torch.Tensor:
                return t.index_select(1, rows).reshape(Bsz * S, n, t.shape[-1])  # noqa: B023

            ys = selective_scan_channel_last(seg(u), seg(dl), A[k], seg(Bk), seg(Ck), Dk, None, bk, delta_softplus)
            y.index_copy_(1, rows, ys.reshape(Bsz, S * n, Cch))
        out[:, dims.groups[k]] += y.index_select(1, inv[k]).to(acc)  # back to natural order, summed per group
    return out.to(x.dtype)
