"""Direction-aware selective scan in Triton: reads each scan order straight from natural-order tensors.

Contract and semantics: ``reference/ordered_scan.py`` (``scan -> selective_scan -> merge`` without the permuted
copies). For direction k the kernels read ``x, delta[:, k]`` at the natural rows ``orders[k, j]`` (int32 indices;
one row of channels per step, whatever the order), zero the state where ``reset[k, j]``, and add ``y_k`` into the
natural rows of its group's output. The loop body is ``kernels/_scan_common.py``: a tile is R channels x BLOCK_T
steps; the gathered rows are read as VEC sub-tiles joined so that each thread holds VEC consecutive steps of one
channel (R = 16 channels of 2 bytes fill a 32-byte sector per row). B and C are gathered once per call into scan
order, ``(Bsz, K, N, L)`` rows (padded to whole chunks), so that state n is one contiguous row.

Forward: a program owns (batch row, group, R channels) and runs the group's directions one after the other over
the whole order, the state in registers: the first direction writes the group's output rows, the next ones add
to them (the same program: fixed order, no atomics, no ``(B, K, L, C)`` intermediate). With a gradient to come,
the state at every chunk start (CK = 256 steps on the GPU) is stored.

Backward (one chunk of CK steps = one tile): a summary kernel computes the adjoint every chunk passes back from a
zero end (a sum weighted by ``exp2(A cumsum dt)``; a chunk holding a reset passes nothing), a sequential kernel
chains them, and the main kernel's program owns (batch row, direction, chunk, channel range) and loops over the
channels: it recomputes h from the checkpoint, runs the adjoint as a reverse scan, writes ddelta and the
direction's dx in x's dtype, and sums dB/dC over the channels in an accumulator it owns. Then, in a fixed order:
dx over the directions (the owner-computes merge of ``kernels/space_time.py``), dB/dC over the channel ranges
(written back in natural order), dA, dD, d(delta_bias) over batch rows and chunks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch.utils.weak import WeakIdKeyDictionary

from glsmamba.kernels._scan_common import (
    LOG2E,
    _scan_carry_kernel,
    acc_pos,
    bwd_chunk_rows,
    bwd_tile,
    divisor,
    fwd_tile,
    index_type,
    join_steps,
    none_flag,
    pairs_ok,
    row_last,
    sum_leading,
    summary_tile,
    vec_of,
    zero_acc_rows,
)
from glsmamba.kernels._utils import (
    busiest_sm,
    cdiv,
    check_runnable,
    current_config,
    device_guard,
    fast_paths,
    gpu_geometry,
    next_pow2,
    record_build,
    sm_budget,
)
from glsmamba.kernels.space_time import _group_tables, st_merge
from glsmamba.reference.checks import _check_ordered_scan
from glsmamba.reference.space_time import table_mode

record_build()  # Triton decorates the kernels below in the mode TRITON_INTERPRET names now

__all__ = ["ordered_selective_scan"]

_FLAGS = {"HAS_D": none_flag("D_ptr"), "HAS_BIAS": none_flag("bias_ptr"), "HAS_RESET": none_flag("rst_ptr")}

# ------------------------------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------------------------------


@triton.jit
def _step_offs(ord_ptr, o, rows, unit, CH, T: tl.constexpr, VEC: tl.constexpr):
    """VEC sub-tiles of element offsets ``orders[o + j * VEC + k] * CH + rows`` (``[R, T / VEC]`` each; ``o`` a
    scalar or ``[R, 1]``): the gathered rows of T consecutive steps; rows are scaled by the unspecialised ``unit``
    (= 1) so that no load is vectorised across channels."""
    j = (tl.arange(0, T // VEC) * VEC)[None, :]
    off = ()
    for k in tl.static_range(VEC):
        off = off + (tl.load(ord_ptr + o + (k + j)) * CH + (rows * unit)[:, None],)
    return off


@triton.jit
def _step_flags(rst_ptr, o, T: tl.constexpr, VEC: tl.constexpr):
    """``[1 or R, T]`` reset flags of steps o .. o + T - 1 (``o`` a scalar or ``[R, 1]``), in the layout of the
    joined tiles."""
    j = (tl.arange(0, T // VEC) * VEC)[None, :]
    vals = ()
    for k in tl.static_range(VEC):
        vals = vals + (tl.load(rst_ptr + o + (k + j)),)
    return join_steps(vals) != 0


@triton.jit
def _dir_params(A_ptr, D_ptr, bias_ptr, k, rows, CH, NS: tl.constexpr, HAS_D: tl.constexpr,
                HAS_BIAS: tl.constexpr):
    """Direction k's A columns scaled by log2 e (N ``[R]`` tensors), delta_bias and D of the channel rows."""
    A2s = ()
    for n in tl.static_range(NS):
        A2s = A2s + (tl.load(A_ptr + (k * CH + rows) * NS + n) * LOG2E,)
    bias = tl.zeros(rows.shape, dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + k * CH + rows).to(tl.float32)
    Dv = tl.zeros(rows.shape, dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + k * CH + rows).to(tl.float32)
    return A2s, bias, Dv


@triton.heuristics({**_FLAGS, "SAVE": none_flag("ck_ptr")})
@triton.jit(do_not_specialize=["unit"])
def _os_fwd_kernel(x_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, ord_ptr, rst_ptr, mem_ptr, gptr_ptr,
                   out_ptr, ck_ptr, s_db, s_dk, L, LP, CH, K, G, NCK, unit, NS: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr, CK_TILES: tl.constexpr, SOFTPLUS: tl.constexpr,
                   ACCUM: tl.constexpr, PAIRS: tl.constexpr, VEC: tl.constexpr, FAST: tl.constexpr,
                   IDX: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESET: tl.constexpr,
                   SAVE: tl.constexpr):
    # x (Bsz, L, CH); delta rows contiguous, batch/direction strides s_db, s_dk; A (K, CH, NS) fp32; B, C
    # (Bsz, K, NCK, NS, CK) in scan order, chunks of CK = CK_TILES * BLOCK_T steps (LP = NCK * CK); orders (K, LP)
    # int32, reset (K, LP) int8, both padded with zeros past L;
    # members/gptr: the directions of each group (CSR); out (Bsz, G, L, CH); ck (Bsz, K, NCK, CH, NS).
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(IDX)
    g = tl.program_id(1)
    b = tl.program_id(2).to(IDX)
    d0 = tl.load(gptr_ptr + g)
    nd = tl.load(gptr_ptr + g + 1) - d0
    o_t = tl.arange(0, BLOCK_T)
    first = (o_t == 0)[None, :]
    last = (o_t == BLOCK_T - 1)[None, :]
    xb = x_ptr + b * L * CH
    ob = out_ptr + (b * G + g) * L * CH
    for r in range(nd):
        # direction r reads rows other lanes (or the other warp) wrote for direction r - 1: a barrier orders them
        tl.debug_barrier()
        k = tl.load(mem_ptr + d0 + r).to(IDX)
        A2s, bias, Dv = _dir_params(A_ptr, D_ptr, bias_ptr, k, rows, CH, NS, HAS_D, HAS_BIAS)
        # the state starts in the layout the tiles leave it in (a row reduction of a joined tile), so that the
        # loop-carried state needs no layout conversion (with two warps: a shared-memory round trip per state)
        zrow = row_last(join_steps((tl.zeros([BLOCK_R, BLOCK_T // VEC], dtype=tl.float32),) * VEC), last)
        hs = ()
        for _n in tl.static_range(NS):
            hs = hs + (zrow,)
        db = dl_ptr + b * s_db + k * s_dk
        bc_rows = ((b * K + k) * NS * LP + rows * 0)[:, None]  # + t0 // CK * NS * CK + t0 % CK per tile
        o_ck = (((b * K + k) * NCK) * CH + rows) * NS
        for it in range(LP // BLOCK_T):
            t0 = it * BLOCK_T
            mask = ((t0 + o_t) < L)[None, :] & (rows >= 0)[:, None]
            rst = None
            if HAS_RESET:
                rst = _step_flags(rst_ptr, k * LP + t0, BLOCK_T, VEC)
            if SAVE:
                if it % CK_TILES == 0:  # (a branch, not a mask: the state's layout is converted only here)
                    for n in tl.static_range(NS):
                        tl.store(ck_ptr + o_ck + n, hs[n])
                    o_ck += CH * NS
            tb = bc_rows + (it // CK_TILES) * (NS * CK_TILES * BLOCK_T) + (it % CK_TILES) * BLOCK_T
            hs = fwd_tile(xb, db, None, ob, _step_offs(ord_ptr, k * LP + t0, rows, unit, CH, BLOCK_T, VEC), B_ptr,
                          C_ptr, tb, tb, L - t0, CK_TILES * BLOCK_T, CK_TILES * BLOCK_T, mask, first, last, rst, A2s,
                          hs, bias, Dv, NS, SOFTPLUS, HAS_D, False, HAS_RESET, True, ACCUM, PAIRS, FAST, True, r > 0,
                          True)


@triton.heuristics({"HAS_BIAS": none_flag("bias_ptr"), "HAS_RESET": none_flag("rst_ptr")})
@triton.jit(do_not_specialize=["unit"])
def _os_summary_kernel(dl_ptr, dout_ptr, A_ptr, C_ptr, bias_ptr, ord_ptr, rst_ptr, grp_ptr, loc_ptr, dsum_ptr,
                       s_db, s_dk, L, LP, CH, K, G, NCK, unit, NS: tl.constexpr, BLOCK_R: tl.constexpr,
                       BLOCK_T: tl.constexpr, CK_TILES: tl.constexpr, SOFTPLUS: tl.constexpr, VEC: tl.constexpr,
                       FAST: tl.constexpr, IDX: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESET: tl.constexpr):
    # The adjoint each chunk of direction k passes back from a zero end (see summary_tile), for R channel rows:
    # loc (Bsz * K, NCK, CH, NS), dsum (Bsz * K, NCK, CH); dout (Bsz, G, L, CH); C (Bsz, K, NCK, NS, CK) scan order.
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(IDX)
    c = tl.program_id(1)
    bk = tl.program_id(2).to(IDX)
    b = bk // K
    k = bk % K
    A2s, bias, _ = _dir_params(A_ptr, None, bias_ptr, k, rows, CH, NS, False, HAS_BIAS)
    acc = ()
    for _n in tl.static_range(NS):
        acc = acc + (tl.zeros([BLOCK_R], dtype=tl.float32),)
    offs = tl.zeros([BLOCK_R], dtype=tl.float32)
    gb = dout_ptr + (b * G + tl.load(grp_ptr + k)) * L * CH
    db = dl_ptr + b * s_db + k * s_dk
    p_rows = (((b * K + k) * NCK + c) * NS * (CK_TILES * BLOCK_T) + rows * 0)[:, None] + tl.arange(0, BLOCK_T)[None, :]
    o_t = tl.arange(0, BLOCK_T)
    for it in range(CK_TILES):
        t0 = (c * CK_TILES + it) * BLOCK_T
        mask = ((t0 + o_t) < L)[None, :] & (rows >= 0)[:, None]
        rst = None
        if HAS_RESET:
            rst = _step_flags(rst_ptr, k * LP + t0, BLOCK_T, VEC)
        offs_t = _step_offs(ord_ptr, k * LP + t0, rows, unit, CH, BLOCK_T, VEC)
        acc, offs = summary_tile(db, gb, None, offs_t, C_ptr, p_rows + it * BLOCK_T, CK_TILES * BLOCK_T, mask, rst,
                                 A2s, acc, offs, bias, NS, SOFTPLUS, False, HAS_RESET, True, False, FAST, True, L - t0)
    o = (bk * NCK + c) * CH + rows
    for n in tl.static_range(NS):
        tl.store(loc_ptr + o * NS + n, acc[n])
    tl.store(dsum_ptr + o, offs)


@triton.heuristics({**_FLAGS, "HAS_NU": none_flag("nu_ptr")})
@triton.jit(do_not_specialize=["unit", "C0", "zero"])
def _os_bwd_kernel(x_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, ord_ptr, rst_ptr, grp_ptr, dout_ptr, ck_ptr,
                   nu_ptr, dx_ptr, ddl_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, s_db, s_dk, L, LP, CH, K,
                   G, NCK, CPS, NSPLIT, C0, unit, zero, NS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
                   SOFTPLUS: tl.constexpr, MASKED: tl.constexpr, PAIRS: tl.constexpr, VEC: tl.constexpr,
                   FAST: tl.constexpr, IDX: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                   HAS_RESET: tl.constexpr, HAS_NU: tl.constexpr):
    # Program: BLOCK_R chunks C0 + pid0 * BLOCK_R + r of (batch row b, direction k, channel range s); loops over
    # the range's channels. B, C (Bsz, K, NCK, NS, BLOCK_T) chunked scan order; ck, nu (Bsz, K, NCK, CH, NS);
    # dx (Bsz, K, L, CH) per direction in x's dtype, ddelta (Bsz, K, L, CH); dB/dC accumulators
    # (NSPLIT, Bsz, K, NCK, NS, BLOCK_T) fp32, each row in acc_pos order (see acc_add); dA (K, Bsz, NCK, CH, NS),
    # dD and d(delta_bias) (K, Bsz, NCK, CH).
    ch = bwd_chunk_rows(C0, L, BLOCK_R, BLOCK_T, MASKED, IDX)
    pid1 = tl.program_id(1)
    i_s = pid1 % NSPLIT
    k = ((pid1 // NSPLIT) % K).to(IDX)
    b = (pid1 // (NSPLIT * K)).to(IDX)
    Bsz = tl.num_programs(1) // (NSPLIT * K)
    o_t = tl.arange(0, BLOCK_T)
    t0 = ch * BLOCK_T
    first = (o_t == 0)[None, :]
    last = (o_t == BLOCK_T - 1)[None, :]
    mask = None
    if MASKED:
        mask = (t0[:, None] + o_t[None, :]) < L
    lim = (L - t0)[:, None]
    rst = None
    if HAS_RESET:
        rst = _step_flags(rst_ptr, (k * LP + t0)[:, None], BLOCK_T, VEC)
    bk = b * K + k
    bc_rows = ((bk * NCK + ch) * (NS * BLOCK_T))[:, None]
    acc_rows = (((i_s * Bsz + b) * K + k) * NCK + ch)[:, None] * (NS * BLOCK_T)
    xb = x_ptr + b * L * CH
    db = dl_ptr + b * s_db + k * s_dk
    gb = dout_ptr + (b * G + tl.load(grp_ptr + k)) * L * CH
    dxb = dx_ptr + bk * L * CH
    ddb = ddl_ptr + bk * L * CH
    zero_acc_rows(dB_ptr, dC_ptr, acc_rows, NS, BLOCK_R, BLOCK_T)
    c_lo = i_s * CPS
    for dd in range(tl.minimum(CPS, CH - c_lo)):
        c = c_lo + dd
        # `zero` (= 0, not specialised) keeps the B/C and accumulator row addresses inside the loop: hoisted out
        # of it, they are 4 x NS loop-invariant 64-bit pointers that spill
        opaque = tl.multiple_of(dd * zero, 256)
        rows = c + tl.zeros([BLOCK_R], dtype=IDX)
        bias = tl.zeros([BLOCK_R], dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + k * CH + rows).to(tl.float32)
        Dv = tl.zeros([BLOCK_R], dtype=tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + k * CH + rows).to(tl.float32)
        st = ((bk * NCK + ch) * CH + c) * NS
        pa = ((k * Bsz + b) * NCK + ch) * CH + c
        dDv, dbv = bwd_tile(xb, db, None, gb, dxb, ddb, None, _step_offs(ord_ptr, (k * LP + t0)[:, None], rows, unit,
                                                                         CH, BLOCK_T, VEC),
                            B_ptr, C_ptr, bc_rows + opaque, BLOCK_T, dB_ptr, dC_ptr, acc_rows + opaque, BLOCK_T,
                            mask, lim, first, last, rst, A_ptr, (k * CH + rows) * NS, 1,
                            ck_ptr, nu_ptr, dA_ptr, st, pa * NS, bias, Dv, NS, SOFTPLUS, HAS_D, False, HAS_NU,
                            HAS_RESET, MASKED, PAIRS, VEC, FAST, True, True, True, True)
        tl.store(dD_ptr + pa, dDv)
        tl.store(dbias_ptr + pa, dbv)


@triton.jit
def _os_dbc_kernel(src_ptr, ord_ptr, dst_ptr, S, K, NS, L, LP, M, NCK, CK: tl.constexpr, VEC: tl.constexpr,
                   BLOCK: tl.constexpr):
    # dst[b, k, orders[k, j], n] = sum_s src[s, b, k, j // CK, n, acc_pos(j % CK)] (s in order); src rows of M
    # elements, each chunk row in the backward's scratch order (acc_pos)
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    bkn = tl.program_id(1)
    bk = bkn // NS
    n = bkn % NS
    k = bk % K
    m = j < L
    o = ((bk * NCK + j // CK) * NS + n) * CK + acc_pos(j % CK, CK, VEC)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(S):
        acc += tl.load(src_ptr + s * M + o, mask=m, other=0.0)
    nat = tl.load(ord_ptr + k * LP + j, mask=m, other=0)
    tl.store(dst_ptr + (bk * L + nat) * NS + n, acc.to(dst_ptr.dtype.element_ty), mask=m)


# ------------------------------------------------------------------------------------------------------------------
# launchers
# ------------------------------------------------------------------------------------------------------------------

class _Geo:
    """Launch geometry of one call. CK steps (256 on the GPU) are one backward chunk and the forward's checkpoint
    spacing; the forward tile is R channels x BLOCK_T steps over ``fwd_warps`` warps (R = 16: each gathered row a
    full sector); the backward's summary tiles are R_sum channels, one warp."""

    def __init__(self, Bsz: int, K: int, G: int, CH: int, L: int, vec: int, device: torch.device):
        gpu = gpu_geometry()
        self.FAST = fast_paths()  # inline-asm fast paths: compiled kernels only
        self.CK = 256 if gpu else 16
        self.NCK = max(1, cdiv(L, self.CK))
        self.LP = self.NCK * self.CK
        target = 2 * sm_budget(device)
        if gpu:  # as many channels per warp as still fill two waves (fewer shuffle rounds per scan)
            per_warp = next((r for r in (16, 8, 4, 2) if CH % r == 0 and Bsz * G * CH // r >= target), 1)
            # 8-channel warps in pairs: 16-channel programs, each gathered row a whole 32-byte sector, where they
            # still fill a wave (the warps split the channels: every scan stays inside a warp). Not 4 or 8 warps of
            # 4 or 2 channels: at the windows' headline shape so few programs would leave SMs idle.
            self.fwd_warps = 2 if per_warp == 8 and CH % 16 == 0 and Bsz * G * CH // 16 >= target / 2 else 1
            self.R = per_warp * self.fwd_warps
            self.R_sum = per_warp
            self.BLOCK_T = vec * 32 // per_warp
        else:
            self.R, self.BLOCK_T = divisor(CH), self.CK
            self.R_sum, self.fwd_warps = self.R, 1
        self.CK_TILES = self.CK // self.BLOCK_T
        self.nfull = L // self.CK
        self.Rb = 1 if gpu else next_pow2(max(self.nfull, 1))  # interpreter: every full chunk in one program
        # one warp per backward program: 8 steps per thread, every scan and reduction inside the warp (two warps
        # cost a shared-memory exchange and barriers per scan, state and channel: ~1.9x the issued instructions)
        self.bwd_warps = 1
        base = Bsz * K * self.NCK
        forced = current_config().bwd_splits  # a test-only knob (kernels._utils.launch_config)
        if forced is not None:
            splits = forced
        elif gpu:  # channel ranges per (batch row, direction, chunk): the busiest SM's least issue time
            splits = min(range(1, min(8, CH) + 1), key=lambda s: (busiest_sm(base * s, sm_budget(device)) / s, s))
        else:
            splits = 1
        self.cps = cdiv(CH, max(1, min(splits, CH)))
        self.splits = cdiv(CH, self.cps)


_TABLES: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _tables(orders: torch.Tensor, reset: torch.Tensor | None, groups: tuple[int, ...], LP: int):
    """Per call constants, cached per ``orders`` tensor (and version): orders as int32 (int64 where L x C could
    pass 2**31 is not needed: offsets are formed in the kernels) padded with 0 to LP, reset as int8 padded with 0,
    the chunk reset flags, the directions of each group (CSR) and the identity inverse for the direction sums."""
    key = (orders._version, None if reset is None else (id(reset), reset._version), groups, LP)
    hit = _TABLES.get(orders)
    if hit is not None and hit[0] == key:
        return hit[1]
    K, L = orders.shape
    with table_mode():  # cached: never an inference or fake tensor
        o32 = torch.zeros(K, LP, dtype=torch.int32, device=orders.device)
        o32[:, :L] = orders
        r8 = None
        if reset is not None:
            r8 = torch.zeros(K, LP, dtype=torch.int8, device=orders.device)
            r8[:, :L] = reset
        _, members, gptr = _group_tables(groups, orders.device)
        ident = torch.arange(L, device=orders.device).expand(K, L).contiguous()
        val = dict(o32=o32, r8=r8, members=members, gptr=gptr, ident=ident,
                   grp=torch.tensor(groups, dtype=torch.int32, device=orders.device))
    _TABLES[orders] = (key, val)
    return val


def _scan_order(B: torch.Tensor, o32: torch.Tensor, NCK: int, CK: int) -> torch.Tensor:
    """B ``(Bsz, K, L, N)`` natural order -> ``(Bsz, K, NCK, N, CK)``: each direction's scan order in chunks of CK
    steps, state rows next to each other (one gather; padded steps read row 0: their dt is 0)."""
    Bsz, K, L, N = B.shape
    src = B.transpose(2, 3)[:, :, None].expand(Bsz, K, NCK, N, L)
    idx = o32.long().view(K, NCK, 1, CK).expand(Bsz, K, NCK, N, CK)
    return torch.gather(src, 4, idx)


def _fwd(x, delta, A, Bs, Cs, D, delta_bias, tabs, groups, softplus: bool, save: bool, geo: _Geo):
    Bsz, L, CH = x.shape
    K, NS = A.shape[0], A.shape[2]
    G = max(groups) + 1
    out = torch.empty(Bsz, G, L, CH, dtype=x.dtype, device=x.device)
    ck = torch.empty(Bsz, K, geo.NCK, CH, NS, dtype=torch.float32, device=x.device) if save else None
    with device_guard(x):
        _os_fwd_kernel[(CH // geo.R, G, Bsz)](
            x_ptr=x, dl_ptr=delta, A_ptr=A, B_ptr=Bs, C_ptr=Cs, D_ptr=D, bias_ptr=delta_bias, ord_ptr=tabs["o32"],
            rst_ptr=tabs["r8"], mem_ptr=tabs["members"], gptr_ptr=tabs["gptr"], out_ptr=out, ck_ptr=ck,
            s_db=delta.stride(0), s_dk=delta.stride(1), L=L, LP=geo.LP, CH=CH, K=K, G=G, NCK=geo.NCK, unit=1,
            NS=NS, BLOCK_R=geo.R, BLOCK_T=geo.BLOCK_T, CK_TILES=geo.CK_TILES, SOFTPLUS=softplus,
            ACCUM=len(groups) > G, PAIRS=pairs_ok(Bs, Cs), VEC=vec_of(x), FAST=geo.FAST, IDX=index_type(x, delta, out),
            num_warps=geo.fwd_warps)
    return out, ck


def _bwd(dout, x, delta, A, Bs, Cs, D, delta_bias, tabs, groups, ck, softplus: bool, geo: _Geo):
    Bsz, L, CH = x.shape
    K, NS = A.shape[0], A.shape[2]
    G = dout.shape[1]
    f32 = dict(dtype=torch.float32, device=x.device)
    dout = dout.contiguous()
    dxk = torch.empty(Bsz, K, L, CH, dtype=x.dtype, device=x.device)
    ddelta = torch.empty(Bsz, K, L, CH, dtype=delta.dtype, device=x.device)
    dBs = torch.empty(geo.splits, Bsz, K, geo.NCK, NS, geo.CK, **f32)
    dCs = torch.empty_like(dBs)
    dAp = torch.empty(K, Bsz, geo.NCK, CH, NS, **f32)
    dDp = torch.empty(K, Bsz, geo.NCK, CH, **f32)
    dbp = torch.empty_like(dDp)
    common = dict(dl_ptr=delta, A_ptr=A, bias_ptr=delta_bias, ord_ptr=tabs["o32"], rst_ptr=tabs["r8"],
                  grp_ptr=tabs["grp"], s_db=delta.stride(0), s_dk=delta.stride(1), L=L, LP=geo.LP, CH=CH, K=K, G=G,
                  NCK=geo.NCK, unit=1, NS=NS, SOFTPLUS=softplus, VEC=vec_of(x), FAST=geo.FAST,
                  IDX=index_type(x, dxk, dBs, dAp))
    with device_guard(x):
        nu = None
        if geo.NCK > 1:  # the adjoint each chunk receives from the chunks after it
            loc = torch.empty(Bsz * K, geo.NCK, CH, NS, **f32)
            dsum = torch.empty(Bsz * K, geo.NCK, CH, **f32)
            _os_summary_kernel[(CH // geo.R_sum, geo.NCK, Bsz * K)](
                dout_ptr=dout, C_ptr=Cs, loc_ptr=loc, dsum_ptr=dsum, BLOCK_R=geo.R_sum, BLOCK_T=geo.BLOCK_T,
                CK_TILES=geo.CK_TILES, num_warps=1, **common)
            crst = None
            if tabs["r8"] is not None:  # a chunk holding a reset passes nothing on
                crst = tabs["r8"].view(K, geo.NCK, geo.CK).any(-1).to(torch.int8)
            nu = torch.empty_like(loc)
            _scan_carry_kernel[(cdiv(CH * NS, 256), Bsz * K)](
                loc_ptr=loc, dsum_ptr=dsum, rst_ptr=crst, A_ptr=A, init_ptr=None, out_ptr=nu, NCHUNK=geo.NCK,
                ROWS=CH, NS=NS, s_Ar=NS, s_An=1, DIRS=K, BLOCK=256, REVERSE=True, HAS_RESET=crst is not None,
                HAS_INIT=False)
        main = dict(x_ptr=x, B_ptr=Bs, C_ptr=Cs, D_ptr=D, dout_ptr=dout, ck_ptr=ck, nu_ptr=nu, dx_ptr=dxk,
                    ddl_ptr=ddelta, dB_ptr=dBs, dC_ptr=dCs, dA_ptr=dAp, dD_ptr=dDp, dbias_ptr=dbp, CPS=geo.cps, zero=0,
                    NSPLIT=geo.splits, BLOCK_T=geo.CK, PAIRS=pairs_ok(Bs, Cs), num_warps=geo.bwd_warps,
                    **common)
        progs = Bsz * K * geo.splits
        if geo.nfull:
            _os_bwd_kernel[(cdiv(geo.nfull, geo.Rb), progs)](C0=0, BLOCK_R=geo.Rb, MASKED=False, **main)
        if geo.nfull < geo.NCK:  # the last, partial chunk
            _os_bwd_kernel[(1, progs)](C0=geo.nfull, BLOCK_R=1, MASKED=True, **main)
        dB = torch.empty(Bsz, K, L, NS, dtype=Bs.dtype, device=x.device)
        dC = torch.empty_like(dB)
        block = 1024 if gpu_geometry() else 256
        for src, dst in ((dBs, dB), (dCs, dC)):
            _os_dbc_kernel[(cdiv(L, block), Bsz * K * NS)](
                src_ptr=src, ord_ptr=tabs["o32"], dst_ptr=dst, S=geo.splits, K=K, NS=NS, L=L, LP=geo.LP,
                M=src[0].numel(), NCK=geo.NCK, CK=geo.CK, VEC=vec_of(x), BLOCK=block)
        dA = sum_leading(dAp, torch.empty(K, CH, NS, **f32), batches=K)
        dD = sum_leading(dDp, torch.empty(K, CH, **f32), batches=K) if D is not None else None
        dbias = sum_leading(dbp, torch.empty(K, CH, **f32), batches=K) if delta_bias is not None else None
        # dx: the directions' terms summed in a fixed order (owner-computes merge, fp32 accumulation)
        dx = st_merge(dxk, tabs["ident"], (0,) * K)[:, 0]
    return dx, ddelta, dA, dB, dC, dD, dbias


# ---- custom ops: opaque to torch.compile (dynamo traces OrderedScanFunction and keeps these as graph nodes)


def _geo(x: torch.Tensor, K: int, groups) -> _Geo:
    Bsz, L, CH = x.shape
    return _Geo(Bsz, K, max(groups) + 1, CH, L, vec_of(x), x.device)


@torch.library.custom_op("glsmamba::ordered_scan_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: torch.Tensor | None, delta_bias: torch.Tensor | None, orders: torch.Tensor, reset: torch.Tensor | None,
            groups: list[int], softplus: bool, save: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                    torch.Tensor]:
    geo = _geo(x, A.shape[0], groups)
    tabs = _tables(orders, reset, tuple(groups), geo.LP)
    Bs, Cs = _scan_order(B, tabs["o32"], geo.NCK, geo.CK), _scan_order(C, tabs["o32"], geo.NCK, geo.CK)
    out, ck = _fwd(x, delta, A, Bs, Cs, D, delta_bias, tabs, groups, softplus, save, geo)
    def empty():  # (outputs must not alias each other)
        return x.new_empty(0, dtype=torch.float32)

    return out, ck if ck is not None else empty(), Bs if save else empty(), Cs if save else empty()


@_fwd_op.register_fake
def _(x, delta, A, B, C, D, delta_bias, orders, reset, groups, softplus, save):
    Bsz, L, CH = x.shape
    K, NS = A.shape[0], A.shape[2]
    geo = _geo(x, K, groups)
    f32 = dict(dtype=torch.float32)
    if not save:
        return (x.new_empty(Bsz, max(groups) + 1, L, CH), x.new_empty(0, **f32), x.new_empty(0, **f32),
                x.new_empty(0, **f32))
    bs = B.new_empty(Bsz, K, geo.NCK, NS, geo.CK)
    return (x.new_empty(Bsz, max(groups) + 1, L, CH), x.new_empty(Bsz, K, geo.NCK, CH, NS, **f32), bs,
            torch.empty_like(bs))


@torch.library.custom_op("glsmamba::ordered_scan_bwd", mutates_args=())
def _bwd_op(dout: torch.Tensor, x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor,
            Cs: torch.Tensor, D: torch.Tensor | None, delta_bias: torch.Tensor | None, orders: torch.Tensor,
            reset: torch.Tensor | None, groups: list[int], ck: torch.Tensor, softplus: bool) -> list[torch.Tensor]:
    geo = _geo(x, A.shape[0], groups)
    tabs = _tables(orders, reset, tuple(groups), geo.LP)
    grads = _bwd(dout, x, delta, A, Bs, Cs, D, delta_bias, tabs, groups, ck, softplus, geo)
    # absent optional gradients travel as empty 1-D tensors (a custom op returns tensors only)
    return [x.new_empty(0) if g is None else g for g in grads]


@_bwd_op.register_fake
def _(dout, x, delta, A, Bs, Cs, D, delta_bias, orders, reset, groups, ck, softplus):
    Bsz, L, CH = x.shape
    K, NS = A.shape[0], A.shape[2]
    f32 = dict(dtype=torch.float32)

    def opt(t, *shape):
        return x.new_empty(0) if t is None else x.new_empty(*shape, **f32)

    return [x.new_empty(Bsz, L, CH), delta.new_empty(Bsz, K, L, CH), A.new_empty(K, CH, NS),
            Bs.new_empty(Bsz, K, L, NS), Cs.new_empty(Bsz, K, L, NS), opt(D, K, CH), opt(delta_bias, K, CH)]


class OrderedScanFunction(torch.autograd.Function):
    """Forward and backward are the Triton kernels above (no autograd through a reference)."""

    @staticmethod
    def forward(ctx, x, delta, A, B, C, D, delta_bias, orders, reset, groups, softplus):
        need_grad = any(ctx.needs_input_grad[:7])
        out, ck, Bs, Cs = _fwd_op(x, delta, A, B, C, D, delta_bias, orders, reset, list(groups), softplus,
                                  need_grad)
        ctx.save_for_backward(x, delta, A, Bs, Cs, D, delta_bias, orders, reset, ck)
        ctx.flags = (list(groups), softplus, B.dtype, C.dtype)
        return out

    @staticmethod
    def backward(ctx, dout):
        x, delta, A, Bs, Cs, D, delta_bias, orders, reset, ck = ctx.saved_tensors
        groups, softplus, b_dtype, c_dtype = ctx.flags
        grads = _bwd_op(dout, x, delta, A, Bs, Cs, D, delta_bias, orders, reset, groups, ck, softplus)
        dx, ddelta, dA, dB, dC, dD, dbias = grads
        grads = [dx, ddelta, dA, dB.to(b_dtype), dC.to(c_dtype), None if D is None else dD.to(D.dtype),
                 None if delta_bias is None else dbias.to(delta_bias.dtype)]
        grads = [None if not need else g for g, need in zip(grads, ctx.needs_input_grad[:7], strict=True)]
        return (*grads, None, None, None, None)


# ------------------------------------------------------------------------------------------------------------------
# public
# ------------------------------------------------------------------------------------------------------------------


def ordered_selective_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           C: torch.Tensor, D: torch.Tensor | None, orders: torch.Tensor, groups: Sequence[int],
                           reset: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                           delta_softplus: bool = True) -> torch.Tensor:
    """Direction-aware selective scan (Triton): each order read in place, natural-order output summed per group.

    Args:
        x: ``[Bsz, L, C]`` natural-order input, shared by all directions.
        delta: ``[Bsz, K, L, C]`` natural-order time steps per direction (before bias / softplus). delta may have
            any batch / direction strides (a view expanded over K is read in place, not copied K times); rows
            that are not contiguous are copied.
        A: ``[K, C, N]`` (float32 inside).
        B: ``[Bsz, K, L, N]`` natural order.
        C: ``[Bsz, K, L, N]`` natural order (B and C are gathered into each direction's scan order once per call).
        D: ``[K, C]`` skip per direction, or None.
        orders: ``[K, L]`` int64 permutations (``orders[k, j]`` = natural index read at step j).
        groups: K ints: output group of each direction (G = max + 1, every id used).
        reset: ``[K, L]`` bool or None: the state is zeroed before step j where ``reset[k, j]``.
        delta_bias: ``[K, C]`` or None.
        delta_softplus: softplus (threshold 20) on ``delta + delta_bias``.

    Returns:
        ``[Bsz, G, L, C]`` in x's dtype; equal to ``space_time_scan -> selective_scan -> space_time_merge``.
        Backward: recomputation from state checkpoints every 256 steps, deterministic (no atomics).
    """
    # the only input check of a call: the launchers trust what passes here
    dims, _ = _check_ordered_scan(x, delta, A, B, C, D, orders, groups, reset, delta_bias)
    check_runnable(x, delta, A, B, C, D, delta_bias, orders, op="ordered_selective_scan")
    x = x.contiguous()
    delta = _rows_contiguous(delta)
    A = A.float().contiguous()
    D = None if D is None else D.contiguous()
    delta_bias = None if delta_bias is None else delta_bias.contiguous()
    return OrderedScanFunction.apply(x, delta, A, B, C, D, delta_bias, orders, reset, dims.groups,
                                     bool(delta_softplus))


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    """t itself when its last two dims (L, C) are contiguous rows, whatever its batch/direction strides (a view
    expanded over the directions stays a view: no K copies); a contiguous copy otherwise."""
    if t.stride(-1) == 1 and (t.shape[-2] == 1 or t.stride(-2) == t.shape[-1]):
        return t
    return t.contiguous()
