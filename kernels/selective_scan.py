"""Selective scan (Mamba-1 S6) in Triton, forward and backward. Same contract as ``reference/selective_scan.py``.

    dt_l = softplus(delta_l + bias);  h_l = exp(dt_l A) h_{l-1} + dt_l u_l B_l;  y_l = C_l . h_l + D u_l;
    out_l = y_l silu(z_l)

Structure (chunk-parallel, all state math in float32, exp2 with A pre-scaled by log2 e):
  * L is cut into tiles of BLOCK_T tokens; a program owns (batch row, block of channels inside one B/C group,
    chunk of TILES tiles). Inside a tile the recurrence ``h_t = a_t h_{t-1} + b_t`` is one
    ``tl.associative_scan`` over the ``[BLOCK_T, BLOCK_D, N]`` tile; tiles of a chunk are chained in registers.
  * Chunks run in parallel. Pass 1 scans every chunk from a zero state and keeps its end state and the sum of
    its dt (the chunk's decay is ``exp(A * sum dt)`` because A is constant along L); a short sequential carry
    kernel turns those into each chunk's true initial state; pass 2 rescans each chunk from it and writes the
    output, plus the state at every tile start (the checkpoints the backward recomputes from).
  * Backward: the adjoint ``lam_t = a_{t+1} lam_{t+1} + dy_t C_t`` runs the same way in reverse (tiles are
    loaded in reversed order, so only forward scans are used; ``tl.flip`` maps the result back). Pass 2 of the
    backward recomputes h per tile from the checkpoint, forms every gradient, and writes dB, dC as per-block
    partials and dA, dD, d(delta_bias) as per-chunk partials that torch sums: deterministic, no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glsmamba.kernels._scan_common import LOG2E, affine_combine, dt_from_raw
from glsmamba.kernels._utils import (
    check_runnable,
    current_config,
    device_guard,
    gpu_geometry,
    next_pow2,
    record_build,
    units_per_launch,
)
from glsmamba.reference.selective_scan import check_selective_scan_inputs

record_build()  # Triton decorates the kernels below in the mode TRITON_INTERPRET names now

__all__ = ["selective_scan", "selective_scan_channel_last"]


@triton.jit
def _last_row(x, BLOCK_T: tl.constexpr):
    rows = tl.arange(0, BLOCK_T)
    return tl.sum(tl.where((rows == BLOCK_T - 1)[:, None, None], x, 0.0), axis=0)


@triton.jit
def _load_td(ptr, t, d, mask, s_l, s_d):
    return tl.load(ptr + t[:, None] * s_l + d[None, :] * s_d, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _load_tn(ptr, t, n, mask, s_l, s_n):
    return tl.load(ptr + t[:, None] * s_l + n[None, :] * s_n, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _dt_tile(delta_ptr, t, d, mask, s_l, s_d, bias, SOFTPLUS: tl.constexpr):
    """(dt, pre) of the delta tile at steps t, channels d (see ``dt_from_raw``)."""
    return dt_from_raw(_load_td(delta_ptr, t, d, mask, s_l, s_d), mask, bias, SOFTPLUS)


@triton.jit
def _channel_params(A_ptr, bias_ptr, D_ptr, d, n, m_d, m_dn, s_Ad, s_An, BLOCK_D: tl.constexpr,
                    HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """This block's A ``[BLOCK_D, NP]``, delta_bias and D ``[BLOCK_D]`` in float32 (zeros when absent)."""
    A = tl.load(A_ptr + d[:, None] * s_Ad + n[None, :] * s_An, mask=m_dn, other=0.0).to(tl.float32)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=m_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=m_d, other=0.0).to(tl.float32)
    return A, bias, Dv


@triton.jit
def _ss_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr,
    hin_ptr, out_ptr, ckpt_ptr, hend_ptr, dsum_ptr,
    s_ub, s_ul, s_ud, s_db, s_dl, s_dd, s_zb, s_zl, s_zd, s_ob, s_ol, s_od,
    s_Bb, s_Bg, s_Bl, s_Bn, s_Cb, s_Cg, s_Cl, s_Cn, s_Ad, s_An,
    L, DIM, NSTATE, GROUP_SIZE, BLOCKS_PER_GROUP, TILES, N_CHUNKS, N_TILES,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, NP: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_HIN: tl.constexpr, FINAL: tl.constexpr, SAVE_CKPT: tl.constexpr,
):
    pid0 = tl.program_id(0)
    i_c = tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    i_g = pid0 // BLOCKS_PER_GROUP
    o_dg = (pid0 % BLOCKS_PER_GROUP) * BLOCK_D + tl.arange(0, BLOCK_D)  # channel offset inside the group
    m_d = o_dg < GROUP_SIZE
    d = (i_g * GROUP_SIZE + o_dg).to(tl.int64)
    n = tl.arange(0, NP)
    m_n = n < NSTATE
    m_dn = m_d[:, None] & m_n[None, :]
    A, bias, Dv = _channel_params(A_ptr, bias_ptr, D_ptr, d, n, m_d, m_dn, s_Ad, s_An, BLOCK_D, HAS_BIAS, HAS_D)
    A2 = A * LOG2E
    o_state = ((i_b * N_CHUNKS + i_c) * DIM + d[:, None]) * NSTATE + n[None, :]
    if HAS_HIN:
        h = tl.load(hin_ptr + o_state, mask=m_dn, other=0.0)
    else:
        h = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
    dsum = tl.zeros([BLOCK_D], dtype=tl.float32)
    u_base = u_ptr + i_b * s_ub
    dl_base = delta_ptr + i_b * s_db
    B_base = B_ptr + i_b * s_Bb + i_g * s_Bg
    C_base = C_ptr + i_b * s_Cb + i_g * s_Cg
    for j in range(TILES):
        tile = i_c * TILES + j
        t = tile * BLOCK_T + tl.arange(0, BLOCK_T)
        m_t = t < L
        m_td = m_t[:, None] & m_d[None, :]
        if FINAL and SAVE_CKPT:
            o_ck = ((i_b * N_TILES + tile) * DIM + d[:, None]) * NSTATE + n[None, :]
            # (broadcast the scalar condition explicitly: the interpreter rejects scalar & tensor masks)
            tl.store(ckpt_ptr + o_ck, h, mask=m_dn & ((tile + tl.zeros([BLOCK_D, NP], dtype=tl.int64)) < N_TILES))
        dt, _ = _dt_tile(dl_base, t, d, m_td, s_dl, s_dd, bias, SOFTPLUS)
        u = _load_td(u_base, t, d, m_td, s_ul, s_ud)
        Bt = _load_tn(B_base, t, n, m_t[:, None] & m_n[None, :], s_Bl, s_Bn)
        a = tl.exp2(dt[:, :, None] * A2[None, :, :])
        b = (dt * u)[:, :, None] * Bt[:, None, :]
        ca, cb = tl.associative_scan((a, b), 0, affine_combine)
        hs = ca * h[None, :, :] + cb
        if FINAL:
            Ct = _load_tn(C_base, t, n, m_t[:, None] & m_n[None, :], s_Cl, s_Cn)
            y = tl.sum(hs * Ct[:, None, :], axis=2)
            if HAS_D:
                y += Dv[None, :] * u
            if HAS_Z:
                zt = _load_td(z_ptr + i_b * s_zb, t, d, m_td, s_zl, s_zd)
                y = y * zt * tl.sigmoid(zt)
            o_out = out_ptr + i_b * s_ob + t[:, None] * s_ol + d[None, :] * s_od
            tl.store(o_out, y.to(out_ptr.dtype.element_ty), mask=m_td)
        else:
            dsum += tl.sum(dt, axis=0)
        # padded rows (t >= L) have a = 1, b = 0, so the last row is the state after the last real token
        h = _last_row(hs, BLOCK_T)
    tl.store(hend_ptr + o_state, h, mask=m_dn)
    if not FINAL:
        tl.store(dsum_ptr + (i_b * N_CHUNKS + i_c) * DIM + d, dsum, mask=m_d)


@triton.jit
def _ss_carry_kernel(
    loc_ptr, dsum_ptr, A_ptr, init_ptr, carry_ptr,
    N_CHUNKS, DIM, NSTATE, s_Ad, s_An,
    BLOCK_D: tl.constexpr, NP: tl.constexpr, REVERSE: tl.constexpr, HAS_INIT: tl.constexpr,
):
    """carry[c] = state entering chunk c; state after c = exp(A * dsum[c]) * carry[c] + loc[c]."""
    d = (tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)).to(tl.int64)
    i_b = tl.program_id(1).to(tl.int64)
    n = tl.arange(0, NP)
    m_d = d < DIM
    m_dn = m_d[:, None] & (n < NSTATE)[None, :]
    A2 = tl.load(A_ptr + d[:, None] * s_Ad + n[None, :] * s_An, mask=m_dn, other=0.0).to(tl.float32) * LOG2E
    if HAS_INIT:
        h = tl.load(init_ptr + (i_b * DIM + d[:, None]) * NSTATE + n[None, :], mask=m_dn, other=0.0)
    else:
        h = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
    for i in range(N_CHUNKS):
        if REVERSE:
            c = N_CHUNKS - 1 - i
        else:
            c = i
        o_state = ((i_b * N_CHUNKS + c) * DIM + d[:, None]) * NSTATE + n[None, :]
        tl.store(carry_ptr + o_state, h, mask=m_dn)
        ds = tl.load(dsum_ptr + (i_b * N_CHUNKS + c) * DIM + d, mask=m_d, other=0.0)
        h = tl.exp2(ds[:, None] * A2) * h + tl.load(loc_ptr + o_state, mask=m_dn, other=0.0)


@triton.jit
def _ss_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, ckpt_ptr, lamin_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dBp_ptr, dCp_ptr, dAp_ptr, dDp_ptr, dbiasp_ptr, lamloc_ptr, dsum_ptr,
    s_ub, s_ul, s_ud, s_db, s_dl, s_dd, s_zb, s_zl, s_zd, s_gb, s_gl, s_gd,
    s_Bb, s_Bg, s_Bl, s_Bn, s_Cb, s_Cg, s_Cl, s_Cn, s_Ad, s_An,
    L, DIM, NSTATE, GROUP_SIZE, BLOCKS_PER_GROUP, TILES, N_CHUNKS, N_TILES, N_DBLOCKS, C_LO, LSEG,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, NP: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_LAMIN: tl.constexpr, FINAL: tl.constexpr,
):
    # Chunks C_LO + program_id(1). The final pass writes dB/dC partials (B, N_DBLOCKS, LSEG, N) for the tokens
    # of its launch's chunks only (LSEG of them from chunk C_LO on): the launcher reduces them per launch.
    pid0 = tl.program_id(0)
    i_c = C_LO + tl.program_id(1).to(tl.int64)
    i_b = tl.program_id(2).to(tl.int64)
    i_g = pid0 // BLOCKS_PER_GROUP
    o_dg = (pid0 % BLOCKS_PER_GROUP) * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_dg < GROUP_SIZE
    d = (i_g * GROUP_SIZE + o_dg).to(tl.int64)
    n = tl.arange(0, NP)
    m_n = n < NSTATE
    m_dn = m_d[:, None] & m_n[None, :]
    A, bias, Dv = _channel_params(A_ptr, bias_ptr, D_ptr, d, n, m_d, m_dn, s_Ad, s_An, BLOCK_D, HAS_BIAS, HAS_D)
    A2 = A * LOG2E
    o_state = ((i_b * N_CHUNKS + i_c) * DIM + d[:, None]) * NSTATE + n[None, :]
    if HAS_LAMIN:
        lam = tl.load(lamin_ptr + o_state, mask=m_dn, other=0.0)
    else:
        lam = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
    dsum = tl.zeros([BLOCK_D], dtype=tl.float32)
    dA_acc = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    u_base = u_ptr + i_b * s_ub
    dl_base = delta_ptr + i_b * s_db
    g_base = dout_ptr + i_b * s_gb
    z_base = z_ptr + i_b * s_zb
    B_base = B_ptr + i_b * s_Bb + i_g * s_Bg
    C_base = C_ptr + i_b * s_Cb + i_g * s_Cg
    rows = tl.arange(0, BLOCK_T)
    for jj in range(TILES):
        tile = i_c * TILES + (TILES - 1 - jj)
        # ---- adjoint scan over the tile in reversed token order: lam_t = a_{t+1} lam_{t+1} + dy_t C_t
        tr = tile * BLOCK_T + (BLOCK_T - 1 - rows)
        m_tr = tr < L
        m_trd = m_tr[:, None] & m_d[None, :]
        m_nx = (tr + 1 < L)[:, None] & m_d[None, :]
        dt_next, _ = _dt_tile(dl_base, tr + 1, d, m_nx, s_dl, s_dd, bias, SOFTPLUS)
        dy_r = _load_td(g_base, tr, d, m_trd, s_gl, s_gd)
        if HAS_Z:
            z_r = _load_td(z_base, tr, d, m_trd, s_zl, s_zd)
            dy_r = dy_r * z_r * tl.sigmoid(z_r)
        C_r = _load_tn(C_base, tr, n, m_tr[:, None] & m_n[None, :], s_Cl, s_Cn)
        ca, cb = tl.associative_scan(
            (tl.exp2(dt_next[:, :, None] * A2[None, :, :]), dy_r[:, :, None] * C_r[:, None, :]), 0, affine_combine
        )
        lam_r = ca * lam[None, :, :] + cb
        lam = _last_row(lam_r, BLOCK_T)  # lam at the tile's first token: carried to the previous tile
        if not FINAL:
            dsum += tl.sum(dt_next, axis=0)
        else:
            lam_f = tl.flip(lam_r, 0)
            t = tile * BLOCK_T + rows
            m_t = t < L
            m_td = m_t[:, None] & m_d[None, :]
            m_tn = m_t[:, None] & m_n[None, :]
            dt, x = _dt_tile(dl_base, t, d, m_td, s_dl, s_dd, bias, SOFTPLUS)
            u = _load_td(u_base, t, d, m_td, s_ul, s_ud)
            Bt = _load_tn(B_base, t, n, m_tn, s_Bl, s_Bn)
            Ct = _load_tn(C_base, t, n, m_tn, s_Cl, s_Cn)
            o_ck = ((i_b * N_TILES + tile) * DIM + d[:, None]) * NSTATE + n[None, :]
            h0 = tl.load(ckpt_ptr + o_ck, mask=m_dn & ((tile + tl.zeros([BLOCK_D, NP], dtype=tl.int64)) < N_TILES),
                         other=0.0)
            a = tl.exp2(dt[:, :, None] * A2[None, :, :])
            b = (dt * u)[:, :, None] * Bt[:, None, :]
            ca2, cb2 = tl.associative_scan((a, b), 0, affine_combine)
            hs = ca2 * h0[None, :, :] + cb2
            g = _load_td(g_base, t, d, m_td, s_gl, s_gd)
            if HAS_Z:
                zt = _load_td(z_base, t, d, m_td, s_zl, s_zd)
                sz = tl.sigmoid(zt)
                y = tl.sum(hs * Ct[:, None, :], axis=2) + Dv[None, :] * u
                dz = g * y * sz * (1.0 + zt * (1.0 - sz))
                o_dz = dz_ptr + i_b * s_zb + t[:, None] * s_zl + d[None, :] * s_zd
                tl.store(o_dz, dz.to(dz_ptr.dtype.element_ty), mask=m_td)
                dy = g * zt * sz
            else:
                dy = g
            lamB = tl.sum(lam_f * Bt[:, None, :], axis=2)
            du = lamB * dt + Dv[None, :] * dy
            ah = hs - b  # a_t h_{t-1}, recovered without storing h_{t-1}
            lam_ah = lam_f * ah
            ddt = u * lamB + tl.sum(lam_ah * A[None, :, :], axis=2)
            dA_acc += tl.sum(lam_ah * dt[:, :, None], axis=0)
            dD_acc += tl.sum(dy * u, axis=0)
            if SOFTPLUS:
                ddt = tl.where(x <= 20.0, ddt * tl.sigmoid(x), ddt)
            ddt = tl.where(m_td, ddt, 0.0)
            dbias_acc += tl.sum(ddt, axis=0)
            o_du = du_ptr + i_b * s_ub + t[:, None] * s_ul + d[None, :] * s_ud
            tl.store(o_du, du.to(du_ptr.dtype.element_ty), mask=m_td)
            o_dd = ddelta_ptr + i_b * s_db + t[:, None] * s_dl + d[None, :] * s_dd
            tl.store(o_dd, ddt.to(ddelta_ptr.dtype.element_ty), mask=m_td)
            # dB_t = sum_d lam dt u,  dC_t = sum_d dy h: reduced over this block's channels, summed in torch
            dB = tl.sum(lam_f * (dt * u)[:, :, None], axis=1)
            dC = tl.sum(hs * dy[:, :, None], axis=1)
            o_part = ((i_b * N_DBLOCKS + pid0) * LSEG + (t - C_LO * TILES * BLOCK_T)[:, None]) * NSTATE + n[None, :]
            tl.store(dBp_ptr + o_part, dB, mask=m_tn)
            tl.store(dCp_ptr + o_part, dC, mask=m_tn)
    if FINAL:
        tl.store(dAp_ptr + o_state, dA_acc, mask=m_dn)
        o_cd = (i_b * N_CHUNKS + i_c) * DIM + d
        tl.store(dDp_ptr + o_cd, dD_acc, mask=m_d)
        tl.store(dbiasp_ptr + o_cd, dbias_acc, mask=m_d)
    else:
        tl.store(lamloc_ptr + o_state, lam, mask=m_dn)
        tl.store(dsum_ptr + (i_b * N_CHUNKS + i_c) * DIM + d, dsum, mask=m_d)


# ----------------------------------------------------------------------------------------------------------------
# launchers

class _Cfg:
    """Launch geometry for one call (``kernels._utils.launch_config`` chooses the CUDA or the interpreter one and
    may force the tiles per chunk)."""

    def __init__(self, batch: int, dim: int, length: int, dstate: int, groups: int):
        gpu = gpu_geometry()
        self.NP = next_pow2(dstate)
        self.BLOCK_T = 32 if gpu else 16
        self.group_size = dim // groups
        # GPU: keep a [BLOCK_T, BLOCK_D, N] fp32 tile near 2k elements per live tensor (register budget)
        cap = max(1, 2048 // (self.BLOCK_T * self.NP)) if gpu else 16
        self.BLOCK_D = max(1, min(next_pow2(self.group_size), cap))
        self.blocks_per_group = triton.cdiv(self.group_size, self.BLOCK_D)
        self.n_dblocks = groups * self.blocks_per_group
        self.n_tiles = max(1, triton.cdiv(length, self.BLOCK_T))
        tiles = current_config().tiles_per_chunk
        self.tiles = tiles if tiles is not None else (8 if gpu else 2)
        self.n_chunks = triton.cdiv(self.n_tiles, self.tiles)
        self.carry_block_d = min(next_pow2(dim), 64)
        self.num_warps = 4


def _as_bgln(B: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """View B/C as (batch, G, L, N) whatever the layout (no copy)."""
    if channel_last:
        return (B[:, :, None] if B.dim() == 3 else B).permute(0, 2, 1, 3)  # (B, L, G, N) -> (B, G, L, N)
    return (B[:, None] if B.dim() == 3 else B).transpose(2, 3)  # (B, G, N, L) -> (B, G, L, N)


def _bld_strides(t: torch.Tensor, channel_last: bool) -> tuple[int, int, int]:
    """(batch, token, channel) strides of a u-like tensor."""
    return (t.stride(0), t.stride(1), t.stride(2)) if channel_last else (t.stride(0), t.stride(2), t.stride(1))


def _fwd(u, delta, A, B, C, D, z, delta_bias, softplus: bool, channel_last: bool, save_ckpt: bool):
    dims = check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, channel_last=channel_last)
    check_runnable(u, delta, A, B, C, D, z, delta_bias, op="selective_scan")
    batch, dim, length, dstate = dims.batch, dims.dim, dims.length, dims.dstate
    cfg = _Cfg(batch, dim, length, dstate, dims.groups)
    dev = u.device
    out = torch.empty_like(u, memory_format=torch.contiguous_format)
    Bv, Cv = _as_bgln(B, channel_last), _as_bgln(C, channel_last)
    f32 = dict(dtype=torch.float32, device=dev)
    hend = torch.empty(batch, cfg.n_chunks, dim, dstate, **f32)
    ckpt = torch.empty(batch, cfg.n_tiles if save_ckpt else 0, dim, dstate, **f32)
    dummy = hend
    strides = (*_bld_strides(u, channel_last), *_bld_strides(delta, channel_last),
               *(_bld_strides(z, channel_last) if z is not None else (0, 0, 0)), *_bld_strides(out, channel_last),
               *Bv.stride(), *Cv.stride(), A.stride(0), A.stride(1))
    common = dict(L=length, DIM=dim, NSTATE=dstate, GROUP_SIZE=cfg.group_size,
                  BLOCKS_PER_GROUP=cfg.blocks_per_group, TILES=cfg.tiles, N_CHUNKS=cfg.n_chunks,
                  N_TILES=cfg.n_tiles, BLOCK_T=cfg.BLOCK_T, BLOCK_D=cfg.BLOCK_D, NP=cfg.NP, SOFTPLUS=softplus,
                  HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                  num_warps=cfg.num_warps)
    args = (u, delta, A, Bv, Cv, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy)
    grid = (cfg.n_dblocks, cfg.n_chunks, batch)
    with device_guard(u):
        hin = None
        if cfg.n_chunks > 1:
            loc = torch.empty(batch, cfg.n_chunks, dim, dstate, **f32)
            dsum = torch.empty(batch, cfg.n_chunks, dim, **f32)
            _ss_fwd_kernel[grid](*args, dummy, out, ckpt, loc, dsum, *strides, HAS_HIN=False, FINAL=False,
                                 SAVE_CKPT=False, **common)
            hin = torch.empty_like(loc)
            _ss_carry_kernel[(triton.cdiv(dim, cfg.carry_block_d), batch)](
                loc, dsum, A, dummy, hin, cfg.n_chunks, dim, dstate, A.stride(0), A.stride(1),
                BLOCK_D=cfg.carry_block_d, NP=cfg.NP, REVERSE=False, HAS_INIT=False)
        _ss_fwd_kernel[grid](*args, hin if hin is not None else dummy, out, ckpt, hend, dummy, *strides,
                             HAS_HIN=hin is not None, FINAL=True, SAVE_CKPT=save_ckpt, **common)
    return out, hend[:, -1], ckpt


def _bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, ckpt, softplus: bool, channel_last: bool):
    dims = check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, channel_last=channel_last)
    batch, dim, length, dstate, groups = dims.batch, dims.dim, dims.length, dims.dstate, dims.groups
    cfg = _Cfg(batch, dim, length, dstate, groups)
    dev = u.device
    f32 = dict(dtype=torch.float32, device=dev)
    du = torch.empty_like(u, memory_format=torch.contiguous_format)
    ddelta = torch.empty_like(delta, memory_format=torch.contiguous_format)
    dz = torch.empty_like(z, memory_format=torch.contiguous_format) if z is not None else None
    Bv, Cv = _as_bgln(B, channel_last), _as_bgln(C, channel_last)
    # dB/dC partials per channel block for the chunks of one final-pass launch (reused)
    chunk_tokens = cfg.tiles * cfg.BLOCK_T
    seg = units_per_launch(2 * 4 * batch * cfg.n_dblocks * chunk_tokens * dstate, cfg.n_chunks)
    dBp = torch.empty(batch, cfg.n_dblocks, seg * chunk_tokens, dstate, **f32)
    dCp = torch.empty_like(dBp)
    dB = torch.empty(batch, groups, length, dstate, **f32)
    dC = torch.empty_like(dB)
    dAp = torch.empty(batch, cfg.n_chunks, dim, dstate, **f32)
    dDp = torch.empty(batch, cfg.n_chunks, dim, **f32)
    dbp = torch.empty(batch, cfg.n_chunks, dim, **f32)
    dummy = dAp
    # du/ddelta/dz are written with the strides of u/delta/z: all contiguous (see _scan); dout has its own
    strides = (*_bld_strides(u, channel_last), *_bld_strides(delta, channel_last),
               *(_bld_strides(z, channel_last) if z is not None else (0, 0, 0)), *_bld_strides(dout, channel_last),
               *Bv.stride(), *Cv.stride(), A.stride(0), A.stride(1))
    common = dict(L=length, DIM=dim, NSTATE=dstate, GROUP_SIZE=cfg.group_size,
                  BLOCKS_PER_GROUP=cfg.blocks_per_group, TILES=cfg.tiles, N_CHUNKS=cfg.n_chunks,
                  N_TILES=cfg.n_tiles, N_DBLOCKS=cfg.n_dblocks, BLOCK_T=cfg.BLOCK_T, BLOCK_D=cfg.BLOCK_D,
                  NP=cfg.NP, SOFTPLUS=softplus, HAS_D=D is not None, HAS_Z=z is not None,
                  HAS_BIAS=delta_bias is not None, num_warps=cfg.num_warps)
    args = (u, delta, A, Bv, Cv, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy, dout, ckpt)
    grid = (cfg.n_dblocks, cfg.n_chunks, batch)
    dlast = dlast.float().contiguous() if dlast is not None else None
    common.update(C_LO=0, LSEG=dBp.shape[2])
    with device_guard(u):
        lamin = None
        if cfg.n_chunks > 1:
            lamloc = torch.empty(batch, cfg.n_chunks, dim, dstate, **f32)
            dsum = torch.empty(batch, cfg.n_chunks, dim, **f32)
            _ss_bwd_kernel[grid](*args, dummy, dummy, dummy, dummy, dummy, dummy, dummy, dummy, dummy, lamloc,
                                 dsum, *strides, HAS_LAMIN=False, FINAL=False, **common)
            lamin = torch.empty_like(lamloc)
            _ss_carry_kernel[(triton.cdiv(dim, cfg.carry_block_d), batch)](
                lamloc, dsum, A, dlast if dlast is not None else dummy, lamin, cfg.n_chunks, dim, dstate,
                A.stride(0), A.stride(1), BLOCK_D=cfg.carry_block_d, NP=cfg.NP, REVERSE=True,
                HAS_INIT=dlast is not None)
        elif dlast is not None:
            lamin = dlast[:, None]  # one chunk: the incoming adjoint is d(last_state) itself
        for c_lo in range(0, cfg.n_chunks, seg):  # final pass, a group of chunks per launch
            c_hi = min(cfg.n_chunks, c_lo + seg)
            common.update(C_LO=c_lo)
            _ss_bwd_kernel[(cfg.n_dblocks, c_hi - c_lo, batch)](
                *args, lamin if lamin is not None else dummy, du, ddelta, dz if dz is not None else dummy, dBp, dCp,
                dAp, dDp, dbp, dummy, dummy, *strides, HAS_LAMIN=lamin is not None, FINAL=True, **common)
            t_lo, t_hi = c_lo * chunk_tokens, min(length, c_hi * chunk_tokens)
            # deterministic reductions of the partials over the blocks of each group: (B, G, tokens, N)
            parts = (batch, groups, cfg.blocks_per_group, dBp.shape[2], dstate)
            dB[:, :, t_lo:t_hi] = dBp.view(parts)[:, :, :, : t_hi - t_lo].sum(2)
            dC[:, :, t_lo:t_hi] = dCp.view(parts)[:, :, :, : t_hi - t_lo].sum(2)
    dA = dAp.sum((0, 1))
    dD = dDp.sum((0, 1)) if D is not None else None
    dbias = dbp.sum((0, 1)) if delta_bias is not None else None
    dB, dC = _from_bgln(dB, B, channel_last), _from_bgln(dC, C, channel_last)
    return du, ddelta, dA.to(A.dtype), dB, dC, None if dD is None else dD.to(D.dtype), dz, \
        None if dbias is None else dbias.to(delta_bias.dtype)


def _from_bgln(g: torch.Tensor, like: torch.Tensor, channel_last: bool) -> torch.Tensor:
    """(B, G, L, N) gradient back to the layout and dtype of the B/C argument ``like``."""
    if channel_last:
        g = g.permute(0, 2, 1, 3)  # (B, L, G, N)
        g = g[:, :, 0] if like.dim() == 3 else g
    else:
        g = g.transpose(2, 3)  # (B, G, N, L)
        g = g[:, 0] if like.dim() == 3 else g
    return g.contiguous().to(like.dtype)


# ---- custom ops: opaque to torch.compile (dynamo traces SelectiveScanFunction and keeps these as graph nodes)

@torch.library.custom_op("glsmamba::selective_scan_fwd", mutates_args=())
def _fwd_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None, softplus: bool,
            channel_last: bool, save_ckpt: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, last, ckpt = _fwd(u, delta, A, B, C, D, z, delta_bias, softplus, channel_last, save_ckpt)
    return out, last.contiguous(), ckpt


@_fwd_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, channel_last, save_ckpt):
    batch, dim, length = (u.shape[0], u.shape[2], u.shape[1]) if channel_last else u.shape
    groups = (1 if B.dim() == 3 else B.shape[2 if channel_last else 1])
    cfg = _Cfg(batch, dim, length, A.shape[1], groups)
    f32 = dict(dtype=torch.float32, device=u.device)
    return (torch.empty_like(u, memory_format=torch.contiguous_format), u.new_empty(batch, dim, A.shape[1], **f32),
            u.new_empty(batch, cfg.n_tiles if save_ckpt else 0, dim, A.shape[1], **f32))


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
    check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, channel_last=channel_last)
    check_runnable(u, delta, A, B, C, D, z, delta_bias, op="selective_scan")
    # the kernels write du/ddelta/dz with the strides of u/delta/z: make those contiguous
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
    returns ``[B, L, D]`` (and ``last_state [B, D, N]``). Same kernels as :func:`selective_scan`; loads along
    channels are contiguous in this layout (the fast one on GPU)."""
    return _scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, True)
