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
    chunk's middle, ``h_t = e^{A (c_t - c_r)} (e^{A c_r} h_0 + sum_{s<=t} e^{-A (c_s - c_r)} b_s)``; the sum over
    s is one batched matmul with a lower-triangular matrix of ones (much faster on CPU than ``cumsum``). Centring
    on ``r`` keeps every exponent within the chunk's decay range; a chunk whose range exceeds what float32 can
    hold (|A| * range > 80) is halved until it fits, down to single tokens, so the result never depends on the
    input's scale. Channels are laid out last inside (contiguous ``D x N`` rows), so the channel-last variant is
    the native one.
"""

from __future__ import annotations

from dataclasses import dataclass

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


# Tokens solved in closed form at once (reference-only tuning; 32 is fastest on CPU for D=256, N=16).
CHUNK = 32
# exp() of float32 overflows past 88.7: every exponent of the closed form is kept within +-80.
_MAX_EXPONENT = 80.0


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _finish(y, u, D, z, ct, channel_dim):
    if D is not None:
        shape = [1, 1, 1]
        shape[channel_dim] = -1
        y = y + D.to(ct).view(shape) * u.to(ct)
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(u.dtype)


def _dt(delta, delta_bias, delta_softplus, ct, channel_dim):
    dt = delta.to(ct)
    if delta_bias is not None:
        shape = [1, 1, 1]
        shape[channel_dim] = -1
        dt = dt + delta_bias.to(ct).view(shape)
    return F.softplus(dt) if delta_softplus else dt  # threshold 20, as mamba_ssm


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


def _scan_chunk(h, dt, dtu, A, Amax, Bc, Cc, groups):
    """Closed-form scan of one chunk, channel-last. h (b, D, N); dt, dtu (b, q, D); Bc, Cc (b, q, G, N).

    Returns y (b, q, D) and the chunk-end state, or None when the chunk's decay range is too wide for float32.
    """
    b, q, dim = dt.shape
    n = A.shape[1]
    cum = torch.cumsum(dt, dim=1)
    cref = cum[:, q // 2 : q // 2 + 1]  # centre of the chunk
    X = cum - cref
    # widest exponent: |A| * |c_t - c_r| over the chunk, and |A| * |c_r| for the initial-state term
    span = torch.maximum(X.abs().amax(1), cref[:, 0].abs()) * Amax
    if not bool(span.max() <= _MAX_EXPONENT):  # also False for NaN/inf: then the exact path is taken
        return None
    XA = X[..., None] * A  # (b, q, D, N)
    E = torch.exp(XA)
    rep = dim // groups
    # multiply by e^{-XA} rather than divide by E: exp is cheaper than division on CPU
    W = (dtu.view(b, q, groups, rep, 1) * Bc[:, :, :, None, :]).view(b, q, dim, n) * torch.exp(-XA)
    h0 = (torch.exp(cref[:, 0, :, None] * A) * h).reshape(b, 1, dim * n)
    tril = torch.ones(q, q, dtype=dt.dtype, device=dt.device).tril()
    # acc_t = h0' + sum_{s<=t} W_s: the prefix sum as one batched matmul
    acc = torch.baddbmm(h0, tril.expand(b, q, q), W.reshape(b, q, dim * n)).view(b, q, dim, n)
    hs = acc * E
    y = torch.matmul(hs.view(b, q, groups, rep, n), Cc[..., None]).view(b, q, dim)
    return y, hs[:, -1]


def _scan_exact(h, dt, dtu, A, Bc, Cc, groups):
    """Step-by-step scan of a short piece (used where the closed form's exponents would overflow)."""
    b, q, dim = dt.shape
    rep = dim // groups
    ys = []
    for t in range(q):
        Bt = Bc[:, t].repeat_interleave(rep, dim=1)  # (b, D, N)
        h = torch.exp(dt[:, t, :, None] * A) * h + dtu[:, t, :, None] * Bt
        ys.append((h * Cc[:, t].repeat_interleave(rep, dim=1)).sum(-1))
    return torch.stack(ys, dim=1), h


def _scan_channel_last(u, delta, A, B, C, D, z, delta_bias, delta_softplus, dims):
    ct = _compute_dtype(u)
    uf = u.to(ct)
    dt = _dt(delta, delta_bias, delta_softplus, ct, 2)
    dtu = dt * uf
    Af = A.to(ct)
    Amax = Af.abs().amax(1)
    if B.dim() == 3:
        B, C = B[:, :, None], C[:, :, None]
    Bc, Cc = B.to(ct), C.to(ct)
    h = uf.new_zeros(dims.batch, dims.dim, dims.dstate)
    ys = []
    pending = [(s, min(s + CHUNK, dims.length)) for s in range(0, dims.length, CHUNK)][::-1]
    while pending:
        s, e = pending.pop()
        res = None
        if e - s > 1:
            res = _scan_chunk(h, dt[:, s:e], dtu[:, s:e], Af, Amax, Bc[:, s:e], Cc[:, s:e], dims.groups)
        if res is None and e - s > 1:
            m = (s + e) // 2
            pending += [(m, e), (s, m)]  # halve the chunk: the halves have narrower decay ranges
            continue
        if res is None:
            res = _scan_exact(h, dt[:, s:e], dtu[:, s:e], Af, Bc[:, s:e], Cc[:, s:e], dims.groups)
        y, h = res
        ys.append(y)
    y = torch.cat(ys, dim=1) if ys else uf.new_zeros(dims.batch, 0, dims.dim)
    return _finish(y, u, D, z, ct, 2), h


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
    dims = check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    bc = (lambda t: t.transpose(1, 2)) if B.dim() == 3 else (lambda t: t.permute(0, 3, 1, 2))
    out, h = _scan_channel_last(u.transpose(1, 2), delta.transpose(1, 2), A, bc(B), bc(C), D,
                                None if z is None else z.transpose(1, 2), delta_bias, delta_softplus, dims)
    out = out.transpose(1, 2)
    return (out, h) if return_last_state else out


def selective_scan_channel_last(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                return_last_state=False):
    """:func:`selective_scan` with tokens channel-last: u, delta, z ``[B, L, D]``; B, C ``[B, L, N]`` or
    ``[B, L, G, N]``. Returns ``out [B, L, D]`` (and ``last_state [B, D, N]``)."""
    dims = check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias, channel_last=True)
    out, h = _scan_channel_last(u, delta, A, B, C, D, z, delta_bias, delta_softplus, dims)
    return (out, h) if return_last_state else out
