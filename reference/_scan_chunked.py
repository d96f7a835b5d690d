"""The chunked closed form of the selective scan: the path ``torch.compile`` traces, and the eager path off CPU.

L is cut into chunks of ``CHUNK`` tokens and every chunk is solved at once in closed form. With ``c_t`` the
cumulative sum of dt from the chunk start and ``r`` the chunk's middle,
``h_t = e^{A (c_t - c_r)} (e^{A c_r} h_0 + sum_{s<=t} e^{-A (c_s - c_r)} b_s)``; the sum over s is a prefix sum done
as small triangular matmuls, and the start states are carried across the chunks in log2(K) doubling steps, so the
traced graph does not grow with L. Centring on ``r`` keeps every exponent within the chunk's decay range, which
must stay within +-``MAX_EXPONENT`` (float32's exp() overflows past 88.7). The closed form mixes the tokens of a
chunk (a NaN at one token would reach the whole chunk through the prefix sums, and reach earlier tokens' gradients),
so an input with a chunk too wide for it, or with any NaN/inf in dt, dt*u, B or C, runs the sequential scan of
``_scan_seq.py`` instead, which keeps the oracle's semantics exactly.

Token-major layout: dt, dtu ``(b, L, D)``; B, C ``(b, L, G, N)``; states ``(b, N, D)``, D contiguous.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Tokens solved in closed form at once.
CHUNK = 32
# The prefix sum inside a chunk: triangular matmuls over blocks of SUB tokens, then the block totals carried.
SUB = 8
# exp() of float32 overflows past 88.7: every exponent of the closed form is kept within +-80.
MAX_EXPONENT = 80.0
_LOG2E = 1.0 / math.log(2.0)
# Tokens per block of the torch.export path: its pairwise decays take PAIR_BLOCK times the closed form's memory.
PAIR_BLOCK = 8


def _prefix_sum(W, q):
    """Inclusive prefix sum over dim 2 of ``W (b, K, q, F)`` as small triangular matmuls (``cumsum`` over a
    non-inner dim is far slower)."""
    b, K, _, f = W.shape
    kw = dict(dtype=W.dtype, device=W.device)
    if q <= SUB or q % SUB:
        return torch.matmul(torch.ones(q, q, **kw).tril(), W)
    m = q // SUB
    inner = torch.matmul(torch.ones(SUB, SUB, **kw).tril(), W.view(b, K, m, SUB, f))  # prefix inside each block
    for i in range(1, m):  # carry the running total block by block (in place: autograd records the slices)
        inner[:, :, i] += inner[:, :, i - 1, -1:]
    return inner.view(b, K, q, f)


def _carry_doubling(decay, hend):
    """States entering each chunk, from a zero start: the scan ``h_{k+1} = decay_k h_k + hend_k`` over dim 1 in
    log2(K) doubling steps (Hillis-Steele). Returns (states entering chunks (b, K, N, D), final state)."""
    K = decay.shape[1]
    a, s = decay, hend
    d = 1
    while d < K:
        s = torch.cat([s[:, :d], torch.addcmul(s[:, d:], a[:, d:], s[:, :-d])], 1)
        a = torch.cat([a[:, :d], a[:, d:] * a[:, :-d]], 1)
        d *= 2
    return torch.cat([torch.zeros_like(s[:, :1]), s[:, :-1]], 1), s[:, -1]


def _scan_chunks(dt, dtu, A2t, Bc, Cc):
    """Closed form over K chunks of q tokens from a zero start. dt, dtu ``(b, K, q, D)``; A2t = A log2(e) as
    ``(N, D)``; Bc, Cc ``(b, K, q, G, N)``. Returns (y ``(b, K, q, D)``, state after the last chunk)."""
    b, K, q, dim = dt.shape
    groups, n = Bc.shape[3], Bc.shape[4]
    rep = dim // groups
    cum = _prefix_sum(dt, q)  # c_t: cumulative dt inside each chunk
    cref = cum[:, :, q // 2]  # (b, K, D): each chunk's centre
    X = cum - cref[:, :, None]
    E = torch.exp2(X[:, :, :, None, :] * A2t)  # e^{A (c_t - c_r)}
    # e^{-A (c_s - c_r)} from its own exp2, not 1/E: reciprocal's backward squares it (overflow past e^44)
    W = torch.exp2(X[:, :, :, None, :] * -A2t).view(b, K, q, n, groups, rep)
    W = (W * Bc.transpose(3, 4)[..., None]).view(b, K, q, n, dim) * dtu[:, :, :, None, :]
    Estart = torch.exp2(cref[:, :, None, :] * A2t)  # (b, K, N, D): e^{A (c_r - c_start)}
    Elast = E[:, :, -1]
    hins, h = _carry_doubling(Estart * Elast, W.sum(2) * Elast)
    acc = _prefix_sum(W.view(b, K, q, n * dim), q).view(b, K, q, n, dim)
    hs = (acc + (Estart * hins)[:, :, None]) * E
    if groups == 1:  # y_t = C_t . h_t as one batched (1 x N) @ (N x D) product
        y = torch.bmm(Cc.reshape(b * K * q, 1, n), hs.view(b * K * q, n, dim))
    else:
        y = torch.sum(hs.view(b, K, q, n, groups, rep) * Cc.transpose(3, 4)[..., None], 3)
    return y.reshape(b, K, q, dim), h


def _fits(dt_chunks, dtu, B, C, nonneg_dt, Amax):
    """True when every chunk's widest exponent |A| * |c_t - c_r| (and |A| * |c_r| for the start state), bounded by
    the |dt| mass on one side of the centre, fits the closed form, and no input holds a NaN or inf."""
    adt = dt_chunks if nonneg_dt else dt_chunks.abs()
    r = adt.shape[2] // 2 + 1  # tokens up to the centre c_r, and after it
    width = torch.maximum(adt[:, :, :r].sum(2), adt[:, :, r:].sum(2)) * Amax
    finite = torch.isfinite(dtu).all() & torch.isfinite(B).all() & torch.isfinite(C).all()
    return (width.amax() <= MAX_EXPONENT) & finite  # False for a NaN/inf dt too


def scan_tokens(dt, dtu, A, B, C, nonneg_dt, fallback):
    """The chunked scan of token-major ``dt, dtu (b, L, D)``, ``B, C (b, L, G, N)`` with ``A (D, N)``; returns
    (y ``(b, L, D)``, last state ``(b, D, N)``). L is padded to whole chunks with dt = 0 and zero input, which
    leaves the state unchanged. ``fallback`` (same arguments but ``A``..., same results) runs when the closed form
    cannot (see the module docstring)."""
    ct = dt.dtype
    b, L, dim = dt.shape
    Af = A.to(ct)
    A2t, Amax = (Af * _LOG2E).t().contiguous(), Af.abs().amax(1)
    K = -(-L // CHUNK)
    pad = K * CHUNK - L
    dtp = F.pad(dt, (0, 0, 0, pad)).view(b, K, CHUNK, dim)
    if K == 0 or not bool(_fits(dtp, dtu, B, C, nonneg_dt, Amax)):
        return fallback(dt, dtu, A, B, C)
    Bc, Cc = (F.pad(t.to(ct), (0, 0, 0, 0, 0, pad)).view(b, K, CHUNK, *t.shape[2:]) for t in (B, C))
    y, h = _scan_chunks(dtp, F.pad(dtu, (0, 0, 0, pad)).view(b, K, CHUNK, dim), A2t, Bc, Cc)
    return y.reshape(b, K * CHUNK, dim)[:, :L], h.transpose(1, 2)


def scan_tokens_export(dt, dtu, A, B, C):
    """The path taken under torch.export, whose graph cannot hold the closed form's data-dependent range check:
    inside blocks of ``PAIR_BLOCK`` tokens ``h_t = e^{A c_t} h_0 + sum_{s<=t} e^{A (c_t - c_s)} dt_s u_s B_s``
    (``c`` the cumulative dt from the block start) with every exponent the true decay between two tokens, so it
    overflows only where the recurrence itself does, whatever the input's scale; the blocks are carried in log
    depth. No Python branch on values; ``PAIR_BLOCK`` times the closed form's memory."""
    ct = dt.dtype
    b, L, dim = dt.shape
    p = PAIR_BLOCK
    m = -(-L // p)
    if m == 0:
        return dt.new_zeros(b, 0, dim), dt.new_zeros(b, dim, A.shape[1])
    pad = m * p - L  # dt = 0 and zero input leave the state unchanged
    dtk, dtuk = (F.pad(t, (0, 0, 0, pad)).view(b, m, p, dim) for t in (dt, dtu))
    Bk, Ck = (F.pad(t.to(ct), (0, 0, 0, 0, 0, pad)).view(b, m, p, *t.shape[2:]) for t in (B, C))  # (b, m, p, G, N)
    rep = dim // Bk.shape[3]
    At = A.to(ct).t()  # (N, D)
    cum = dtk.cumsum(2)
    causal = torch.ones(p, p, dtype=torch.bool, device=dt.device).tril()[:, :, None]  # (t, s, 1): s <= t
    diff = (cum[:, :, :, None] - cum[:, :, None]).masked_fill(~causal, 0.0)  # (b, m, t, s, D): c_t - c_s
    decay = torch.exp(diff[:, :, :, :, None] * At).masked_fill(~causal[..., None], 0.0)  # (b, m, t, s, N, D)
    Bd = Bk.transpose(3, 4).repeat_interleave(rep, dim=4)  # (b, m, p, N, D): channel d reads group d // rep
    Cd = Ck.transpose(3, 4).repeat_interleave(rep, dim=4)
    hz = torch.einsum("bmtsnd,bmsnd->bmtnd", decay, dtuk[:, :, :, None] * Bd)  # states from a zero block start
    from_start = torch.exp(cum[:, :, :, None] * At)  # (b, m, p, N, D): e^{A c_t}
    h_in, h = _carry_doubling(from_start[:, :, -1], hz[:, :, -1])
    y = ((hz + from_start * h_in[:, :, None]) * Cd).sum(3)
    return y.reshape(b, m * p, dim)[:, :L], h.transpose(1, 2)
