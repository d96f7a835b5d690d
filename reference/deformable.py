"""STMM modulation: bilinear space-time deformable aggregation with per-token offsets and masks (PyTorch reference).

For every token ``l = (t, h, w)`` and tap ``p = (dt, dh, dw)``::

    out[b, l, c] = sum_p weight[p, c] * mask[b, l, g, p]
                   * bilinear(x[b, frame t + dt], h + dh + off_h[b, l, g, p], w + dw + off_w[b, l, g, p], c)

with ``g = c // (C // Goff)`` the offset group of channel c, zero outside the frame (each of the four bilinear
corners is dropped when it falls outside ``[0, H) x [0, W)``, i.e. zero padding) and zero when ``t + dt`` is
outside ``[0, T)``. Bilinear weights use ``floor``: ``h0 = floor(hh)``, ``lh = hh - h0``,
``(1-lh)(1-lw) x[h0, w0] + (1-lh) lw x[h0, w0+1] + lh (1-lw) x[h0+1, w0] + lh lw x[h0+1, w0+1]``.

Two implementations, fp32 (float64 for float64 inputs), autograd by PyTorch:
  * :func:`deformable_aggregate_gathers` -- the oracle, written for obviousness: per tap, four explicit gathers of
    the corner rows (at the clamped position; an outside corner is multiplied by 0).
  * :func:`deformable_aggregate` -- the fast path: the sample positions, corner rows and bilinear weights of all
    taps in a few batched ops over ``(Bsz, L, Goff, P)``, then per tap one ``embedding_bag`` (the four weighted
    corner rows summed in one fused gather, with the mask folded into the corner weights) and one ``addcmul`` with
    the tap weights (the first tap's weighted sample is the sum's start: no zero-filled buffer). The same corners
    are read with the same weights (an outside corner reads the same clamped row with weight 0), so a NaN or inf
    reaches the same outputs as in the oracle; only the rounding of the products differs. Without autograd in
    fp32 on an x86-64 CPU with AVX2 it runs as one call of a C++ kernel (``_cpu_kernels.py``: the same positions,
    corners and coefficients per token, ``GLSMAMBA_CPU_KERNEL``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from glsmamba.reference import _cpu_kernels
from glsmamba.reference.checks import SPATIAL_TAPS, TEMPORAL_TAPS, _check_deformable  # noqa: F401  (re-exported)


def _index(pos: torch.Tensor, size: int) -> torch.Tensor:
    """A float corner coordinate as a valid int64 index: clamped into ``[0, size)``, NaN to 0 (its bilinear weight
    is NaN then, so the row read does not matter; NaN.long() is not an index)."""
    return pos.clamp(0, size - 1).nan_to_num(0.0).long()


def deformable_aggregate_gathers(x: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                                 taps: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The oracle of :func:`deformable_aggregate` (same contract): explicit per-tap gathers."""
    T, H, W, Goff = _check_deformable(x, offsets, mask, weight, taps, shape)
    Bsz, L, C = x.shape
    cpg = C // Goff
    acc = torch.float64 if torch.float64 in (x.dtype, offsets.dtype, mask.dtype, weight.dtype) else torch.float32
    dev = x.device
    xg = x.to(acc).reshape(Bsz, L, Goff, cpg)
    off = offsets.to(acc)
    msk = mask.to(acc)
    wgt = weight.to(acc).reshape(-1, Goff, cpg)
    l = torch.arange(L, device=dev)
    t, h, w = l // (H * W), (l // W) % H, l % W
    out = torch.zeros(Bsz, L, Goff, cpg, dtype=acc, device=dev)
    for p, (dt, dh, dw) in enumerate(taps.tolist()):
        tt = t + dt
        t_ok = ((tt >= 0) & (tt < T))[None, :, None]  # (1, L, 1)
        hh = (h + dh).to(acc)[None, :, None] + off[..., p, 0]  # (Bsz, L, Goff) sample row
        ww = (w + dw).to(acc)[None, :, None] + off[..., p, 1]
        h0, w0 = torch.floor(hh), torch.floor(ww)
        lh, lw = hh - h0, ww - w0
        val = torch.zeros_like(out)
        for ch, cw, bil in ((0, 0, (1 - lh) * (1 - lw)), (0, 1, (1 - lh) * lw),
                            (1, 0, lh * (1 - lw)), (1, 1, lh * lw)):
            hc, wc = h0 + ch, w0 + cw
            ok = t_ok & (hc >= 0) & (hc <= H - 1) & (wc >= 0) & (wc <= W - 1)
            row = (tt.clamp(0, T - 1)[None, :, None] * H + _index(hc, H)) * W + _index(wc, W)
            corner = torch.gather(xg, 1, row[..., None].expand(Bsz, L, Goff, cpg))  # x[b, row, g, :]
            val = val + (bil * ok)[..., None] * corner
        out = out + wgt[p] * msk[..., p, None] * val
    return out.reshape(Bsz, L, C).to(x.dtype)


def deformable_aggregate(x: torch.Tensor, offsets: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor,
                         taps: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Bilinear space-time deformable aggregation (STMM modulation), reference (the fast path; module docstring).

    Args:
        x: ``[Bsz, L, C]`` tokens in natural order ``l = (t*H + h)*W + w``.
        offsets: ``[Bsz, L, Goff, P, 2]`` fractional ``(off_h, off_w)`` per token, offset group and tap.
        mask: ``[Bsz, L, Goff, P]`` modulation (already sigmoid-ed by the caller).
        weight: ``[P, C]`` depthwise tap weights.
        taps: ``[P, 3]`` integer ``(dt, dh, dw)`` (any device), e.g. :data:`SPATIAL_TAPS`, :data:`TEMPORAL_TAPS`.
        shape: ``(T, H, W)`` with ``T*H*W == L``.

    Returns:
        ``[Bsz, L, C]`` in ``x.dtype`` (see the module docstring for the formula).

    Example:
        >>> x = torch.randn(1, 2 * 3 * 4, 8)
        >>> off = torch.zeros(1, 24, 2, 9, 2); m = torch.ones(1, 24, 2, 9)
        >>> deformable_aggregate(x, off, m, torch.randn(9, 8), SPATIAL_TAPS, (2, 3, 4)).shape
        torch.Size([1, 24, 8])
    """
    T, H, W, Goff = _check_deformable(x, offsets, mask, weight, taps, shape)
    Bsz, L, C = x.shape
    cpg = C // Goff
    P = taps.shape[0]
    acc = torch.float64 if torch.float64 in (x.dtype, offsets.dtype, mask.dtype, weight.dtype) else torch.float32
    dev = x.device
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, offsets, mask, weight))
    traced = torch.compiler.is_compiling() or torch.compiler.is_exporting()  # traced: the PyTorch ops below
    if dev.type == "cpu" and not grad and not traced and Bsz * L > 0 and _cpu_kernels.use_kernel(acc):
        return _cpu_kernels.deformable(x, offsets, mask, weight, taps, (T, H, W)).to(x.dtype)
    off, msk = offsets.to(acc), mask.to(acc)
    wgt = weight.to(acc).reshape(P, Goff, cpg)
    tp = taps.to(dev)
    l = torch.arange(L, device=dev)
    t, h, w = l // (H * W), (l // W) % H, l % W
    tt = t[:, None] + tp[:, 0]  # (L, P) frame read by each tap
    t_ok = ((tt >= 0) & (tt < T))[None, :, None]  # (1, L, 1, P)
    hh = (h[:, None] + tp[:, 1]).to(acc)[None, :, None] + off[..., 0]  # (Bsz, L, Goff, P) sample row
    ww = (w[:, None] + tp[:, 2]).to(acc)[None, :, None] + off[..., 1]
    # The four corners as (two rows) x (two columns): per axis the two corner coordinates, whether each is inside
    # and its linear weight (last dim 2), combined by broadcasting into (..., 2, 2) = corners (0,0), (0,1), (1,0),
    # (1,1). coef = ((1-lh) ok_h) ((1-lw) ok_w) (t_ok mask): the oracle's (bil ok) mask with ok in {0, 1}, so the
    # same products in the same order.
    lin = []
    for pos, size in ((hh, H), (ww, W)):
        p0 = torch.floor(pos)
        frac = pos - p0
        pc = torch.stack((p0, p0 + 1), -1)  # (Bsz, L, Goff, P, 2)
        lin.append((_index(pc, size), torch.stack((1 - frac, frac), -1) * ((pc >= 0) & (pc <= size - 1))))
    (ih, wh), (iw, wv) = lin
    frame = (tt.clamp(0, T - 1) * H)[None, :, None, :, None]  # (1, L, 1, P, 1)
    base = (torch.arange(Bsz, device=dev)[:, None, None, None] * L) * Goff + torch.arange(Goff, device=dev)[:, None]
    row = ((frame + ih) * W)[..., :, None] + iw[..., None, :]  # (Bsz, L, Goff, P, 2, 2) natural row of each corner
    idx = row * Goff + base[..., None, None]  # table row of (b, row, g)
    coef = wh[..., :, None] * wv[..., None, :] * (t_ok * msk)[..., None, None]
    idx, coef = idx.view(Bsz, L, Goff, P, 4), coef.view(Bsz, L, Goff, P, 4)
    if P > 1:
        idx, coef = idx.permute(3, 0, 1, 2, 4), coef.permute(3, 0, 1, 2, 4)
    idx, coef = idx.reshape(P, -1, 4), coef.reshape(P, -1, 4)  # (P, Bsz*L*Goff bags, 4 corners)
    table = x.to(acc).reshape(Bsz * L * Goff, cpg)
    # without autograd, unit tap weights (the grouped STMM samples tap by tap with them) are not multiplied by:
    # v * 1 is v, NaN and inf included
    unit = not grad and bool((wgt == 1).all())
    out = None  # the first tap's weighted sample starts the sum (no zero-filled buffer to add it to)
    for p in range(P):
        val = F.embedding_bag(idx[p], table, per_sample_weights=coef[p], mode="sum").view(Bsz, L, Goff, cpg)
        if out is None:
            out = val * wgt[p] if grad else val if unit else val.mul_(wgt[p])
        else:
            out = torch.addcmul(out, val, wgt[p]) if grad else out.add_(val) if unit else out.addcmul_(val, wgt[p])
    return out.reshape(Bsz, L, C).to(x.dtype)
