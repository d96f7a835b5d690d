"""Triton gather / grouped scatter-add for space-time scan orders (channel-last ``(Bsz, L, C)`` tokens).

- scan:  ``out[b, k, j, :] = x[b, orders[k, j], :]``                                  (a gather)
- merge: ``out[b, g, n, :] = sum_{k in group g} ys[b, k, inv[k, n], :]``              (owner-computes)

The merge never scatters: each output row is owned by one program, which reads the rows of its group's
directions through the inverse permutations ``inv`` (``inv[k, orders[k, j]] = j``). No atomics, deterministic.
Both are one generalised gather (``src[b, grp[k], orders[k, j]]``) and one grouped merge, mutual adjoints, so each
is the other's backward (and double backward works).

The index functions (:func:`scan_order`, :func:`scan_orders`, :func:`window_order`) are re-exported from
``reference.space_time``: they are pure functions of the shape.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from glsmamba.kernels._utils import cdiv, check_runnable, device_guard, gpu_geometry, next_pow2, record_build
from glsmamba.reference.space_time import (  # noqa: F401  (re-exported index functions)
    DEFAULT_WINDOW,
    STS6D,
    _check_merge,
    _check_scan,
    scan_order,
    scan_orders,
    table_mode,
    window_order,
    window_orders,
)

record_build()  # Triton decorates the kernels below in the mode TRITON_INTERPRET names now

# ------------------------------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["L"])
def _st_gather_kernel(src_ptr, idx_ptr, grp_ptr, out_ptr, L, C, K, GS, NLB, NCB,
                      BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    # out[b, k, j, c] = src[b, grp[k], idx[k, j], c];  src (Bsz, GS, L, C), out (Bsz, K, L, C), all contiguous
    pid = tl.program_id(0).to(tl.int64)
    i_c = pid % NCB
    i_l = (pid // NCB) % NLB
    i_bk = pid // (NCB * NLB)
    i_b = i_bk // K
    i_k = i_bk % K
    o_j = i_l * BLOCK_L + tl.arange(0, BLOCK_L)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_j = o_j < L
    m = m_j[:, None] & (o_c < C)[None, :]
    src_row = tl.load(idx_ptr + i_k * L + o_j, mask=m_j, other=0).to(tl.int64)
    g = tl.load(grp_ptr + i_k).to(tl.int64)
    v = tl.load(src_ptr + ((i_b * GS + g) * L + src_row)[:, None] * C + o_c[None, :], mask=m)
    tl.store(out_ptr + ((i_b * K + i_k) * L + o_j)[:, None] * C + o_c[None, :], v, mask=m)


@triton.jit(do_not_specialize=["L"])
def _st_merge_kernel(ys_ptr, inv_ptr, mem_ptr, gptr_ptr, out_ptr, L, C, K, G, NLB, NCB,
                     BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    # out[b, g, n, c] = sum over members k of group g of ys[b, k, inv[k, n], c]
    # group g's directions are mem[gptr[g]:gptr[g+1]] (CSR), read in ascending k: a fixed summation order.
    pid = tl.program_id(0).to(tl.int64)
    i_c = pid % NCB
    i_l = (pid // NCB) % NLB
    i_bg = pid // (NCB * NLB)
    i_b = i_bg // G
    i_g = i_bg % G
    o_n = i_l * BLOCK_L + tl.arange(0, BLOCK_L)
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_n = o_n < L
    m = m_n[:, None] & (o_c < C)[None, :]
    start = tl.load(gptr_ptr + i_g)
    end = tl.load(gptr_ptr + i_g + 1)
    acc = tl.zeros([BLOCK_L, BLOCK_C], dtype=tl.float32)  # fp32 accumulation for every input dtype
    for i in range(start, end):
        k = tl.load(mem_ptr + i).to(tl.int64)
        j = tl.load(inv_ptr + k * L + o_n, mask=m_n, other=0).to(tl.int64)
        v = tl.load(ys_ptr + ((i_b * K + k) * L + j)[:, None] * C + o_c[None, :], mask=m, other=0.0)
        acc += v.to(tl.float32)
    tl.store(out_ptr + ((i_b * G + i_g) * L + o_n)[:, None] * C + o_c[None, :], acc.to(out_ptr.dtype.element_ty), mask=m)


# ------------------------------------------------------------------------------------------------------------------
# launchers
# ------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _group_tables(groups: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grp [K], members [K], gptr [G+1])`` int32: group of each direction, and the CSR of directions per group."""
    with table_mode():  # cached: never an inference or fake tensor
        grp = torch.tensor(groups, dtype=torch.int32)
        members = torch.argsort(grp, stable=True).to(torch.int32)
        counts = torch.bincount(grp.long(), minlength=max(groups) + 1)
        gptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)]).to(torch.int32)
        return grp.to(device), members.to(device), gptr.to(device)


def _blocks(L: int, C: int) -> tuple[int, int]:
    if not gpu_geometry():  # few, large programs: the interpreter pays per program and per op, not per element
        return min(next_pow2(L), 256), min(next_pow2(C), 128)
    block_c = min(next_pow2(C), 64)
    # 2048-element tiles: ~70 (gather) / ~120 (merge) registers on sm_90, occupancy for these memory-bound copies
    return max(16, min(128, 2048 // block_c)), block_c


def st_gather(src: torch.Tensor, orders: torch.Tensor, groups: tuple[int, ...]) -> torch.Tensor:
    """``out[b, k, j] = src[b, groups[k], orders[k, j]]``: src ``[Bsz, GS, L, C]`` -> ``[Bsz, K, L, C]``."""
    src = src.contiguous()
    Bsz, GS, L, C = src.shape
    K = orders.shape[0]
    out = torch.empty(Bsz, K, L, C, device=src.device, dtype=src.dtype)
    if out.numel() == 0:
        return out
    grp, _, _ = _group_tables(groups, src.device)
    BL, BC = _blocks(L, C)
    NLB, NCB = cdiv(L, BL), cdiv(C, BC)
    with device_guard(src):
        _st_gather_kernel[(Bsz * K * NLB * NCB,)](src, orders.contiguous(), grp, out, L, C, K, GS, NLB, NCB,
                                                   BLOCK_L=BL, BLOCK_C=BC, num_warps=4)
    return out


def st_merge(ys: torch.Tensor, inv: torch.Tensor, groups: tuple[int, ...]) -> torch.Tensor:
    """``out[b, g, n] = sum_{k: groups[k] = g} ys[b, k, inv[k, n]]``: ys ``[Bsz, K, L, C]`` -> ``[Bsz, G, L, C]``."""
    ys = ys.contiguous()
    Bsz, K, L, C = ys.shape
    G = max(groups) + 1
    out = torch.empty(Bsz, G, L, C, device=ys.device, dtype=ys.dtype)
    if out.numel() == 0:
        return out
    _, members, gptr = _group_tables(groups, ys.device)
    BL, BC = _blocks(L, C)
    NLB, NCB = cdiv(L, BL), cdiv(C, BC)
    with device_guard(ys):
        _st_merge_kernel[(Bsz * G * NLB * NCB,)](ys, inv.contiguous(), members, gptr, out, L, C, K, G, NLB, NCB,
                                                  BLOCK_L=BL, BLOCK_C=BC, num_warps=4)
    return out


# ---- custom ops: opaque to torch.compile (dynamo traces the autograd Functions and keeps these as graph nodes)


@torch.library.custom_op("glsmamba::space_time_gather", mutates_args=())
def _gather_op(src: torch.Tensor, orders: torch.Tensor, groups: list[int]) -> torch.Tensor:
    return st_gather(src, orders, tuple(groups))


@_gather_op.register_fake
def _(src, orders, groups):
    return src.new_empty(src.shape[0], orders.shape[0], src.shape[2], src.shape[3])


@torch.library.custom_op("glsmamba::space_time_merge", mutates_args=())
def _merge_op(ys: torch.Tensor, inv: torch.Tensor, groups: list[int]) -> torch.Tensor:
    return st_merge(ys, inv, tuple(groups))


@_merge_op.register_fake
def _(ys, inv, groups):
    return ys.new_empty(ys.shape[0], max(groups) + 1, ys.shape[2], ys.shape[3])


class _GatherFn(torch.autograd.Function):
    """``src [Bsz, GS, L, C] -> [Bsz, K, L, C]``; backward = the grouped merge (its adjoint)."""

    @staticmethod
    def forward(ctx, src, orders, inv, groups):
        ctx.save_for_backward(orders, inv)
        ctx.groups = groups
        return _gather_op(src, orders, list(groups))

    @staticmethod
    def backward(ctx, dout):
        orders, inv = ctx.saved_tensors
        return _MergeFn.apply(dout, orders, inv, ctx.groups), None, None, None


class _MergeFn(torch.autograd.Function):
    """``ys [Bsz, K, L, C] -> [Bsz, G, L, C]``; backward = the grouped gather (its adjoint)."""

    @staticmethod
    def forward(ctx, ys, orders, inv, groups):
        ctx.save_for_backward(orders, inv)
        ctx.groups = groups
        return _merge_op(ys, inv, list(groups))

    @staticmethod
    def backward(ctx, dout):
        orders, inv = ctx.saved_tensors
        return _GatherFn.apply(dout, orders, inv, ctx.groups), None, None, None


# ------------------------------------------------------------------------------------------------------------------
# public
# ------------------------------------------------------------------------------------------------------------------


def space_time_scan(x: torch.Tensor, orders: torch.Tensor) -> torch.Tensor:
    """Gather the tokens of ``x`` in each scan order (Triton).

    Args:
        x: ``[Bsz, L, C]`` tokens in natural order.
        orders: ``[K, L]`` int64, each row a permutation of ``range(L)``.

    Returns:
        ``[Bsz, K, L, C]`` with ``out[:, k, j] = x[:, orders[k, j]]``; backward = :func:`space_time_merge` of the
        gradient with all directions in one group.
    """
    x, inv = _check_scan(x, orders)
    check_runnable(x, orders, op="space_time_scan")
    K = orders.shape[0]
    return _GatherFn.apply(x.unsqueeze(1), orders, inv, (0,) * K)


def space_time_merge(ys: torch.Tensor, orders: torch.Tensor, groups: Sequence[int]) -> torch.Tensor:
    """Scatter-add each direction back to natural order, summing the directions of each group (Triton).

    Args:
        ys: ``[Bsz, K, L, C]``, direction k in scan order k.
        orders: ``[K, L]`` int64 permutations.
        groups: K ints, the output group of each direction (G = max + 1, every id used).

    Returns:
        ``[Bsz, G, L, C]`` with ``out[:, g, orders[k, j]] += ys[:, k, j]`` for k in group g (fp32 accumulation,
        fixed order: deterministic); backward = the gather :func:`space_time_scan` reading group ``groups[k]``.
    """
    ys, inv, gs = _check_merge(ys, orders, groups)
    check_runnable(ys, orders, op="space_time_merge")
    return _MergeFn.apply(ys, orders, inv, gs)
