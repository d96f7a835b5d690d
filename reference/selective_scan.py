"""Selective scan (Mamba-1 S6) in pure PyTorch: the contract of mamba_ssm's ``selective_scan_fn``.

For every batch row, channel ``d`` and state ``n`` (A diagonal per (d, n)):

    dt_l  = softplus(delta_l + delta_bias)            (threshold 20; without softplus: delta_l + delta_bias)
    h_l   = exp(dt_l * A[d, n]) * h_{l-1} + dt_l * u_l * B_l[n]     (Euler-discretised B, h_{-1} = 0)
    y_l   = sum_n C_l[n] * h_l[n] + D[d] * u_l
    out_l = y_l * silu(z_l)                           (when z is given)

Layouts (channel-first, as mamba_ssm): u, delta, z ``(B, D, L)``; A ``(D, N)``; B, C ``(B, N, L)`` or
``(B, G, N, L)`` (channel d uses group ``d // (D // G)``); D, delta_bias ``(D,)``. The channel-last variant takes
u, delta, z as ``(B, L, D)`` and B, C as ``(B, L, N)`` or ``(B, L, G, N)``.

Everything is computed in float32 (float64 inputs stay float64) and the output is cast to u's dtype.

Two implementations:
  * :func:`selective_scan_recurrent` -- the step-by-step loop. It is the oracle of every test.
  * :func:`selective_scan` -- vectorised: L is cut into chunks of ``CHUNK`` tokens; inside a chunk the
    recurrence is solved in closed form. With ``c_t`` the cumulative sum of dt from the chunk start and ``r`` the
    chunk's middle, ``h_t = e^{A (c_t - c_r)} (e^{A c_r} h_0 + sum_{s<=t} e^{-A (c_s - c_r)} b_s)``. The sum over
    s is a prefix sum done as small triangular matmuls (much faster on CPU than ``cumsum``); ``GROUP`` consecutive
    chunks are solved in one batched step from a zero start, and the true start states are then carried across
    them with one ``addcmul`` per chunk. Centring on ``r`` keeps every exponent within the chunk's decay range; a
    chunk whose range exceeds what float32 can hold (|A| * range > 80) is halved until it fits, down to single
    exact steps, so the result never depends on the input's scale. The scan runs token-major (states stored
    ``(N, D)``, D contiguous); per-token elementwise work stays in the caller's layout. Without autograd
    recording, the chunk temporaries live in reused buffers and are updated in place (``bench/
    bench_reference_speed.py`` measures the effect); with it, every op is out of place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

__all__ = [
    "selective_scan",
    "selective_scan_channel_last",
    "selective_scan_recurrent",
    "check_selective_scan_inputs",
    "ScanDims",
]

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


# Tokens solved in closed form at once (reference-only tuning, fastest on a 2-core CPU for D=256, N=16).
CHUNK = 32
# Consecutive chunks handled by one batched step (the sequential part is one ``addcmul`` per chunk).
GROUP = 4
# Keep the per-step working set (b x GROUP x CHUNK x N x D) near the L2 cache: fewer chunks per step when b*N*D is big.
_GROUP_ELEMS = 1 << 19
# The prefix sum inside a chunk: triangular matmuls over blocks of SUB tokens, then the block totals carried.
SUB = 8
# exp() of float32 overflows past 88.7: every exponent of the closed form is kept within +-80.
_MAX_EXPONENT = 80.0
_LOG2E = 1.0 / math.log(2.0)
# Test hook: [True] runs the torch.compile path (see _scan_tokens_traced) in eager mode.
_TRACED_PATH = [False]
  # exp(x) = exp2(x * log2(e)); exp2 is several times faster than exp on CPU


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _finish(y, u, D, z, ct, channel_dim, inplace=False):
    """``y + D u``, gated by ``silu(z)``, in u's dtype; ``inplace`` updates y (a buffer of ours, no autograd)."""
    if D is not None:
        shape = [1, 1, 1]
        shape[channel_dim] = -1
        y = (y.addcmul_ if inplace else partial(torch.addcmul, y))(D.to(ct).view(shape), u.to(ct))
    if z is not None:
        y = y.mul_(F.silu(z.to(ct))) if inplace else y * F.silu(z.to(ct))
    return y.to(u.dtype)


def _dt(delta, delta_bias, delta_softplus, ct, channel_dim, inplace=False):
    """``softplus(delta + delta_bias)`` (threshold 20, as mamba_ssm) in ct; ``inplace`` updates delta (a buffer of
    ours in ct, no autograd)."""
    dt = delta.to(ct)
    if delta_bias is not None:
        shape = [1, 1, 1]
        shape[channel_dim] = -1
        bias = delta_bias.to(ct).view(shape)
        dt = dt.add_(bias) if inplace else dt + bias
    if not delta_softplus:
        return dt
    return torch.ops.aten.softplus.out(dt, 1, 20, out=dt) if inplace else F.softplus(dt)


def selective_scan_recurrent(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False):
    """The oracle: the recurrence stepped one token at a time (slow; for tests). Same contract as
    :func:`selective_scan` (channel-first)."""
    dims = check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    ct = _compute_dtype(u)
    uf = u.to(ct)
    dt = _dt(delta, delta_bias, delta_softplus, ct, 1)
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    rep = dims.dim // dims.groups
    Bd = B.to(ct).repeat_interleave(rep, dim=1)  # (B, G, N, L) -> (B, D, N, L): channel d reads group d // rep
    Cd = C.to(ct).repeat_interleave(rep, dim=1)
    Af = A.to(ct)
    h = uf.new_zeros(dims.batch, dims.dim, dims.dstate)
    ys = []
    for t in range(dims.length):
        a = torch.exp(dt[:, :, t, None] * Af)
        h = a * h + (dt[:, :, t] * uf[:, :, t])[:, :, None] * Bd[:, :, :, t]
        ys.append((h * Cd[:, :, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else uf.new_zeros(dims.batch, dims.dim, 0)
    out = _finish(y, u, D, z, ct, 1)
    return (out, h) if return_last_state else out


def _prefix_sum(W, q, out=None):
    """Inclusive prefix sum over dim 2 of ``W (b, K, q, F)`` as small triangular matmuls (``cumsum`` over a
    non-inner dim is far slower on CPU). Writes into ``out`` when given."""
    b, K, _, f = W.shape
    kw = dict(dtype=W.dtype, device=W.device)
    if q <= SUB or q % SUB:
        return torch.matmul(torch.ones(q, q, **kw).tril(), W, out=out)
    m = q // SUB
    inner = torch.matmul(torch.ones(SUB, SUB, **kw).tril(), W.view(b, K, m, SUB, f),
                         out=None if out is None else out.view(b, K, m, SUB, f))  # prefix inside each block
    for i in range(1, m):  # carry the running total block by block (in place: autograd records the slices)
        inner[:, :, i] += inner[:, :, i - 1, -1:]
    return inner.view(b, K, q, f)


class _Workspace:
    """Reusable buffers for the no-grad path: fresh multi-megabyte temporaries per chunk cost page faults and
    cache misses that dominate the arithmetic. ``None`` everywhere when autograd records (out= is not allowed)."""

    def __init__(self, enabled: bool, dtype: torch.dtype, device: torch.device):
        self.enabled, self.dtype, self.device = enabled, dtype, device
        self._bufs: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, *shape: int) -> torch.Tensor | None:
        if not self.enabled:
            return None
        numel = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel:
            buf = self._bufs[name] = torch.empty(numel, dtype=self.dtype, device=self.device)
        return buf[:numel].view(shape)


def _scan_chunks(h, dt, dtu, A2t, Bc, Cc, y_out, ws):
    """Closed form over K consecutive chunks of q tokens (channel-last, states stored ``(b, N, D)``).

    h (b, N, D) state before the first chunk (None: zero, carried in log depth); dt, dtu (b, K, q, D);
    Bc, Cc (b, K, q, G, N). Returns (y (b, K, q, D), state after the last chunk). ``y_out`` (a view of the output)
    and ``ws`` are only given on the no-grad path.
    """
    b, K, q, dim = dt.shape
    groups, n = Bc.shape[3], Bc.shape[4]
    rep = dim // groups
    cum = _prefix_sum(dt, q)  # c_t: cumulative dt inside each chunk
    cref = cum[:, :, q // 2]  # (b, K, D): each chunk's centre
    X = cum - cref[:, :, None]
    fast = y_out is not None
    E = ws("E", b, K, q, n, dim)
    E = torch.exp2(torch.mul(X[:, :, :, None, :], A2t, out=E), out=E)  # e^{A (c_t - c_r)}
    # e^{-A (c_s - c_r)} from its own exp2, not 1/E: reciprocal's backward squares it (overflow past e^44)
    W = ws("W", b, K, q, n, dim)
    W = torch.exp2(torch.mul(X[:, :, :, None, :], -A2t, out=W), out=W).view(b, K, q, n, groups, rep)
    W = torch.mul(W, Bc.transpose(3, 4)[..., None], out=W if fast else None).view(b, K, q, n, dim)
    W = torch.mul(W, dtu[:, :, :, None, :], out=W if fast else None)  # e^{-A (c_s - c_r)} dt_s u_s B_s
    Estart = torch.exp2(cref[:, :, None, :] * A2t)  # (b, K, N, D): e^{A (c_r - c_start)}
    Elast = E[:, :, -1]
    decay = Estart * Elast  # whole-chunk decay
    hend = W.sum(2) * Elast  # chunk-end state from a zero start
    if h is None:  # log-depth carry from a zero start (torch.compile: no per-chunk Python)
        hins, h = _carry_doubling(decay, hend)
    else:
        hins = []
        for k in range(K):  # the only sequential step: carry the state across the K chunks
            hins.append(h)
            h = torch.addcmul(hend[:, k], decay[:, k], h)
        hins = torch.stack(hins, 1)
    h0 = Estart * hins  # (b, K, N, D): each chunk's start state moved to its centre
    acc = _prefix_sum(W.view(b, K, q, n * dim), q, out=ws("acc", b, K, q, n * dim)).view(b, K, q, n, dim)
    if y_out is None:
        hs = (acc + h0[:, :, None]) * E
    else:
        hs = acc.add_(h0[:, :, None]).mul_(E)
    if groups == 1:  # y_t = C_t . h_t as one batched (1 x N) @ (N x D) product
        direct = y_out is not None and b == 1  # with b > 1 the output rows of a chunk group are not one block
        y = torch.bmm(Cc.reshape(b * K * q, 1, n), hs.view(b * K * q, n, dim),
                      out=y_out.view(b * K * q, 1, dim) if direct else None)
        if y_out is not None and not direct:
            y = y_out.copy_(y.view(b, K, q, dim))
    else:
        prod = hs.view(b, K, q, n, groups, rep) * Cc.transpose(3, 4)[..., None]
        y = torch.sum(prod, 3, out=None if y_out is None else y_out.view(b, K, q, groups, rep))
    return y.view(b, K, q, dim), h


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


def _scan_exact(h, dt, dtu, A, Bc, Cc):
    """One token stepped exactly (where even a two-token closed form would overflow). h (b, N, D)."""
    rep = dt.shape[2] // Bc.shape[2]
    Bt = Bc[:, 0].repeat_interleave(rep, dim=1).transpose(1, 2)  # (b, N, D)
    Ct = Cc[:, 0].repeat_interleave(rep, dim=1).transpose(1, 2)
    h = torch.exp(dt[:, 0, None, :] * A.t()) * h + dtu[:, 0, None, :] * Bt
    return (h * Ct).sum(1)[:, None], h


def _swap_last(x: torch.Tensor) -> torch.Tensor:
    """``x (b, P, Q)`` -> contiguous ``(b, Q, P)``. One 2-D transpose per batch row: torch copies a transposed 2-D
    matrix with a cache-blocked kernel, three to five times faster than the generic strided copy of a 3-D view."""
    rows = [r.t().contiguous() for r in x.unbind(0)]
    return rows[0][None] if len(rows) == 1 else torch.stack(rows)


def _decay_terms(A, ct):
    """(A in ct, A * log2(e) as ``(N, D)`` (states are laid out (N, D) inside, D contiguous), max |A| per channel)."""
    Af = A.to(ct)
    return Af, (Af * _LOG2E).t().contiguous(), Af.abs().amax(1)


def _chunk_widths(dt_chunks, nonneg_dt, Amax):
    """``(b, K, D)``: the widest exponent |A| * |c_t - c_r| (and |A| * |c_r| for the start state) of each chunk of
    ``dt_chunks (b, K, q, D)``, bounded by the |dt| mass on one side of the centre (exact up to one token)."""
    adt = dt_chunks if nonneg_dt else dt_chunks.abs()
    q = adt.shape[2]
    r = q // 2 + 1  # tokens up to the centre c_r, and after it
    width = adt[:, :, :r].sum(2) if r == q else torch.maximum(adt[:, :, :r].sum(2), adt[:, :, r:].sum(2))
    return width * Amax


def _scan_tokens_traced(dt, dtu, A, B, C, nonneg_dt):
    """The path taken while torch.compile traces: every chunk in one batched closed form and a log-depth carry,
    so the graph does not grow with L (the eager driver would be unrolled chunk by chunk). L is padded to a
    whole number of chunks with dt = 0 and zero input, which leaves the state unchanged. An input whose decay
    range needs smaller chunks runs the eager driver outside the graph."""
    ct = dt.dtype
    b, L, dim = dt.shape
    _, A2t, Amax = _decay_terms(A, ct)
    K = -(-L // CHUNK)
    pad = K * CHUNK - L
    dtp = F.pad(dt, (0, 0, 0, pad)).view(b, K, CHUNK, dim)
    if K == 0 or not bool(_chunk_widths(dtp, nonneg_dt, Amax).amax() <= _MAX_EXPONENT):
        return _scan_tokens_eager(dt, dtu, A, B, C, nonneg_dt)
    Bc, Cc = (F.pad(t.to(ct), (0, 0, 0, 0, 0, pad)).view(b, K, CHUNK, *t.shape[2:]) for t in (B, C))
    y, h = _scan_chunks(None, dtp, F.pad(dtu, (0, 0, 0, pad)).view(b, K, CHUNK, dim), A2t, Bc, Cc, None,
                        _Workspace(False, ct, dt.device))
    return y.reshape(b, K * CHUNK, dim)[:, :L], h.transpose(1, 2)


@torch.compiler.disable
def _scan_tokens_eager(dt, dtu, A, B, C, nonneg_dt):
    return _scan_tokens_driver(dt, dtu, A, B, C, nonneg_dt, record_grad=True)


def _scan_tokens(dt, dtu, A, B, C, nonneg_dt, record_grad, out=None):
    """The chunked scan, token-major. dt, dtu contiguous ``(b, L, D)``; A ``(D, N)``; B, C ``(b, L, G, N)``.

    Returns y ``(b, L, D)`` (contiguous, without the D skip and the gate) and the last state ``(b, D, N)``.
    ``nonneg_dt`` (softplus was applied) spares an ``abs``; ``record_grad`` selects the autograd-safe path
    (out-of-place ops) over the no-grad one (reused buffers, results written in place); there, ``out`` (which may
    be dt itself) receives y.
    """
    if _TRACED_PATH[0] or torch.compiler.is_compiling():
        return _scan_tokens_traced(dt, dtu, A, B, C, nonneg_dt)
    return _scan_tokens_driver(dt, dtu, A, B, C, nonneg_dt, record_grad, out)


def _scan_tokens_driver(dt, dtu, A, B, C, nonneg_dt, record_grad, out=None):
    """Eager driver: groups of chunks in closed form, chunks too wide for it halved (see _scan_tokens)."""
    ct = dt.dtype
    b, L, dim = dt.shape
    n = A.shape[1]
    Af, A2t, Amax = _decay_terms(A, ct)
    Bc, Cc = B.to(ct).contiguous(), C.to(ct).contiguous()  # small (b, L, G, N): token rows for the chunk views
    ws = _Workspace(not record_grad, ct, dt.device)
    # ``out`` may be dt itself: every read of dt[:, a:c] (range check, cumulative sums) precedes the write of
    # y[:, a:c], and later chunks only read later tokens
    y = out if out is not None or record_grad else torch.empty(b, L, dim, dtype=ct, device=dt.device)
    ys = []
    group = max(1, min(GROUP, _GROUP_ELEMS // max(1, b * CHUNK * n * dim)))

    def span(h, s, e, q):
        """Scan tokens [s, e) in chunks of q (q divides e - s); a chunk whose decay range would overflow the
        closed form is rescanned in halves, down to single exact steps."""
        K = (e - s) // q
        width = _chunk_widths(dt[:, s:e].view(b, K, q, dim), nonneg_dt, Amax)
        ok = (width.amax((0, 2)) <= _MAX_EXPONENT).tolist()  # False for NaN/inf: the exact path
        k = 0
        while k < K:
            a = s + k * q
            if not ok[k]:
                if q > 1:
                    h = span(h, a, a + q // 2 * 2, q // 2)
                    if q % 2:
                        h = span(h, a + q - 1, a + q, 1)
                else:
                    one = slice(a, a + 1)
                    yk, h = _scan_exact(h, dt[:, one], dtu[:, one], Af, Bc[:, one], Cc[:, one])
                    if y is None:
                        ys.append(yk)
                    else:
                        y[:, one] = yk
                k += 1
                continue
            j = k + 1
            while j < K and j - k < group and ok[j]:
                j += 1
            c = s + j * q
            chunk = (b, j - k, q)
            yk, h = _scan_chunks(h, dt[:, a:c].view(*chunk, dim), dtu[:, a:c].view(*chunk, dim), A2t,
                                 Bc[:, a:c].view(*chunk, *Bc.shape[2:]), Cc[:, a:c].view(*chunk, *Cc.shape[2:]),
                                 None if y is None else y[:, a:c].view(*chunk, dim), ws)
            if y is None:
                ys.append(yk.reshape(b, c - a, dim))
            k = j
        return h

    h = dt.new_zeros(b, n, dim)
    full = L // CHUNK * CHUNK
    if full:
        h = span(h, 0, full, CHUNK)
    if L > full:
        h = span(h, full, L, L - full)
    if y is None:
        y = torch.cat(ys, dim=1) if ys else dt.new_zeros(b, 0, dim)
    return y, h.transpose(1, 2)


def _token_major(x, ct, channel_last):
    """A fresh contiguous ``(b, L, D)`` copy of x in dtype ct (ours to update in place)."""
    if not channel_last:
        return _swap_last(x.to(ct))
    out = torch.empty(x.shape, dtype=ct, device=x.device)
    return out.copy_(x)


def _run(u, delta, A, B, C, D, z, delta_bias, delta_softplus, channel_last):
    """Both layouts: the scan runs token-major. With autograd recording, dt and dt*u are formed in the caller's
    layout and transposed (out of place); without, they are formed in place on token-major copies and the
    whole-sequence temporaries are freed early (fewer fresh pages: the page faults of multi-megabyte temporaries
    cost as much as the arithmetic on CPU)."""
    ct = _compute_dtype(u)
    if u.shape[0] == 0:  # an empty batch: nothing to scan (the chunk drivers assume b >= 1)
        y = torch.zeros(u.shape, dtype=ct, device=u.device)
        return _finish(y, u, D, z, ct, 2 if channel_last else 1), torch.zeros(0, *A.shape, dtype=ct, device=u.device)
    record_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    cdim = 2 if channel_last else 1
    if B.dim() == 3:
        B, C = B.unsqueeze(cdim), C.unsqueeze(cdim)
    if not channel_last:
        B, C = B.permute(0, 3, 1, 2), C.permute(0, 3, 1, 2)
    if record_grad:
        dt = _dt(delta, delta_bias, delta_softplus, ct, cdim)
        dtu = dt * u.to(ct)
        swap = (lambda t: t.contiguous()) if channel_last else _swap_last
        y, h = _scan_tokens(swap(dt), swap(dtu), A, B, C, delta_softplus, record_grad)
        return _finish(y if channel_last else _swap_last(y), u, D, z, ct, cdim), h
    dt = _dt(_token_major(delta, ct, channel_last), delta_bias, delta_softplus, ct, 2, inplace=True)
    dtu = _token_major(u, ct, channel_last).mul_(dt)
    y, h = _scan_tokens(dt, dtu, A, B, C, delta_softplus, record_grad, out=dt)  # y overwrites dt in place
    del dt, dtu
    return _finish(y if channel_last else _swap_last(y), u, D, z, ct, cdim, inplace=True), h


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """Selective scan (Mamba-1 S6), vectorised over L in chunks (module docstring).

    Args:
        u: ``[B, D, L]`` input.
        delta: ``[B, D, L]`` time steps (before bias/softplus).
        A: ``[D, N]`` state matrix (diagonal per channel), any float dtype; computed in float32.
        B: ``[B, N, L]`` or ``[B, G, N, L]`` input projection (variable per token).
        C: same shape as B, output projection.
        D: ``[D]`` skip connection, optional.
        z: ``[B, D, L]`` gate, optional: ``out = y * silu(z)``.
        delta_bias: ``[D]`` added to delta, optional.
        delta_softplus: apply softplus (threshold 20) to ``delta + delta_bias``.
        return_last_state: also return the final state ``[B, D, N]`` (float32; float64 for float64 input).

    Returns:
        ``out [B, D, L]`` in u's dtype, or ``(out, last_state)``.

    Example:
        >>> u = torch.randn(2, 8, 100); A = -torch.rand(8, 4)
        >>> out = selective_scan(u, torch.rand_like(u), A, torch.randn(2, 4, 100), torch.randn(2, 4, 100))
    """
    check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    out, h = _run(u, delta, A, B, C, D, z, delta_bias, delta_softplus, channel_last=False)
    return (out, h) if return_last_state else out


def selective_scan_channel_last(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                return_last_state=False):
    """:func:`selective_scan` with tokens channel-last: u, delta, z ``[B, L, D]``; B, C ``[B, L, N]`` or
    ``[B, L, G, N]``. Returns ``out [B, L, D]`` (and ``last_state [B, D, N]``)."""
    check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, channel_last=True)
    out, h = _run(u, delta, A, B, C, D, z, delta_bias, delta_softplus, channel_last=True)
    return (out, h) if return_last_state else out
