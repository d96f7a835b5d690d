"""Triton device functions and small kernels shared by the scan kernels (``selective_scan.py``, ``ordered_scan.py``).

One loop body serves every scan: a tile is ``[R, T]`` (R independent rows, each a channel or a chunk of one
channel, and T consecutive steps of the scan). The caller computes the tile's addresses (channel-first rows,
channel-last rows, rows gathered through a scan order) and the body does the same work for all of them:

  * dt/u/z are loaded once per tile; the state index n is a ``tl.static_range`` loop; B_n and C_n are rows of a
    ``(..., N, L)`` tensor, contiguous along the steps (the launchers transpose B/C into that layout);
  * per n: ``a = exp2(dt * A[n] * log2 e)``, ``b = dt u B_n``, one ``tl.associative_scan`` along the steps, and
    ``y += h C_n``: no reduction over n ever crosses threads, and the scan's shuffles are shared by the
    elements a thread holds;
  * the state carried between tiles is a tuple of N ``[R]`` tensors; it enters a tile folded into the first
    step's ``b`` and leaves it as the last step's h.

The backward body recomputes h from the state at the tile start (a forward checkpoint) and runs the adjoint
``lam_t = dy_t C_t + a_{t+1} lam_{t+1}`` as a reverse scan of the same tile, with ``a_{t+1}`` from the next step's
delta and the adjoint entering from the right folded into the last step. Chunk summaries (the state a chunk
passes on from a zero start, and the adjoint it passes back) need no scan: they are sums weighted by
``exp2(A log2 e * cumsum(dt))``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from glsmamba.kernels._utils import cdiv, gpu_geometry, record_build

record_build()  # Triton decorates the kernels below in the mode TRITON_INTERPRET names now

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
"""log2(e): the kernels scale A by it once and use ``exp2`` (a constexpr global, readable inside ``@triton.jit``)."""
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)


@triton.jit
def affine_combine(a1, b1, a2, b2):
    """Compose (a1, b1) then (a2, b2) for ``tl.associative_scan``: h -> a2 (a1 h + b1) + b2."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def fast_log2(x, FAST: tl.constexpr):
    """log2; on the GPU the single-instruction ``lg2.approx`` (the interpreter has no inline asm)."""
    if FAST:
        y = tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                      pack=1)
    else:
        y = tl.log2(x)
    return y


@triton.jit
def sigmoid(x, FAST: tl.constexpr):
    """1 / (1 + e^-x) with exp2 and (on the GPU) the approximate division."""
    return tl.fdiv(tl.full(x.shape, 1.0, tl.float32), 1.0 + tl.exp2(-x * LOG2E), ieee_rounding=not FAST)


@triton.jit
def softplus20(x, FAST: tl.constexpr):
    """softplus with mamba_ssm's threshold: x above 20 passes through (exp2/log2: no libdevice)."""
    return tl.where(x <= 20.0, fast_log2(1.0 + tl.exp2(x * LOG2E), FAST) * LN2, x)


@triton.jit
def join_steps(vals):
    """Interleave VEC sub-tiles ``[R, T / VEC]`` (sub-tile k holding steps ``j * VEC + k``) into one ``[R, T]``
    tile whose VEC consecutive steps lie in one thread (joins only: register renaming, no data movement)."""
    VEC: tl.constexpr = len(vals)
    if VEC == 1:
        v = vals[0]
    elif VEC == 2:
        v = tl.join(vals[0], vals[1])
    elif VEC == 4:  # innermost join = fastest step bit
        v = tl.join(tl.join(vals[0], vals[2]), tl.join(vals[1], vals[3]))
    else:
        v = tl.join(tl.join(tl.join(vals[0], vals[4]), tl.join(vals[2], vals[6])),
                    tl.join(tl.join(vals[1], vals[5]), tl.join(vals[3], vals[7])))
    return tl.reshape(v, [vals[0].shape[0], vals[0].shape[1] * VEC])


@triton.jit
def split_steps(v, VEC: tl.constexpr):
    """Inverse of :func:`join_steps`: a tuple of VEC sub-tiles."""
    R: tl.constexpr = v.shape[0]
    J: tl.constexpr = v.shape[1] // VEC
    if VEC == 1:
        out = (v,)
    elif VEC == 2:
        a, b = tl.split(tl.reshape(v, [R, J, 2]))
        out = (a, b)
    elif VEC == 4:
        e, o = tl.split(tl.reshape(v, [R, J, 2, 2]))  # split the fastest bit first
        e0, e1 = tl.split(e)
        o0, o1 = tl.split(o)
        out = (e0, o0, e1, o1)
    else:
        e, o = tl.split(tl.reshape(v, [R, J, 2, 2, 2]))
        ee, eo = tl.split(e)
        oe, oo = tl.split(o)
        e00, e01 = tl.split(ee)
        e10, e11 = tl.split(eo)
        o00, o01 = tl.split(oe)
        o10, o11 = tl.split(oo)
        out = (e00, o00, e10, o10, e01, o01, e11, o11)
    return out


@triton.jit
def load_tile(ptr, off, mask, MASKED: tl.constexpr, GATHER: tl.constexpr = False):
    """``ptr[off]`` in float32 for a ``[R, T]`` tile of offsets (masked loads only where the tile may run past the
    end: full tiles vectorise). The address is formed here, at the use, from the kernel argument and one shared
    integer offset tile (no pointer tile per tensor stays live). GATHER: ``off`` is a tuple of VEC sub-tiles (see
    :func:`join_steps`) and ``mask`` the number of valid steps (``[R, 1]`` or scalar): each thread then holds VEC
    consecutive steps of its rows whatever the memory layout (channel-last or gathered rows)."""
    if GATHER:
        VEC: tl.constexpr = len(off)
        vals = ()
        for k in tl.static_range(VEC):
            if MASKED:
                m = (tl.arange(0, off[k].shape[1]) * VEC + k)[None, :] < mask
                vals = vals + (tl.load(ptr + off[k], mask=m, other=0.0).to(tl.float32),)
            else:
                vals = vals + (tl.load(ptr + off[k]).to(tl.float32),)
        v = join_steps(vals)
    else:
        if MASKED:
            v = tl.load(ptr + off, mask=mask, other=0.0)
        else:
            v = tl.load(ptr + off)
        v = v.to(tl.float32)
    return v


@triton.jit
def store_tile(ptr, off, v, mask, MASKED: tl.constexpr, GATHER: tl.constexpr = False):
    """Store a float32 ``[R, T]`` tile at ``ptr[off]`` in ptr's dtype (see :func:`load_tile`)."""
    if GATHER:
        VEC: tl.constexpr = len(off)
        vals = split_steps(v, VEC)
        for k in tl.static_range(VEC):
            if MASKED:
                m = (tl.arange(0, off[k].shape[1]) * VEC + k)[None, :] < mask
                tl.store(ptr + off[k], vals[k].to(ptr.dtype.element_ty), mask=m)
            else:
                tl.store(ptr + off[k], vals[k].to(ptr.dtype.element_ty))
    else:
        if MASKED:
            tl.store(ptr + off, v.to(ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(ptr + off, v.to(ptr.dtype.element_ty))


@triton.jit
def dt_tile(dl_ptr, off, mask, lim, bias, SOFTPLUS: tl.constexpr, MASKED: tl.constexpr, FAST: tl.constexpr,
            GATHER: tl.constexpr = False):
    """(dt, pre) of a delta tile: pre = delta + bias, dt = softplus20(pre) or pre; dt = 0 where masked (padded
    steps then decay by 1 and add nothing). ``mask`` ``[R, T]``; ``lim`` the valid steps (GATHER loads)."""
    if GATHER:
        pre = load_tile(dl_ptr, off, lim, MASKED, True) + bias[:, None]
    else:
        pre = load_tile(dl_ptr, off, mask, MASKED) + bias[:, None]
    if SOFTPLUS:
        dt = softplus20(pre, FAST)
    else:
        dt = pre
    if MASKED:
        dt = tl.where(mask, dt, 0.0)
    return dt, pre


@triton.jit
def shift_next(x, VEC: tl.constexpr):
    """``y[:, t] = x[:, t + 1]`` along the steps of an ``[R, T]`` tile (the last step gets any value): with VEC
    steps per thread, VEC - 1 of them are register renaming and one is a single-register warp gather."""
    vals = split_steps(x, VEC)
    J: tl.constexpr = x.shape[1] // VEC
    j = tl.arange(0, J)[None, :] + tl.zeros([x.shape[0], 1], dtype=tl.int32)
    nxt = tl.gather(vals[0], tl.minimum(j + 1, J - 1), 1)
    return join_steps(vals[1:] + (nxt,))


@triton.jit
def adjoint_scan(a, c, VEC: tl.constexpr):
    """``lam_t = c_t + a_{t+1} lam_{t+1}`` (``lam_{T-1} = c_{T-1}``) on an ``[R, T]`` tile of VEC steps per thread
    (:func:`join_steps`), without reversing the tile across the lanes (3 x VEC shuffles per reverse scan): each
    thread folds its steps into one affine map, a reverse scan over the ``T / VEC`` columns chains them, and each
    thread unfolds its steps from the adjoint its right neighbour passes."""
    av = split_steps(a, VEC)
    cv = split_steps(c, VEC)
    J: tl.constexpr = a.shape[1] // VEC
    j = tl.arange(0, J)[None, :] + tl.zeros([a.shape[0], 1], dtype=tl.int32)
    a_next = tl.gather(av[0], tl.minimum(j + 1, J - 1), 1)  # a of the step after each column's last one
    fa = a_next
    fc = cv[VEC - 1]
    for r in tl.static_range(VEC - 1):  # fold the column's steps from its last one down: lam_first = fc + fa * in
        fc = cv[VEC - 2 - r] + av[VEC - 1 - r] * fc
        fa = av[VEC - 1 - r] * fa
    _, start = tl.associative_scan((fa, fc), 1, affine_combine, reverse=True)  # adjoint at each column's first step
    inc = tl.where(j == J - 1, 0.0, tl.gather(start, tl.minimum(j + 1, J - 1), 1))  # entering each column
    lam = cv[VEC - 1] + a_next * inc
    out = (lam,)
    for r in tl.static_range(VEC - 1):
        lam = cv[VEC - 2 - r] + av[VEC - 1 - r] * lam
        out = (lam,) + out
    return join_steps(out)


@triton.jit
def row_last(x, last):
    """The last step of every row of an ``[R, T]`` tile (``last`` marks it): ``[R]``."""
    return tl.sum(tl.where(last, x, 0.0), 1)


@triton.jit
def load_steps(ptr, rows, off, lim, R: tl.constexpr, T: tl.constexpr, MASKED: tl.constexpr, PAIRS: tl.constexpr):
    """T contiguous steps of R rows, in float32: element ``ptr[rows + off + j]`` for j < T (``rows`` ``[R, 1]``
    integer offsets of the rows' first step in this tile, ``off`` a scalar offset; the address is formed from
    the kernel argument last, so no per-state pointer stays live across tiles); steps ``>= lim`` read 0 when
    MASKED. PAIRS (bfloat16 rows, even offsets): read two steps per 32-bit word and widen each with one shift or
    mask (no unpacking)."""
    if PAIRS:
        j = tl.arange(0, T // 2)[None, :]
        p = ptr.to(tl.pointer_type(tl.int32)) + ((rows >> 1) + ((off >> 1) + j))
        if MASKED:
            w = tl.load(p, mask=2 * j < lim, other=0)
        else:
            w = tl.load(p)
        lo = (w << 16).to(tl.float32, bitcast=True)
        hi = (w & -65536).to(tl.float32, bitcast=True)
        v = tl.reshape(tl.join(lo, hi), [R, T])
    else:
        j = tl.arange(0, T)[None, :]
        if MASKED:
            v = tl.load(ptr + (rows + (off + j)), mask=j < lim, other=0.0)
        else:
            v = tl.load(ptr + (rows + (off + j)))
        v = v.to(tl.float32)
    return v


@triton.jit
def fwd_tile(u_ptr, dl_ptr, z_ptr, o_ptr, off, B_ptr, C_ptr, B_rows, C_rows, lim, s_Bn, s_Cn, mask, first, last, rst,
             A2s, hs, bias, Dv, NS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr,
             HAS_Z: tl.constexpr, HAS_RESET: tl.constexpr, MASKED: tl.constexpr, ACCUM: tl.constexpr,
             PAIRS: tl.constexpr, FAST: tl.constexpr, GATHER: tl.constexpr = False, acc_on=None,
             BC_PAD: tl.constexpr = False):
    """One forward tile: writes (or, with ACCUM and ``acc_on``, adds into) the output and returns the state after
    the tile. BC_PAD: B/C rows are padded to whole tiles (read unmasked even in a MASKED tile).

    ``u_ptr .. o_ptr`` share the offset tile ``off`` (see :func:`load_tile`); ``B_rows``/``C_rows`` ``[R, 1]`` are the offsets of each
    row's first step of the tile at n = 0 in B/C (row n at ``+ n * s_Bn``, ``lim`` valid steps); ``hs`` is the
    state entering
    the tile (N ``[R]`` tensors); ``rst`` (HAS_RESET) marks steps whose incoming state is zeroed."""
    R: tl.constexpr = B_rows.shape[0]
    T: tl.constexpr = first.shape[1]
    if GATHER:
        lmask = lim
    else:
        lmask = mask
    dt, _ = dt_tile(dl_ptr, off, mask, lim, bias, SOFTPLUS, MASKED, FAST, GATHER)
    u = load_tile(u_ptr, off, lmask, MASKED, GATHER)
    dtu = dt * u
    if HAS_D:
        y = Dv[:, None] * u
    else:
        y = tl.zeros_like(u)
    new = ()
    for n in tl.static_range(NS):
        Bn = load_steps(B_ptr, B_rows, n * s_Bn, lim, R, T, MASKED and not BC_PAD, PAIRS)
        Cn = load_steps(C_ptr, C_rows, n * s_Cn, lim, R, T, MASKED and not BC_PAD, PAIRS)
        a = tl.exp2(dt * A2s[n][:, None])
        if HAS_RESET:
            a = tl.where(rst, 0.0, a)
        b = dtu * Bn
        b = tl.where(first, b + a * hs[n][:, None], b)
        _, h = tl.associative_scan((a, b), 1, affine_combine)
        y += h * Cn
        new = new + (row_last(h, last),)
    if HAS_Z:
        z = load_tile(z_ptr, off, lmask, MASKED, GATHER)
        y = y * z * sigmoid(z, FAST)
    if ACCUM:  # a later direction of a group: add to what the earlier ones wrote (a masked, uniform read)
        if GATHER:
            y += load_tile(o_ptr, off, tl.where(acc_on, lim, 0), True, GATHER)
        else:
            y += load_tile(o_ptr, off, mask & acc_on, True, GATHER)
    store_tile(o_ptr, off, y, lmask, MASKED, GATHER)
    return new


@triton.jit
def summary_tile(dl_ptr, v1_ptr, v2_ptr, off, P_ptr, P_rows, s_Pn, mask, rst, A2s, acc, offs, bias,
                 NS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_V2: tl.constexpr, HAS_RESET: tl.constexpr,
                 MASKED: tl.constexpr, FORWARD: tl.constexpr, FAST: tl.constexpr, GATHER: tl.constexpr = False,
                 lim=None):
    """One tile of a chunk summary, without a scan.

    FORWARD: the state a chunk passes on from a zero start, ``sum_s prod_{r > s} a_r * dt_s u_s B_s`` (v1 = u,
    P = B); the accumulated value decays by the tile's ``exp2(A2 * sum dt)`` before the tile adds its terms.
    Backward: the adjoint passed back to the previous chunk from a zero end, ``sum_s prod_{r <= s} a_r * dy_s
    C_s`` (v1 = dout, v2 = z when the output is gated, P = C), with ``offs`` the dt summed over the earlier tiles
    of the chunk. With resets, steps before the tile's last reset (forward) or from its first reset on
    (backward) contribute nothing. Returns (acc, offs + sum dt)."""
    lm = mask
    if GATHER:
        lm = lim
    dt, _ = dt_tile(dl_ptr, off, mask, lim, bias, SOFTPLUS, MASKED, FAST, GATHER)
    v = load_tile(v1_ptr, off, lm, MASKED, GATHER)
    if FORWARD:
        v = dt * v
    elif HAS_V2:
        z = load_tile(v2_ptr, off, lm, MASKED, GATHER)
        v = v * z * sigmoid(z, FAST)
    cum = tl.cumsum(dt, 1)
    tot = tl.sum(dt, 1)
    if FORWARD:
        ex = tot[:, None] - cum  # sum of dt after each step
    else:
        ex = offs[:, None] + cum  # sum of dt up to and including each step
    hit = tl.zeros_like(tot)
    if HAS_RESET:
        steps = tl.zeros_like(dt) + tl.arange(0, dt.shape[1])[None, :].to(tl.float32)
        if FORWARD:  # a reset at s: nothing before s reaches the end
            lim = tl.max(tl.where(rst, steps, -1.0), 1)
            keep = steps >= lim[:, None]
        else:  # a reset at s: a_s = 0 cuts every term from s on
            lim = tl.min(tl.where(rst, steps, 1e9), 1)
            keep = steps < lim[:, None]
        hit = tl.max(tl.where(rst, 1.0, 0.0), 1)
    new = ()
    for n in tl.static_range(NS):
        w = tl.exp2(ex * A2s[n][:, None])
        if HAS_RESET:
            w = tl.where(keep, w, 0.0)
        term = tl.sum(w * v * load_tile(P_ptr, P_rows + n * s_Pn, mask, MASKED), 1)
        if FORWARD:
            dec = tl.exp2(tot * A2s[n])
            if HAS_RESET:
                dec = tl.where(hit > 0.0, 0.0, dec)
            new = new + (acc[n] * dec + term,)
        else:
            new = new + (acc[n] + term,)
    return new, offs + tot


@triton.jit
def _scan_carry_kernel(loc_ptr, dsum_ptr, rst_ptr, A_ptr, init_ptr, out_ptr, NCHUNK, ROWS, NS, s_Ar, s_An, DIRS,
               BLOCK: tl.constexpr, REVERSE: tl.constexpr, HAS_RESET: tl.constexpr, HAS_INIT: tl.constexpr):
    """Chain chunk summaries: ``out[c]`` = the state entering chunk c (REVERSE: the adjoint entering it from the
    right). ``loc``/``out`` ``(P, NCHUNK, ROWS, NS)`` fp32, ``dsum`` ``(P, NCHUNK, ROWS)``; sequence p uses A rows
    ``(p % DIRS) * ROWS + row`` (A ``(DIRS * ROWS, NS)``, scaled here) and the reset flags ``rst[p % DIRS, c]``
    (a reset inside chunk c passes nothing on)."""
    e = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)  # (row, n) flattened
    p = tl.program_id(1).to(tl.int64)
    m = e < ROWS * NS
    r = e // NS
    n = e % NS
    A2 = tl.load(A_ptr + ((p % DIRS) * ROWS + r) * s_Ar + n * s_An, mask=m, other=0.0).to(tl.float32) * LOG2E
    if HAS_INIT:
        h = tl.load(init_ptr + p * ROWS * NS + e, mask=m, other=0.0).to(tl.float32)
    else:
        h = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(NCHUNK):
        if REVERSE:
            c = NCHUNK - 1 - i
        else:
            c = i
        o = (p * NCHUNK + c) * ROWS * NS + e
        tl.store(out_ptr + o, h, mask=m)
        dec = tl.exp2(tl.load(dsum_ptr + (p * NCHUNK + c) * ROWS + r, mask=m, other=0.0) * A2)
        if HAS_RESET:
            dec = tl.where(tl.load(rst_ptr + (p % DIRS) * NCHUNK + c) != 0, 0.0, dec)
        h = dec * h + tl.load(loc_ptr + o, mask=m, other=0.0)


@triton.jit
def _sum_rows_kernel(src_ptr, dst_ptr, P, M, BLOCK: tl.constexpr):
    """``dst[q, m] = sum_p src[q, p, m]`` in the fixed order p = 0, 1, ... (deterministic; fp32 accumulation;
    q = program_id(1) batches independent sums)."""
    o = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    q = tl.program_id(1).to(tl.int64)
    m = o < M
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for p in range(P):
        acc += tl.load(src_ptr + (q * P + p) * M + o, mask=m, other=0.0)
    tl.store(dst_ptr + q * M + o, acc.to(dst_ptr.dtype.element_ty), mask=m)


@triton.jit
def acc_pos(t, T: tl.constexpr, VEC: tl.constexpr):
    """Scratch position of step t (0 <= t < T) in an accumulator row written by :func:`acc_add`: the steps a
    thread holds (VEC consecutive ones) are stored as runs of 4 (16 bytes of fp32), run g of every thread in block
    g of the row, so that each block is a contiguous vector load/store in the tile's own layout."""
    if VEC > 4:
        p = ((t % VEC) // 4) * (T // VEC * 4) + (t // VEC) * 4 + t % 4
    else:
        p = t
    return p


@triton.jit
def zero_acc_rows(dB_ptr, dC_ptr, acc_rows, NS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr):
    """Zeroes the dB and dC accumulator rows a backward program owns (:func:`acc_add` adds into them): state n of
    a chunk at ``acc_rows + n * BLOCK_T`` (``acc_rows`` ``[BLOCK_R, 1]``), BLOCK_T steps each."""
    zt = tl.zeros([BLOCK_R, BLOCK_T], dtype=tl.float32)
    o_t = tl.arange(0, BLOCK_T)[None, :]
    for n in tl.static_range(NS):
        tl.store(dB_ptr + (acc_rows + n * BLOCK_T + o_t), zt)
        tl.store(dC_ptr + (acc_rows + n * BLOCK_T + o_t), zt)


@triton.jit
def acc_add(ptr, rows, v, lim, MASKED: tl.constexpr, VEC: tl.constexpr, PERM: tl.constexpr = True):
    """``ptr[rows + acc_pos(t)] += v[:, t]`` for an fp32 ``[R, T]`` tile in the layout of :func:`join_steps` (rows
    ``[R, 1]``, zeroed by the caller; MASKED: steps ``>= lim`` untouched): each run of 4 steps per thread is one
    contiguous vector, so no layout conversion and no predicated first read. ``PERM=False``: at ``rows + t``."""
    if PERM and VEC > 4:
        vals = split_steps(v, VEC)
        W: tl.constexpr = v.shape[1] // VEC * 4
        j = tl.arange(0, W)[None, :]
        for g in tl.static_range(VEC // 4):
            run = ()
            for i in tl.static_range(4):
                run = run + (vals[g * 4 + i],)
            part = join_steps(run)
            off = rows + (g * W + j)
            if MASKED:
                m = ((j // 4) * VEC + (g * 4) + j % 4) < lim
                tl.store(ptr + off, part + tl.load(ptr + off, mask=m, other=0.0), mask=m)
            else:
                tl.store(ptr + off, part + tl.load(ptr + off))
    else:
        j = tl.arange(0, v.shape[1])[None, :]
        if MASKED:
            m = j < lim
            tl.store(ptr + (rows + j), v + tl.load(ptr + (rows + j), mask=m, other=0.0), mask=m)
        else:
            tl.store(ptr + (rows + j), v + tl.load(ptr + (rows + j)))


@triton.jit
def bwd_tile(u_ptr, dl_ptr, z_ptr, g_ptr, du_ptr, ddl_ptr, dz_ptr, off, B_ptr, C_ptr, bc_rows, s_Bn,
             dB_ptr, dC_ptr, acc_rows, s_dn, mask, lim, first, last, rst, A_ptr, a_off, s_An, h_ptr, nu_ptr,
             dA_ptr, st_off, dA_off, bias, Dv,
             NS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
             HAS_NU: tl.constexpr, HAS_RESET: tl.constexpr, MASKED: tl.constexpr, PAIRS: tl.constexpr,
             VEC: tl.constexpr, FAST: tl.constexpr, GATHER: tl.constexpr = False, BC_PAD: tl.constexpr = False,
             ACC_PERM: tl.constexpr = False, ADJ_COLS: tl.constexpr = False):
    """One backward tile: writes du, ddelta, dz and adds this tile's dB/dC terms into the fp32 accumulators
    ``dB_ptr``/``dC_ptr``, rows ``acc_rows + n * s_dn`` (``[R, 1]``, zeroed by the caller; step t at ``+ t``, or
    at ``acc_pos(t)`` with ACC_PERM: see :func:`acc_add`); stores the dA terms summed over the tile's steps at ``dA_ptr[dA_off + n]``;
    returns (dD ``[R]``, d(delta_bias) ``[R]``) summed over the tile's steps.

    Per row (``[R]`` offsets, addresses formed at each use): ``h_ptr[st_off + n]`` is the state entering the
    tile, ``nu_ptr[st_off + n]`` the adjoint entering it from the right (``a_{t1} lam_{t1}`` for the first step
    t1 after it), ``A_ptr[a_off + n * s_An]`` A (natural units). The adjoint's coefficient ``a_{t+1}`` is the tile's own ``a`` shifted by one
    step (:func:`shift_next`; resets included). The state index loop keeps only dt, dt*u, dy and three
    accumulators live: u, dout, z and delta are re-read after it."""
    if GATHER:
        lm = lim
    else:
        lm = mask
    dt, _ = dt_tile(dl_ptr, off, mask, lim, bias, SOFTPLUS, MASKED, FAST, GATHER)
    u = load_tile(u_ptr, off, lm, MASKED, GATHER)
    dy = load_tile(g_ptr, off, lm, MASKED, GATHER)
    if HAS_Z:
        z = load_tile(z_ptr, off, lm, MASKED, GATHER)
        dy = dy * z * sigmoid(z, FAST)
    dD = tl.sum(dy * u, 1)
    dtu = dt * u
    lB = tl.zeros_like(dt)
    ddt = tl.zeros_like(dt)
    y = tl.zeros_like(dt)
    R: tl.constexpr = dt.shape[0]
    T: tl.constexpr = dt.shape[1]
    for n in tl.static_range(NS):
        An = tl.load(A_ptr + (a_off + n * s_An)).to(tl.float32)
        Bn = load_steps(B_ptr, bc_rows, n * s_Bn, lim, R, T, MASKED and not BC_PAD, PAIRS)
        Cn = load_steps(C_ptr, bc_rows, n * s_Bn, lim, R, T, MASKED and not BC_PAD, PAIRS)
        a = tl.exp2(dt * (An * LOG2E)[:, None])
        if HAS_RESET:
            a = tl.where(rst, 0.0, a)
        b = dtu * Bn
        _, h = tl.associative_scan((a, tl.where(first, b + a * tl.load(h_ptr + (st_off + n))[:, None], b)), 1,
                                   affine_combine)
        if HAS_Z:
            y += h * Cn
        acc_add(dC_ptr, acc_rows + n * s_dn, dy * h, lim, MASKED, VEC, ACC_PERM)
        # a_t h_{t-1} = h_t - b_t, but 0 where h_t = b_t: the same where both are finite, and the oracle's product
        # where delta = +inf (a_t = 0, h_t = b_t = inf: h - b would be inf - inf = NaN); a non-finite h_{t-1} makes
        # h_t NaN (!= b_t) and the difference NaN, as the product is. Also 0 where b_t = h_t = +-inf with a_t > 0
        # (an inf in u or B), where the oracle's product is finite: only dA differs then, and only if that token is
        # the last of its sequence or reset segment (a later step of it adds an infinite term). Only h and b are
        # read, which h - b keeps live anyway: testing a_t = 0 as well kept a live and spilled the backward at the
        # headline shapes (static report).
        ah = tl.where(h == b, 0.0, h - b)
        dyC = dy * Cn
        if HAS_NU:
            dyC = tl.where(last, dyC + tl.load(nu_ptr + (st_off + n))[:, None], dyC)
        if ADJ_COLS:
            lam = adjoint_scan(a, dyC, VEC)
        else:
            _, lam = tl.associative_scan((shift_next(a, VEC), dyC), 1, affine_combine, reverse=True)
        # B again (an L1 hit) rather than live across both scans: the register budget of one warp per chunk
        lB += lam * load_steps(B_ptr, bc_rows, n * s_Bn, lim, R, T, MASKED and not BC_PAD, PAIRS)
        lah = lam * ah
        ddt += An[:, None] * lah
        tl.store(dA_ptr + (dA_off + n), tl.sum(lah * dt, 1))
        acc_add(dB_ptr, acc_rows + n * s_dn, lam * dtu, lim, MASKED, VEC, ACC_PERM)
    u = load_tile(u_ptr, off, lm, MASKED, GATHER)
    ddt += u * lB
    du = dt * lB
    if HAS_D:
        y += Dv[:, None] * u
    g = load_tile(g_ptr, off, lm, MASKED, GATHER)
    if HAS_Z:
        z = load_tile(z_ptr, off, lm, MASKED, GATHER)
        sz = sigmoid(z, FAST)
        if HAS_D:
            du += Dv[:, None] * (g * z * sz)
        store_tile(dz_ptr, off, g * y * sz * (1.0 + z * (1.0 - sz)), lm, MASKED, GATHER)
    elif HAS_D:
        du += Dv[:, None] * g
    store_tile(du_ptr, off, du, lm, MASKED, GATHER)
    if SOFTPLUS:
        _, pre = dt_tile(dl_ptr, off, mask, lim, bias, False, MASKED, FAST, GATHER)
        ddt = tl.where(pre <= 20.0, ddt * sigmoid(pre, FAST), ddt)
    if MASKED:
        ddt = tl.where(mask, ddt, 0.0)
    store_tile(ddl_ptr, off, ddt, lm, MASKED, GATHER)
    return dD, tl.sum(ddt, 1)



# ------------------------------------------------------------------------------------------------------------------
# launcher helpers (Python)
# ------------------------------------------------------------------------------------------------------------------

def none_flag(name: str):
    """A ``triton.heuristics`` entry: True when the argument ``name`` is given (optional inputs travel as None)."""
    return lambda args: args[name] is not None


@triton.jit
def bwd_chunk_rows(C0, L, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr, MASKED: tl.constexpr, IDX: tl.constexpr):
    """A backward program's chunk rows C0 + pid0 * BLOCK_R + r (chunks of BLOCK_T steps). In an unmasked launch the
    rows past the last full chunk (the interpreter geometry puts every full chunk in one program) repeat it: the
    same values to the same addresses."""
    ch = C0 + tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    if not MASKED:
        ch = tl.minimum(ch, L // BLOCK_T - 1)
    return ch.to(IDX)


# Channel rows per forward/summary program under the interpreter: as many as divide the channels (NumPy runs a
# [rows, steps] tile for about the price of a [1, steps] one; the cost is per program and per step).
INTERP_ROWS = (64, 32, 16, 8, 4, 2, 1)


def divisor(n: int, cands: tuple[int, ...] = INTERP_ROWS) -> int:
    """The first candidate dividing n."""
    return next(c for c in cands if n % c == 0)


def index_type(*tensors: torch.Tensor):
    """int32 element offsets (half the address registers) unless a tensor can reach 2**31 elements."""
    return tl.int64 if any(t.numel() >= 2 ** 31 for t in tensors) else tl.int32


def pairs_ok(*rows: torch.Tensor) -> bool:
    """bfloat16 step rows that can be read two steps per 32-bit word (even strides and length)."""
    return all(t.dtype == torch.bfloat16 and all(s % 2 == 0 for s in t.stride()[:-1]) and t.shape[-1] % 2 == 0
               for t in rows)


def vec_of(t: torch.Tensor) -> int:
    """Steps one thread holds in the loop body's layout: a 16-byte vector of t's elements (at most 8)."""
    return min(8, 16 // t.element_size())


def chunked(B: torch.Tensor, ck: int) -> torch.Tensor:
    """(..., N, L) -> (..., n_ck, N, ck): the N rows of every ck-step chunk next to each other (one copy; the tail
    of a partial last chunk is zero), so that state n of a chunk is an immediate offset ``n * ck``."""
    *lead, dstate, length = B.shape
    nck, full = cdiv(length, ck), length // ck
    out = B.new_empty(*lead, nck, dstate, ck)
    out[..., :full, :, :] = B[..., : full * ck].reshape(*lead, dstate, full, ck).transpose(-2, -3)
    if full < nck:
        out[..., full, :, :] = 0
        out[..., full, :, : length - full * ck] = B[..., full * ck:]
    return out


def sum_leading(src: torch.Tensor, dst: torch.Tensor, batches: int = 1) -> torch.Tensor:
    """``dst[q] = src[q].sum(0)`` for ``batches`` independent sums, in a fixed order, by a Triton kernel (src
    ``(batches, P, M)`` contiguous, dst ``(batches, M)`` in its own dtype)."""
    P, M = src.numel() // (batches * (dst.numel() // batches)), dst.numel() // batches
    block = 1024 if gpu_geometry() else 256
    _sum_rows_kernel[(cdiv(M, block), batches)](src_ptr=src, dst_ptr=dst, P=P, M=M, BLOCK=block)
    return dst
