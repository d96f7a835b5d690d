"""STMM modulation in Triton: bilinear space-time deformable aggregation, forward and backward.

``out[b, l, c] = sum_p weight[p, c] * mask[b, l, g, p] * bilinear(x[b, t + dt_p], h + dh_p + off_h, w + dw_p + off_w, c)``
(zero padding outside the frame, zero outside ``[0, T)``; ``g = c // (C // Goff)``); see ``reference/deformable.py``.

Kernels:
- ``_deform_fwd_kernel``: one program per (batch, offset group, token block, channel block); loops over taps and
  gathers the four bilinear corners of each token (channel-last rows, coalesced along C).
- ``_deform_bwd_kernel``: one program per (batch, offset group, token block); loops over taps and over every
  channel block of the group, so d(mask) and d(offsets) (sums over the group's channels) are complete in-program;
  d(weight) is written as per-program partials summed in torch; it also writes, for every (token, group, tap,
  corner), the natural index the corner reads (``key``) and its coefficient ``mask * bilinear weight``.
- ``_deform_dx_kernel``: d(x) without atomics. The (key, entry) pairs are sorted by key (stable sort) and each
  program owns a block of source pixels and sums their entries in sorted order: deterministic, bit-reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from glsmamba.kernels._utils import cdiv, check_runnable, device_guard, gpu_geometry, next_pow2, record_build
from glsmamba.reference.checks import SPATIAL_TAPS, TEMPORAL_TAPS, _check_deformable  # noqa: F401  (re-exported)

record_build()  # Triton decorates the kernels below in the mode TRITON_INTERPRET names now

# ------------------------------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------------------------------


@triton.jit
def _sample_setup(o_l, oh, ow, dt, dh, dw, T, H, W):
    """Sampling geometry of a block of tokens for one tap: frame, integer corner (h0, w0), fractions (lh, lw)."""
    t = o_l // (H * W)
    h = (o_l // W) % H
    w = o_l % W
    tt = t + dt
    t_ok = (tt >= 0) & (tt < T)
    hh = (h + dh).to(tl.float32) + oh
    ww = (w + dw).to(tl.float32) + ow
    # Clamp to [-2, H+1]: beyond that every corner is outside the frame (value and gradient 0), and the clamp keeps
    # the float -> int conversion in range. floor() via truncation, corrected for negative non-integers.
    hh = tl.minimum(tl.maximum(hh, -2.0), H + 1.0)
    ww = tl.minimum(tl.maximum(ww, -2.0), W + 1.0)
    h0 = hh.to(tl.int32)
    h0 = tl.where(h0.to(tl.float32) > hh, h0 - 1, h0)
    w0 = ww.to(tl.int32)
    w0 = tl.where(w0.to(tl.float32) > ww, w0 - 1, w0)
    lh = hh - h0.to(tl.float32)
    lw = ww - w0.to(tl.float32)
    return tt, t_ok, h0, w0, lh, lw


@triton.jit
def _corner(tt, t_ok, hc, wc, H, W, m_l):
    """Natural index of a corner (clamped in range) and whether it is inside the clip."""
    ok = m_l & t_ok & (hc >= 0) & (hc < H) & (wc >= 0) & (wc < W)
    row = (tt * H + hc) * W + wc
    return tl.where(ok, row, 0).to(tl.int64), ok


@triton.jit(do_not_specialize=["T", "H", "W", "L"])
def _deform_fwd_kernel(x_ptr, off_ptr, mask_ptr, w_ptr, taps_ptr, out_ptr,
                       T, H, W, L, C, G, P, CPG, NLB, NCB,
                       BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    i_c = pid % NCB
    i_l = (pid // NCB) % NLB
    i_bg = pid // (NCB * NLB)
    i_b = i_bg // G
    i_g = i_bg % G
    o_l = i_l * BLOCK_L + tl.arange(0, BLOCK_L)
    m_l = o_l < L
    o_cg = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m_c = o_cg < CPG
    o_c = i_g * CPG + o_cg  # absolute channel
    acc = tl.zeros([BLOCK_L, BLOCK_C], dtype=tl.float32)
    for p in range(P):
        dt = tl.load(taps_ptr + p * 3)
        dh = tl.load(taps_ptr + p * 3 + 1)
        dw = tl.load(taps_ptr + p * 3 + 2)
        o_m = ((i_b * L + o_l) * G + i_g) * P + p  # index into mask (Bsz, L, G, P); offsets at 2*o_m (+1)
        oh = tl.load(off_ptr + 2 * o_m, mask=m_l, other=0.0).to(tl.float32)
        ow = tl.load(off_ptr + 2 * o_m + 1, mask=m_l, other=0.0).to(tl.float32)
        mk = tl.load(mask_ptr + o_m, mask=m_l, other=0.0).to(tl.float32)
        wt = tl.load(w_ptr + p * C + o_c, mask=m_c, other=0.0).to(tl.float32)
        tt, t_ok, h0, w0, lh, lw = _sample_setup(o_l, oh, ow, dt, dh, dw, T, H, W)
        r00, k00 = _corner(tt, t_ok, h0, w0, H, W, m_l)
        r01, k01 = _corner(tt, t_ok, h0, w0 + 1, H, W, m_l)
        r10, k10 = _corner(tt, t_ok, h0 + 1, w0, H, W, m_l)
        r11, k11 = _corner(tt, t_ok, h0 + 1, w0 + 1, H, W, m_l)
        xb = x_ptr + i_b * L * C + o_c[None, :]
        v00 = tl.load(xb + r00[:, None] * C, mask=k00[:, None] & m_c[None, :], other=0.0).to(tl.float32)
        v01 = tl.load(xb + r01[:, None] * C, mask=k01[:, None] & m_c[None, :], other=0.0).to(tl.float32)
        v10 = tl.load(xb + r10[:, None] * C, mask=k10[:, None] & m_c[None, :], other=0.0).to(tl.float32)
        v11 = tl.load(xb + r11[:, None] * C, mask=k11[:, None] & m_c[None, :], other=0.0).to(tl.float32)
        lh2 = lh[:, None]
        lw2 = lw[:, None]
        s = (1.0 - lh2) * ((1.0 - lw2) * v00 + lw2 * v01) + lh2 * ((1.0 - lw2) * v10 + lw2 * v11)
        acc += wt[None, :] * (mk[:, None] * s)
    m = m_l[:, None] & m_c[None, :]
    tl.store(out_ptr + (i_b * L + o_l)[:, None] * C + o_c[None, :], acc, mask=m)


@triton.jit(do_not_specialize=["T", "H", "W", "L"])
def _deform_bwd_kernel(x_ptr, off_ptr, mask_ptr, w_ptr, taps_ptr, dout_ptr,
                       doff_ptr, dmask_ptr, dwp_ptr, key_ptr, coef_ptr,
                       T, H, W, L, C, G, P, CPG, NLB, NCB, SENTINEL,
                       BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    i_l = pid % NLB
    i_bg = pid // NLB
    i_b = i_bg // G
    i_g = i_bg % G
    o_l = i_l * BLOCK_L + tl.arange(0, BLOCK_L)
    m_l = o_l < L
    for p in range(P):
        dt = tl.load(taps_ptr + p * 3)
        dh = tl.load(taps_ptr + p * 3 + 1)
        dw = tl.load(taps_ptr + p * 3 + 2)
        o_m = ((i_b * L + o_l) * G + i_g) * P + p
        oh = tl.load(off_ptr + 2 * o_m, mask=m_l, other=0.0).to(tl.float32)
        ow = tl.load(off_ptr + 2 * o_m + 1, mask=m_l, other=0.0).to(tl.float32)
        mk = tl.load(mask_ptr + o_m, mask=m_l, other=0.0).to(tl.float32)
        tt, t_ok, h0, w0, lh, lw = _sample_setup(o_l, oh, ow, dt, dh, dw, T, H, W)
        r00, k00 = _corner(tt, t_ok, h0, w0, H, W, m_l)
        r01, k01 = _corner(tt, t_ok, h0, w0 + 1, H, W, m_l)
        r10, k10 = _corner(tt, t_ok, h0 + 1, w0, H, W, m_l)
        r11, k11 = _corner(tt, t_ok, h0 + 1, w0 + 1, H, W, m_l)
        lh2 = lh[:, None]
        lw2 = lw[:, None]
        d_m = tl.zeros([BLOCK_L], dtype=tl.float32)  # d out / d mask, summed over the group's channels
        d_lh = tl.zeros([BLOCK_L], dtype=tl.float32)  # d out / d lh (= d off_h) without the mask factor
        d_lw = tl.zeros([BLOCK_L], dtype=tl.float32)
        for i_c in range(NCB):
            o_cg = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
            m_c = o_cg < CPG
            o_c = i_g * CPG + o_cg
            wt = tl.load(w_ptr + p * C + o_c, mask=m_c, other=0.0).to(tl.float32)
            m = m_l[:, None] & m_c[None, :]
            dy = tl.load(dout_ptr + (i_b * L + o_l)[:, None] * C + o_c[None, :], mask=m, other=0.0).to(tl.float32)
            xb = x_ptr + i_b * L * C + o_c[None, :]
            v00 = tl.load(xb + r00[:, None] * C, mask=k00[:, None] & m_c[None, :], other=0.0).to(tl.float32)
            v01 = tl.load(xb + r01[:, None] * C, mask=k01[:, None] & m_c[None, :], other=0.0).to(tl.float32)
            v10 = tl.load(xb + r10[:, None] * C, mask=k10[:, None] & m_c[None, :], other=0.0).to(tl.float32)
            v11 = tl.load(xb + r11[:, None] * C, mask=k11[:, None] & m_c[None, :], other=0.0).to(tl.float32)
            s = (1.0 - lh2) * ((1.0 - lw2) * v00 + lw2 * v01) + lh2 * ((1.0 - lw2) * v10 + lw2 * v11)
            gy = dy * wt[None, :]
            d_m += tl.sum(gy * s, axis=1)
            d_lh += tl.sum(gy * ((1.0 - lw2) * (v10 - v00) + lw2 * (v11 - v01)), axis=1)
            d_lw += tl.sum(gy * ((1.0 - lh2) * (v01 - v00) + lh2 * (v11 - v10)), axis=1)
            # d weight[p, c]: partial over this program's tokens, one row per (batch, token block)
            dwp = tl.sum(mk[:, None] * s * dy, axis=0)
            tl.store(dwp_ptr + ((i_b * NLB + i_l) * P + p) * C + o_c, dwp, mask=m_c)
        tl.store(dmask_ptr + o_m, d_m, mask=m_l)
        tl.store(doff_ptr + 2 * o_m, mk * d_lh, mask=m_l)
        tl.store(doff_ptr + 2 * o_m + 1, mk * d_lw, mask=m_l)
        # d x entries: corner q of (token, group, tap) adds coef * weight[p, c] * dout[b, l, c] to x[b, key, c]
        key_base = (i_b * G + i_g) * L
        o_e = 4 * o_m
        tl.store(key_ptr + o_e, tl.where(k00, key_base + r00, SENTINEL), mask=m_l)
        tl.store(key_ptr + o_e + 1, tl.where(k01, key_base + r01, SENTINEL), mask=m_l)
        tl.store(key_ptr + o_e + 2, tl.where(k10, key_base + r10, SENTINEL), mask=m_l)
        tl.store(key_ptr + o_e + 3, tl.where(k11, key_base + r11, SENTINEL), mask=m_l)
        tl.store(coef_ptr + o_e, mk * (1.0 - lh) * (1.0 - lw), mask=m_l)
        tl.store(coef_ptr + o_e + 1, mk * (1.0 - lh) * lw, mask=m_l)
        tl.store(coef_ptr + o_e + 2, mk * lh * (1.0 - lw), mask=m_l)
        tl.store(coef_ptr + o_e + 3, mk * lh * lw, mask=m_l)


@triton.jit(do_not_specialize=["L", "NKEYS"])
def _deform_dx_kernel(dout_ptr, w_ptr, perm_ptr, coef_ptr, segptr_ptr, dx_ptr,
                      L, C, G, P, CPG, NKEYS, NCB,
                      BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    # key = (b*G + g)*L + n: one source pixel n of batch b seen by offset group g. Its entries are
    # perm[segptr[key]:segptr[key+1]] (entry = (((b*L + l)*G + g)*P + p)*4 + corner), summed in that order.
    pid = tl.program_id(0).to(tl.int64)
    i_c = pid % NCB
    i_k = pid // NCB
    o_k = i_k * BLOCK_K + tl.arange(0, BLOCK_K)
    m_k = o_k < NKEYS
    i_b = o_k // (G * L)
    i_g = (o_k // L) % G
    n = o_k % L
    start = tl.load(segptr_ptr + o_k, mask=m_k, other=0)
    cnt = tl.load(segptr_ptr + o_k + 1, mask=m_k, other=0) - start
    o_cg = i_c * BLOCK_C + tl.arange(0, BLOCK_C)
    m = m_k[:, None] & (o_cg < CPG)[None, :]
    o_c = i_g[:, None] * CPG + o_cg[None, :]
    acc = tl.zeros([BLOCK_K, BLOCK_C], dtype=tl.float32)
    max_cnt = tl.max(cnt, axis=0)
    for i in range(0, max_cnt):
        m_e = m_k & (i < cnt)
        e = tl.load(perm_ptr + start + i, mask=m_e, other=0)
        src = (e // (4 * P * G)) % L
        p = (e // 4) % P
        cf = tl.load(coef_ptr + e, mask=m_e, other=0.0)
        me2 = m & m_e[:, None]
        dy = tl.load(dout_ptr + (i_b * L + src)[:, None] * C + o_c, mask=me2, other=0.0).to(tl.float32)
        wt = tl.load(w_ptr + p[:, None] * C + o_c, mask=me2, other=0.0).to(tl.float32)
        acc += cf[:, None] * (wt * dy)
    tl.store(dx_ptr + (i_b * L + n)[:, None] * C + o_c, acc, mask=m)


# ------------------------------------------------------------------------------------------------------------------
# launchers
# ------------------------------------------------------------------------------------------------------------------


def _blocks(L: int, cpg: int) -> tuple[int, int]:
    """(tokens, channels) per tile. GPU: ~512 elements, so the four corner gathers (64-bit addresses) stay in
    registers (sm_90 / triton 3.6: 2048-element tiles spill, 512 use ~140 (fwd) / ~220 (bwd) registers)."""
    if not gpu_geometry():
        return min(next_pow2(L), 64), min(next_pow2(cpg), 64)
    block_c = min(next_pow2(cpg), 32)
    return max(16, min(64, 512 // block_c)), block_c


def deformable_fwd(x: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                   taps: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Forward launcher: ``[Bsz, L, C]`` in ``x.dtype`` (inputs contiguous, taps int64 on x's device)."""
    T, H, W = shape
    Bsz, L, C = x.shape
    G, P = offsets.shape[2], offsets.shape[3]
    cpg = C // G
    out = torch.empty_like(x)
    if out.numel() == 0:
        return out
    BL, BC = _blocks(L, cpg)
    NLB, NCB = cdiv(L, BL), cdiv(cpg, BC)
    with device_guard(x):
        _deform_fwd_kernel[(Bsz * G * NLB * NCB,)](x, offsets, mask, weight, taps, out, T, H, W, L, C, G, P, cpg,
                                                    NLB, NCB, BLOCK_L=BL, BLOCK_C=BC, num_warps=4)
    return out


def deformable_bwd(dout: torch.Tensor, x: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor,
                   weight: torch.Tensor, taps: torch.Tensor, shape: tuple[int, int, int]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launcher: ``(dx, d_offsets, d_mask, d_weight)`` in the dtypes of the inputs; deterministic."""
    T, H, W = shape
    Bsz, L, C = x.shape
    G, P = offsets.shape[2], offsets.shape[3]
    cpg = C // G
    dev = x.device
    doff = torch.empty(offsets.shape, device=dev, dtype=torch.float32)
    dmask = torch.empty(mask.shape, device=dev, dtype=torch.float32)
    n_entries = Bsz * L * G * P * 4
    nkeys = Bsz * G * L
    keys = torch.empty(n_entries, device=dev, dtype=torch.int64)
    coef = torch.empty(n_entries, device=dev, dtype=torch.float32)
    BL, BC = _blocks(L, cpg)
    NLB, NCB = cdiv(L, BL), cdiv(cpg, BC)
    dwp = torch.zeros(Bsz * NLB, P, C, device=dev, dtype=torch.float32)
    dx = torch.empty_like(x)
    if x.numel() == 0:
        return dx.zero_(), doff.zero_().to(offsets.dtype), dmask.zero_().to(mask.dtype), torch.zeros_like(weight)
    with device_guard(x):
        _deform_bwd_kernel[(Bsz * G * NLB,)](x, offsets, mask, weight, taps, dout, doff, dmask, dwp, keys, coef,
                                              T, H, W, L, C, G, P, cpg, NLB, NCB, nkeys,
                                              BLOCK_L=BL, BLOCK_C=BC, num_warps=4)
        # deterministic scatter: stable sort of the entries by source pixel, then one owner per pixel (CSR)
        sorted_keys, perm = torch.sort(keys, stable=True)
        segptr = torch.searchsorted(sorted_keys, torch.arange(nkeys + 1, device=dev, dtype=torch.int64))
        gpu = gpu_geometry()
        BCX = min(next_pow2(cpg), 32 if gpu else 64)
        BK = max(16, 512 // BCX) if gpu else min(next_pow2(nkeys), 64)
        NCBX = cdiv(cpg, BCX)
        _deform_dx_kernel[(cdiv(nkeys, BK) * NCBX,)](dout, weight, perm, coef, segptr, dx, L, C, G, P, cpg, nkeys,
                                                      NCBX, BLOCK_K=BK, BLOCK_C=BCX, num_warps=4)
    dweight = dwp.sum(0).to(weight.dtype)
    return dx, doff.to(offsets.dtype), dmask.to(mask.dtype), dweight


# ---- custom ops: opaque to torch.compile (dynamo traces _DeformableFn and keeps these as graph nodes)


@torch.library.custom_op("glsmamba::deformable_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor, taps: torch.Tensor,
            T: int, H: int, W: int) -> torch.Tensor:
    return deformable_fwd(x, offsets, mask, weight, taps, (T, H, W))


@_fwd_op.register_fake
def _(x, offsets, mask, weight, taps, T, H, W):
    return torch.empty_like(x)


@torch.library.custom_op("glsmamba::deformable_bwd", mutates_args=())
def _bwd_op(dout: torch.Tensor, x: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
            taps: torch.Tensor, T: int, H: int, W: int) -> list[torch.Tensor]:
    return list(deformable_bwd(dout, x, offsets, mask, weight, taps, (T, H, W)))


@_bwd_op.register_fake
def _(dout, x, offsets, mask, weight, taps, T, H, W):
    return [torch.empty_like(x), torch.empty_like(offsets), torch.empty_like(mask), torch.empty_like(weight)]


class _DeformableFn(torch.autograd.Function):
    """Forward and backward are the Triton kernels above (no autograd through a reference)."""

    @staticmethod
    def forward(ctx, x, offsets, mask, weight, taps, shape):
        ctx.save_for_backward(x, offsets, mask, weight, taps)
        ctx.shape = shape
        return _fwd_op(x, offsets, mask, weight, taps, *shape)

    @staticmethod
    def backward(ctx, dout):
        x, offsets, mask, weight, taps = ctx.saved_tensors
        dx, doff, dmask, dweight = _bwd_op(dout.contiguous(), x, offsets, mask, weight, taps, *ctx.shape)
        return dx, doff, dmask, dweight, None, None


# ------------------------------------------------------------------------------------------------------------------
# public
# ------------------------------------------------------------------------------------------------------------------


def deformable_aggregate(x: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                         taps: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Bilinear space-time deformable aggregation (STMM modulation), Triton forward and backward.

    Args:
        x: ``[Bsz, L, C]`` tokens in natural order ``l = (t*H + h)*W + w``.
        offsets: ``[Bsz, L, Goff, P, 2]`` fractional ``(off_h, off_w)`` per token, offset group and tap.
        mask: ``[Bsz, L, Goff, P]`` modulation (already sigmoid-ed by the caller).
        weight: ``[P, C]`` depthwise tap weights.
        taps: ``[P, 3]`` integer ``(dt, dh, dw)`` (any device), e.g. :data:`SPATIAL_TAPS`, :data:`TEMPORAL_TAPS`.
        shape: ``(T, H, W)`` with ``T*H*W == L``.

    Returns:
        ``[Bsz, L, C]`` in ``x.dtype``; fp32 accumulation. The backward returns grads for x, offsets, mask and
        weight with no float atomics (bit-reproducible run to run).
    """
    T, H, W, _ = _check_deformable(x, offsets, mask, weight, taps, shape)
    check_runnable(x, offsets, mask, weight, op="deformable_aggregate")
    taps = taps.to(device=x.device, dtype=torch.int64).contiguous()
    return _DeformableFn.apply(x.contiguous(), offsets.contiguous(), mask.contiguous(), weight.contiguous(), taps,
                               (T, H, W))
