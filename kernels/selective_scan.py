"""Selective scan (Mamba-1 S6) in Triton, forward and backward. Same contract as ``reference/selective_scan.py``.

    dt_l = softplus(delta_l + bias);  h_l = exp(dt_l A) h_{l-1} + dt_l u_l B_l;  y_l = C_l . h_l + D u_l;
    out_l = y_l silu(z_l)

The loop body is ``kernels/_scan_common.py`` (tiles of R rows x BLOCK_T steps, a static loop over the state index,
one ``tl.associative_scan`` per state index, all state math in float32, exp2 with A pre-scaled by log2 e).

Forward: a program owns (batch row, R channels) and walks the whole sequence tile by tile, the state in
registers, reading every input once. Only when batch x channel programs cannot fill two waves of the GPU is the
sequence cut into chunks: a summary kernel computes each chunk's end state from a zero start (a sum weighted by
``exp2(A cumsum dt)``, no scan), a short sequential kernel chains them, and the main kernel runs every chunk from
its true start. With a gradient to come, the state at every tile start (every BLOCK_T = 256 tokens on the GPU)
is stored for the backward.

Backward (one chunk = one forward tile): a summary kernel computes the adjoint each chunk passes back to the
previous one from a zero end, a sequential kernel chains them (from ``d last_state``), and the main kernel's
program owns (batch row, B/C group, chunk) and loops over the channels of the group (or of one of S channel
ranges when there are few chunks): per channel it recomputes h from the checkpoint, runs the adjoint as a
reverse scan and writes du, ddelta, dz; dB and dC are summed over the channels in that loop, in registers and
an fp32 accumulator the program owns; dA, dD and d(delta_bias) per (chunk, channel) and the S channel-range
partials of dB/dC are summed by a second kernel in a fixed order. Deterministic, bit-identical on repeat runs,
no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glsmamba.kernels._scan_common import (
    LOG2E,
    _scan_carry_kernel,
    bwd_chunk_rows,
    bwd_tile,
    chunked,
    divisor,
    fwd_tile,
    index_type,
    none_flag,
    pairs_ok,
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
from glsmamba.reference.checks import check_selective_scan_inputs

record_build()  # Triton decorates the kernels below in the mode TRITON_INTERPRET names now

__all__ = ["selective_scan", "selective_scan_channel_last"]


_FLAGS = {"HAS_D": none_flag("D_ptr"), "HAS_Z": none_flag("z_ptr"), "HAS_BIAS": none_flag("bias_ptr")}


@triton.jit
def _rows_setup(A_ptr, D_ptr, bias_ptr, s_Ad, s_An, NS: tl.constexpr, BLOCK_R: tl.constexpr, IDX: tl.constexpr,
                HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    """A forward or summary program's rows (BLOCK_R channels), chunk and batch row, and the rows' parameters:
    A's columns pre-scaled by log2 e (N ``[R]`` tensors), delta_bias and D (zeros if absent)."""
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(IDX)
    A2s = ()
    for n in tl.static_range(NS):
        A2s = A2s + (tl.load(A_ptr + rows * s_Ad + n * s_An).to(tl.float32) * LOG2E,)
    bias = tl.zeros(rows.shape, dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + rows).to(tl.float32)
    Dv = tl.zeros(rows.shape, dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + rows).to(tl.float32)
    return rows, tl.program_id(1), tl.program_id(2).to(IDX), A2s, bias, Dv


@triton.jit
def _offsets(rows, t, s_d, s_l, unit, CHANNEL_LAST: tl.constexpr):
    """``[R, T]`` element offsets of (channel rows, steps t) in a u-like tensor. Channel-last rows are scaled by
    the unspecialised ``unit`` (= 1) so that no load is vectorised across channels: a thread keeps its steps."""
    if CHANNEL_LAST:
        off = (rows * unit)[:, None] + (t * s_l)[None, :]
    else:
        off = (rows * s_d)[:, None] + t[None, :]
    return off


@triton.jit
def _chunk_offs(base, d, t0, s_d, s_l, unit, T: tl.constexpr, VEC: tl.constexpr, CHANNEL_LAST: tl.constexpr):
    """Offsets of channel d over rows of steps ``t0[r] + j`` (j < T) in a u-like tensor: one ``[R, T]`` tile, or
    (channel-last) VEC sub-tiles of steps ``j * VEC + k`` (see ``_scan_common.join_steps``)."""
    if CHANNEL_LAST:
        j = tl.arange(0, T // VEC)
        off = ()
        for k in tl.static_range(VEC):
            off = off + (base + d * unit + (t0[:, None] + (k + j * VEC)[None, :]) * s_l,)
    else:
        off = base + d * s_d + t0[:, None] + tl.arange(0, T)[None, :]
    return off


@triton.jit
def _tile_offs(base, rows, t0, s_d, s_l, unit, T: tl.constexpr, VEC: tl.constexpr, CHANNEL_LAST: tl.constexpr):
    """Offsets of a ``[R, T]`` tile of a u-like tensor (channel rows, steps t0 ..): one tile (channel-first,
    contiguous steps), or VEC sub-tiles of steps ``t0 + j * VEC + k`` (channel-last: the rows' channels are
    scaled by the unspecialised ``unit`` = 1, so no load is vectorised across channels)."""
    if CHANNEL_LAST:
        j = tl.arange(0, T // VEC)
        off = ()
        for k in tl.static_range(VEC):
            off = off + (base + (rows * unit)[:, None] + ((t0 + k + j * VEC) * s_l)[None, :],)
    else:
        off = base + (rows * s_d)[:, None] + (t0 + tl.arange(0, T))[None, :]
    return off


@triton.heuristics({**_FLAGS, "HAS_HIN": none_flag("hin_ptr"), "SAVE": none_flag("ck_ptr")})
@triton.jit(do_not_specialize=["unit", "T0", "NT"])
def _ss_fwd_kernel(u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr, hin_ptr, hend_ptr, ck_ptr,
                   s_b, s_d, s_l, s_Bb, s_Bg, s_Bn, s_Ad, s_An, L, DIM, GROUP_SIZE, T0, NT, TILES, NCHUNK, unit,
                   NS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr, CK_TILES: tl.constexpr,
                   SOFTPLUS: tl.constexpr, CHANNEL_LAST: tl.constexpr, MASKED: tl.constexpr, PAIRS: tl.constexpr,
                   VEC: tl.constexpr, FAST: tl.constexpr, IDX: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
                   HAS_HIN: tl.constexpr, SAVE: tl.constexpr):
    # u, delta, z, out: (batch, D, L) or (batch, L, D) with strides s_*; B, C: (batch, G, N, L), L contiguous.
    # The launch covers tiles T0 .. T0 + NT - 1 in chunks of TILES (chunk c starts at a multiple of CK_TILES
    # tiles); MASKED launches hold the sequence's last, partial tile. hin (batch, NCHUNK, D, N) fp32: the state
    # entering each chunk; hend (batch, D, N): the state after the launch's last tile; ck (batch, n_ck, D, N):
    # the state entering every CK_TILES-th tile. Rows: BLOCK_R channels (BLOCK_R divides D).
    rows, i_c, i_b, A2s, bias, Dv = _rows_setup(A_ptr, D_ptr, bias_ptr, s_Ad, s_An, NS, BLOCK_R, IDX, HAS_D, HAS_BIAS)
    hs = ()
    for n in tl.static_range(NS):
        if HAS_HIN:
            hs = hs + (tl.load(hin_ptr + ((i_b * NCHUNK + i_c) * DIM + rows) * NS + n),)
        else:
            hs = hs + (tl.zeros([BLOCK_R], dtype=tl.float32),)
    tile0 = T0 + i_c * TILES
    ntile = tl.minimum(TILES, T0 + NT - tile0)
    base = i_b * s_b
    bc_rows = (i_b * s_Bb + (rows // GROUP_SIZE) * s_Bg)[:, None]
    o_t = tl.arange(0, BLOCK_T)
    first = (o_t == 0)[None, :]
    last = (o_t == BLOCK_T - 1)[None, :]
    o_ck = ((i_b * tl.cdiv(tl.cdiv(L, BLOCK_T), CK_TILES) + tile0 // CK_TILES) * DIM + rows) * NS
    for it in range(ntile):
        t0 = (tile0 + it) * BLOCK_T
        mask = None
        if MASKED:
            mask = ((t0 + o_t) < L)[None, :] & (rows >= 0)[:, None]
        if SAVE:
            ck_here = (rows * 0 + tile0 + it) % CK_TILES == 0
            for n in tl.static_range(NS):
                tl.store(ck_ptr + o_ck + n, hs[n], mask=ck_here)
            o_ck += tl.where(ck_here, DIM * NS, 0)
        hs = fwd_tile(u_ptr, dl_ptr, z_ptr, out_ptr,
                      _tile_offs(base, rows, t0, s_d, s_l, unit, BLOCK_T, VEC, CHANNEL_LAST),
                      B_ptr, C_ptr, bc_rows + t0, bc_rows + t0, L - t0, s_Bn, s_Bn, mask, first, last, None, A2s,
                      hs, bias, Dv, NS, SOFTPLUS, HAS_D, HAS_Z, False, MASKED, False, PAIRS, FAST, CHANNEL_LAST)
    if i_c == NCHUNK - 1:
        for n in tl.static_range(NS):
            tl.store(hend_ptr + (i_b * DIM + rows) * NS + n, hs[n])


@triton.heuristics({"HAS_Z": none_flag("z_ptr"), "HAS_BIAS": none_flag("bias_ptr")})
@triton.jit(do_not_specialize=["unit"])
def _ss_summary_kernel(u_ptr, dl_ptr, A_ptr, P_ptr, z_ptr, bias_ptr, loc_ptr, dsum_ptr,
                       s_b, s_d, s_l, s_Pb, s_Pg, s_Pn, s_Ad, s_An, L, DIM, GROUP_SIZE, TILES, NCHUNK, unit,
                       NS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr, SOFTPLUS: tl.constexpr,
                       CHANNEL_LAST: tl.constexpr, FORWARD: tl.constexpr, FAST: tl.constexpr, IDX: tl.constexpr,
                       HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr):
    # Chunk summaries (see summary_tile): FORWARD: u_ptr = u, P = B; backward: u_ptr = dout, z gates it, P = C.
    # loc (batch, NCHUNK, D, N), dsum (batch, NCHUNK, D).
    rows, i_c, i_b, A2s, bias, _ = _rows_setup(A_ptr, None, bias_ptr, s_Ad, s_An, NS, BLOCK_R, IDX, False, HAS_BIAS)
    acc = ()
    for _n in tl.static_range(NS):
        acc = acc + (tl.zeros([BLOCK_R], dtype=tl.float32),)
    offs = tl.zeros([BLOCK_R], dtype=tl.float32)
    base = i_b * s_b
    pc = (i_b * s_Pb + (rows // GROUP_SIZE) * s_Pg)[:, None]
    o_t = tl.arange(0, BLOCK_T)
    for it in range(TILES):
        t = (i_c * TILES + it) * BLOCK_T + o_t
        mask = (t < L)[None, :] & (rows >= 0)[:, None]
        off = base + _offsets(rows, t, s_d, s_l, unit, CHANNEL_LAST)
        acc, offs = summary_tile(dl_ptr, u_ptr, z_ptr, off, P_ptr, pc + t[None, :], s_Pn, mask, None, A2s, acc,
                                 offs, bias, NS, SOFTPLUS, HAS_Z, False, True, FORWARD, FAST)
    o = ((i_b * NCHUNK + i_c) * DIM + rows)
    for n in tl.static_range(NS):
        tl.store(loc_ptr + o * NS + n, acc[n])
    tl.store(dsum_ptr + o, offs)


@triton.heuristics({**_FLAGS, "HAS_NU": none_flag("nu_ptr")})
@triton.jit(do_not_specialize=["unit", "C0"])
def _ss_bwd_kernel(u_ptr, dl_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, ck_ptr, nu_ptr,
                   du_ptr, ddl_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr,
                   s_b, s_d, s_l, s_Bb, s_Bg, s_Ad, s_An, L, DIM, GROUP_SIZE, CPS, NSPLIT, GROUPS, NCK, C0,
                   unit, NS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
                   SOFTPLUS: tl.constexpr, CHANNEL_LAST: tl.constexpr, MASKED: tl.constexpr, PAIRS: tl.constexpr,
                   VEC: tl.constexpr, FAST: tl.constexpr, IDX: tl.constexpr, HAS_D: tl.constexpr,
                   HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_NU: tl.constexpr):
    # Program: BLOCK_R chunks (rows) C0 + pid0 * BLOCK_R + r of batch row b, group g, channel range s; loops over
    # the range's channels. ck, nu (batch, NCK, D, N): state entering / adjoint entering each chunk; du, ddelta,
    # dz laid out as u; dB/dC fp32 accumulators (NSPLIT, batch, G, N, L); dA (batch, NCK, D, N), dD and
    # d(delta_bias) (batch, NCK, D) per (chunk, channel).
    ch = bwd_chunk_rows(C0, L, BLOCK_R, BLOCK_T, MASKED, IDX)
    pid1 = tl.program_id(1)
    i_s = pid1 % NSPLIT
    i_g = (pid1 // NSPLIT) % GROUPS
    i_b = (pid1 // (NSPLIT * GROUPS)).to(IDX)
    o_t = tl.arange(0, BLOCK_T)
    t0 = ch * BLOCK_T  # [R]
    first = (o_t == 0)[None, :]
    last = (o_t == BLOCK_T - 1)[None, :]
    mask = None
    if MASKED:
        mask = (t0[:, None] + o_t[None, :]) < L
    lim = (L - t0)[:, None]  # valid steps of each row (all of them outside the masked launch)
    base = i_b * s_b
    # B, C: (batch, G, NCK, N, BLOCK_T) chunked copies; dB/dC accumulators (NSPLIT, batch, G, NCK, N, BLOCK_T):
    # state n of a chunk is BLOCK_T elements after state n - 1 (an immediate offset, no register per state)
    bc_rows = (i_b * s_Bb + i_g * s_Bg + ch * (NS * BLOCK_T))[:, None]
    acc_rows = ((((i_s * (tl.num_programs(1) // NSPLIT) + i_b * GROUPS + i_g) * NCK).to(IDX) + ch) *
                (NS * BLOCK_T))[:, None]
    zero_acc_rows(dB_ptr, dC_ptr, acc_rows, NS, BLOCK_R, BLOCK_T)
    c_lo = i_s * CPS
    nch = tl.minimum(CPS, GROUP_SIZE - c_lo)
    for dd in range(nch):
        d = i_g * GROUP_SIZE + c_lo + dd
        rows = d + tl.zeros([BLOCK_R], dtype=IDX)
        bias = tl.zeros([BLOCK_R], dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + rows).to(tl.float32)
        Dv = tl.zeros([BLOCK_R], dtype=tl.float32)
        if HAS_D:
            Dv = tl.load(D_ptr + rows).to(tl.float32)
        o_st = ((i_b * NCK + ch) * DIM + d) * NS
        o_p = (i_b * NCK + ch) * DIM + d
        dDv, dbv = bwd_tile(
            u_ptr, dl_ptr, z_ptr, dout_ptr, du_ptr, ddl_ptr, dz_ptr,
            _chunk_offs(base, d, t0, s_d, s_l, unit, BLOCK_T, VEC, CHANNEL_LAST), B_ptr, C_ptr, bc_rows,
            BLOCK_T, dB_ptr, dC_ptr, acc_rows, BLOCK_T, mask, lim, first, last, None, A_ptr, rows * s_Ad, s_An,
            ck_ptr, nu_ptr, dA_ptr, o_st, o_st, bias, Dv, NS, SOFTPLUS, HAS_D,
            HAS_Z, HAS_NU, False, MASKED, PAIRS, VEC, FAST, CHANNEL_LAST)
        tl.store(dD_ptr + o_p, dDv)
        tl.store(dbias_ptr + o_p, dbv)


@triton.jit
def _unchunk_kernel(src_ptr, dst_ptr, S, NS, L, M, NCK, CK: tl.constexpr, BLOCK: tl.constexpr):
    # dst[r, n, t] = sum_s src[s, r, t // CK, n, t % CK] (s = 0, 1, ... in order); src rows of M elements
    t = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    rn = tl.program_id(1)
    r = rn // NS
    n = rn % NS
    m = t < L
    o = ((r * NCK + t // CK) * NS + n) * CK + t % CK
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(S):
        acc += tl.load(src_ptr + s * M + o, mask=m, other=0.0)
    tl.store(dst_ptr + rn * L + t, acc.to(dst_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------------------------------------------
# launchers
#
# No maxnreg on any launch: capped at 128 registers, ptxas spilled (8-12 bytes in the forward, 12 in the
# backward, at the headline shapes of the sm_90 report), where uncapped it allocates 85-96 and 144 without a spill.

class _Geo:
    """Launch geometry of one call. CK steps (256 on the GPU) are one backward chunk and the forward's
    checkpoint spacing; the forward tile is CK / CK_TILES steps."""

    def __init__(self, batch: int, dim: int, length: int, dstate: int, groups: int, device: torch.device):
        gpu = gpu_geometry()
        knobs = current_config()  # test-only knobs (kernels._utils.launch_config)
        self.FAST = fast_paths()  # inline-asm fast paths: compiled kernels only
        self.NS = dstate
        self.CK = 256 if gpu else 16
        self.n_ck = max(1, cdiv(length, self.CK))
        self.group_size = dim // groups
        sms = sm_budget(device)
        target = 2 * sms  # programs that fill two waves
        # forward: one warp per program holding R rows x BLOCK_T steps (R x BLOCK_T = 256 elements a step, so a
        # program's instructions grow with R). An SM issues from 4 schedulers, one warp each per clock: with fewer
        # than 4 resident one-warp programs some stay idle. So R minimises the busiest SM's issue time,
        # ceil(P / SMs) x R / min(4, ceil(P / SMs)) for P = batch x dim / R programs; on a tie the larger R
        # (fewer shuffle rounds per scan). Chunks only when even one row per program cannot fill the GPU.
        if gpu:
            fits = [(t, r) for t, r in ((64, 4), (128, 2), (256, 1)) if dim % r == 0]
            self.BLOCK_T, self.R = min(fits, key=lambda tr: (tr[1] * busiest_sm(batch * dim // tr[1], sms), -tr[1]))
        else:
            self.BLOCK_T, self.R = knobs.fwd_tile or self.CK, divisor(dim)
        self.CK_TILES = self.CK // self.BLOCK_T
        self.n_tiles = max(1, cdiv(length, self.BLOCK_T))
        tiles = self.n_tiles
        if knobs.tiles_per_chunk is not None:
            tiles = knobs.tiles_per_chunk
        elif gpu and 0 < batch * dim // self.R < target:  # (an empty batch: no programs, no chunks)
            tiles = max(1, cdiv(self.n_tiles, cdiv(target, batch * dim // self.R)))
        self.tiles = cdiv(max(1, min(tiles, self.n_tiles)), self.CK_TILES) * self.CK_TILES
        # backward: programs own (batch row, group, channel range, Rb chunk rows); one warp per chunk row
        self.nfull = length // self.CK
        self.Rb = 1 if gpu else next_pow2(max(self.nfull, 1))  # interpreter: every full chunk in one program
        # two warps per chunk row on the GPU: one warp (8 steps per thread) needs ~136 registers in the backward
        self.bwd_warps = 2 if gpu else 1
        base = batch * groups * self.n_ck
        splits = knobs.bwd_splits if knobs.bwd_splits is not None else (
            min(8, self.group_size, cdiv(target, base)) if gpu and 0 < base < target else 1)
        self.splits = max(1, min(splits, self.group_size))
        self.cps = cdiv(self.group_size, self.splits)
        self.splits = cdiv(self.group_size, self.cps)


def _bgnl(B: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """B/C as (batch, G, N, L) with contiguous steps (channel-last layouts are transposed: one copy)."""
    if channel_last:
        B = B if B.dim() == 4 else B[:, :, None]
        return B.permute(0, 2, 3, 1).contiguous()
    B = B if B.dim() == 4 else B[:, None]
    return B if B.stride(-1) == 1 else B.contiguous()


def _from_bgnl(g: torch.Tensor, like: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """A (batch, G, N, L) gradient in the layout of the B/C argument ``like``."""
    if channel_last:
        g = g.permute(0, 3, 1, 2)  # (batch, L, G, N)
        g = g[:, :, 0] if like.dim() == 3 else g
        return g.contiguous()
    return g[:, 0] if like.dim() == 3 else g


def _strides(u: torch.Tensor, channel_last: bool) -> dict:
    s_b, s_1, s_2 = u.stride()
    return dict(s_b=s_b, s_d=s_2 if channel_last else s_1, s_l=s_1 if channel_last else s_2)


def _unchunk(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """dst (batch, G, N, L) = the sum over the leading dim of src (S, batch, G, n_ck, N, ck), in a fixed order."""
    S, rows, nck, dstate, ck = src.shape[0], src.shape[1] * src.shape[2], src.shape[3], src.shape[4], src.shape[5]
    length = dst.shape[-1]
    block = 1024 if gpu_geometry() else 256
    _unchunk_kernel[(cdiv(length, block), rows * dstate)](src_ptr=src, dst_ptr=dst, S=S, NS=dstate, L=length,
                                                          M=rows * nck * dstate * ck, NCK=nck, CK=ck, BLOCK=block)
    return dst


def _fwd(u, delta, A, B, C, D, z, delta_bias, softplus: bool, channel_last: bool, save_ckpt: bool):
    if channel_last:
        batch, length, dim = u.shape
    else:
        batch, dim, length = u.shape
    dstate = A.shape[1]
    Bt, Ct = _bgnl(B, channel_last), _bgnl(C, channel_last)
    groups = Bt.shape[1]
    geo = _Geo(batch, dim, length, dstate, groups, u.device)
    f32 = dict(dtype=torch.float32, device=u.device)
    out = torch.empty_like(u)
    hend = torch.empty(batch, dim, dstate, **f32)
    ck = torch.empty(batch, geo.n_ck, dim, dstate, **f32) if save_ckpt else None
    common = dict(u_ptr=u, dl_ptr=delta, A_ptr=A, bias_ptr=delta_bias, **_strides(u, channel_last),
                  s_Ad=A.stride(0), s_An=A.stride(1), L=length, DIM=dim, GROUP_SIZE=geo.group_size, unit=1,
                  NS=dstate, BLOCK_R=geo.R, BLOCK_T=geo.BLOCK_T, SOFTPLUS=softplus, CHANNEL_LAST=channel_last,
                  FAST=geo.FAST, IDX=index_type(u, Bt), num_warps=1)
    main = dict(B_ptr=Bt, C_ptr=Ct, D_ptr=D, z_ptr=z, out_ptr=out, hend_ptr=hend, ck_ptr=ck, s_Bb=Bt.stride(0),
                s_Bg=Bt.stride(1), s_Bn=Bt.stride(2), CK_TILES=geo.CK_TILES, PAIRS=pairs_ok(Bt, Ct),
                VEC=vec_of(Bt), **common)
    nfull = length // geo.BLOCK_T
    with device_guard(u):
        hin = None
        if nfull:
            n_chunks = cdiv(nfull, geo.tiles)
            grid = (dim // geo.R, n_chunks, batch)
            if n_chunks > 1:
                loc = torch.empty(batch, n_chunks, dim, dstate, **f32)
                dsum = torch.empty(batch, n_chunks, dim, **f32)
                _ss_summary_kernel[grid](P_ptr=Bt, z_ptr=None, loc_ptr=loc, dsum_ptr=dsum, s_Pb=Bt.stride(0),
                                         s_Pg=Bt.stride(1), s_Pn=Bt.stride(2), TILES=geo.tiles, NCHUNK=n_chunks,
                                         FORWARD=True, **common)
                hin = torch.empty_like(loc)
                _carry(loc, dsum, A, None, hin, reverse=False)
            _ss_fwd_kernel[grid](hin_ptr=hin, T0=0, NT=nfull, TILES=geo.tiles, NCHUNK=n_chunks, MASKED=False,
                                 **main)
            hin = hend if nfull < geo.n_tiles else None
        if nfull < geo.n_tiles:  # the last, partial tile: its own launch, from the state the others left
            _ss_fwd_kernel[(dim // geo.R, 1, batch)](hin_ptr=hin, T0=nfull, NT=1, TILES=1, NCHUNK=1, MASKED=True,
                                                     **main)
    return out, hend, ck


def _carry(loc, dsum, A, init, out, reverse: bool):
    """out[:, c] = the state entering chunk c (reverse: the adjoint entering it from the right)."""
    P, nchunk, rows, ns = loc.shape
    block = 256
    _scan_carry_kernel[(cdiv(rows * ns, block), P)](
        loc_ptr=loc, dsum_ptr=dsum, rst_ptr=None, A_ptr=A, init_ptr=init, out_ptr=out, NCHUNK=nchunk, ROWS=rows,
        NS=ns, s_Ar=A.stride(0), s_An=A.stride(1), DIRS=1, BLOCK=block, REVERSE=reverse,
        HAS_RESET=False, HAS_INIT=init is not None)


def _bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, ck, softplus: bool, channel_last: bool):
    if channel_last:
        batch, length, dim = u.shape
    else:
        batch, dim, length = u.shape
    dstate = A.shape[1]
    Bt, Ct = _bgnl(B, channel_last), _bgnl(C, channel_last)
    groups = Bt.shape[1]
    geo = _Geo(batch, dim, length, dstate, groups, u.device)
    f32 = dict(dtype=torch.float32, device=u.device)
    dout = dout.contiguous()
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    nck = geo.n_ck
    dBs = torch.empty(geo.splits, batch, groups, geo.n_ck, dstate, geo.CK, **f32)
    dCs = torch.empty_like(dBs)
    dAp = torch.empty(batch, nck, dim, dstate, **f32)
    dDp = torch.empty(batch, nck, dim, **f32)
    dbp = torch.empty(batch, nck, dim, **f32)
    strides = _strides(u, channel_last)
    rows = dict(A_ptr=A, bias_ptr=delta_bias, **strides, s_Ad=A.stride(0), s_An=A.stride(1), L=length, DIM=dim,
                GROUP_SIZE=geo.group_size, unit=1, NS=dstate, SOFTPLUS=softplus, CHANNEL_LAST=channel_last,
                FAST=geo.FAST, IDX=index_type(u, Bt, dBs))
    dlast = dlast.float().contiguous() if dlast is not None else None
    with device_guard(u):
        nu = dlast[:, None] if dlast is not None else None  # one chunk: the adjoint entering it is d last_state
        if nck > 1:
            loc = torch.empty(batch, nck, dim, dstate, **f32)
            dsum = torch.empty(batch, nck, dim, **f32)
            _ss_summary_kernel[(dim // geo.R, nck, batch)](
                u_ptr=dout, dl_ptr=delta, P_ptr=Ct, z_ptr=z, loc_ptr=loc, dsum_ptr=dsum, s_Pb=Ct.stride(0),
                s_Pg=Ct.stride(1), s_Pn=Ct.stride(2), TILES=geo.CK_TILES, NCHUNK=nck, BLOCK_R=geo.R,
                BLOCK_T=geo.BLOCK_T, FORWARD=False, num_warps=1, **rows)
            nu = torch.empty_like(loc)
            _carry(loc, dsum, A, dlast, nu, reverse=True)
        Bc, Cc = chunked(Bt, geo.CK), chunked(Ct, geo.CK)
        main = dict(u_ptr=u, dl_ptr=delta, B_ptr=Bc, C_ptr=Cc, D_ptr=D, z_ptr=z, dout_ptr=dout, ck_ptr=ck,
                    nu_ptr=nu, du_ptr=du, ddl_ptr=ddelta, dz_ptr=dz, dB_ptr=dBs, dC_ptr=dCs, dA_ptr=dAp,
                    dD_ptr=dDp, dbias_ptr=dbp, s_Bb=Bc.stride(0), s_Bg=Bc.stride(1),
                    CPS=geo.cps, NSPLIT=geo.splits, GROUPS=groups, NCK=nck, PAIRS=pairs_ok(Bc, Cc),
                    VEC=vec_of(Bt), **rows)
        progs = batch * groups * geo.splits
        if geo.nfull:
            _ss_bwd_kernel[(cdiv(geo.nfull, geo.Rb), progs)](C0=0, BLOCK_R=geo.Rb, BLOCK_T=geo.CK, MASKED=False,
                                                          num_warps=geo.bwd_warps, **main)
        if geo.nfull < nck:  # the last, partial chunk
            _ss_bwd_kernel[(1, progs)](C0=geo.nfull, BLOCK_R=1, BLOCK_T=geo.CK, MASKED=True, num_warps=geo.bwd_warps,
                                       **main)
        dB = _unchunk(dBs, torch.empty(batch, groups, dstate, length, dtype=B.dtype, device=u.device))
        dC = _unchunk(dCs, torch.empty(batch, groups, dstate, length, dtype=C.dtype, device=u.device))
        dA = sum_leading(dAp.view(batch * nck, dim * dstate), torch.empty(dim, dstate, dtype=A.dtype,
                                                                        device=u.device))
        dD = sum_leading(dDp.view(batch * nck, dim), torch.empty_like(D)) if D is not None else None
        dbias = sum_leading(dbp.view(batch * nck, dim), torch.empty_like(delta_bias)) \
            if delta_bias is not None else None
    return du, ddelta, dA, _from_bgnl(dB, B, channel_last), _from_bgnl(dC, C, channel_last), dD, dz, dbias


# ---- custom ops: opaque to torch.compile (dynamo traces SelectiveScanFunction and keeps these as graph nodes)

def _ckpt_tiles(u: torch.Tensor, A: torch.Tensor, channel_last: bool) -> int:
    length = u.shape[1] if channel_last else u.shape[2]
    return _Geo(u.shape[0], A.shape[0], length, A.shape[1], 1, u.device).n_ck


@torch.library.custom_op("glsmamba::selective_scan_fwd", mutates_args=())
def _fwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None, softplus: bool,
            channel_last: bool, save_ckpt: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, last, ck = _fwd(u, delta, A, B, C, D, z, delta_bias, softplus, channel_last, save_ckpt)
    return out, last, ck if ck is not None else u.new_empty(0, dtype=torch.float32)


@_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, channel_last, save_ckpt):
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    f32 = dict(dtype=torch.float32, device=u.device)
    ck = u.new_empty(batch, _ckpt_tiles(u, A, channel_last), dim, dstate, **f32) if save_ckpt \
        else u.new_empty(0, **f32)
    return torch.empty_like(u), u.new_empty(batch, dim, dstate, **f32), ck


@torch.library.custom_op("glsmamba::selective_scan_bwd", mutates_args=())
def _bwd_op(dout: torch.Tensor, dlast: torch.Tensor | None, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
            B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None,
            delta_bias: torch.Tensor | None, ckpt: torch.Tensor, softplus: bool,
            channel_last: bool) -> list[torch.Tensor]:
    grads = _bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, ckpt, softplus, channel_last)
    # absent optional gradients travel as empty 1-D tensors (a custom op returns tensors only)
    return [u.new_empty(0) if g is None else g for g in grads]


@_bwd_op.register_fake
def _(dout, dlast, u, delta, A, B, C, D, z, delta_bias, ckpt, softplus, channel_last):
    def like(t):
        return u.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)

    return [like(u), like(delta), torch.empty_like(A), like(B), like(C), like(D), like(z), like(delta_bias)]


class SelectiveScanFunction(torch.autograd.Function):
    """Forward and backward are the Triton kernels above (no autograd through a reference)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, channel_last):
        need_grad = any(ctx.needs_input_grad[:8])
        out, last, ckpt = _fwd_op(u, delta, A, B, C, D, z, delta_bias, delta_softplus, channel_last, need_grad)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.flags = (delta_softplus, channel_last)
        if not return_last_state:
            ctx.mark_non_differentiable(last)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        softplus, channel_last = ctx.flags
        grads = _bwd_op(dout, dlast, u, delta, A, B, C, D, z, delta_bias, ckpt, softplus, channel_last)
        grads = [None if t is None else g for g, t in zip(grads, (u, delta, A, B, C, D, z, delta_bias), strict=True)]
        return (*grads, None, None, None)


def _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, channel_last):
    # the only input check of a call: the launchers below trust what passes here
    check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, channel_last=channel_last)
    check_runnable(u, delta, A, B, C, D, z, delta_bias, op="selective_scan")
    # the kernels address u, delta, z, out and the gradients with u's strides: make them contiguous
    u, delta, z = (None if t is None else t.contiguous() for t in (u, delta, z))
    A = A.float()
    out, last = SelectiveScanFunction.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                            bool(return_last_state), channel_last)
    return (out, last) if return_last_state else out


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Selective scan (Mamba-1 S6) in Triton; the contract of ``reference.selective_scan.selective_scan``.

    Args:
        u: ``[B, D, L]``; delta: ``[B, D, L]``; A: ``[D, N]`` (float32 inside); B, C: ``[B, N, L]`` or
            ``[B, G, N, L]``; D, delta_bias: ``[D]`` optional; z: ``[B, D, L]`` optional gate.
        delta_softplus: softplus (threshold 20) on ``delta + delta_bias``.
        return_last_state: also return the final state ``[B, D, N]`` float32 (differentiable).

    Returns:
        ``out [B, D, L]`` in u's dtype, or ``(out, last_state)``.
    """
    return _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, False)


def selective_scan_channel_last(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                return_last_state=False):
    """Channel-last selective scan: u, delta, z ``[B, L, D]``; B, C ``[B, L, N]`` or ``[B, L, G, N]``;
    returns ``[B, L, D]`` (and ``last_state [B, D, N]``). Same kernels as :func:`selective_scan` (rows addressed
    with the channel-last strides; B and C are transposed to ``(B, G, N, L)`` once per call)."""
    return _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, True)
