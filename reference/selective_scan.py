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

Implementations:
  * :func:`selective_scan_recurrent` -- the step-by-step loop, written for obviousness. It is the oracle of every
    test.
  * :func:`selective_scan` / :func:`selective_scan_channel_last` -- the fast path, same semantics including where
    a NaN or inf can reach. On CPU (eager): the recurrence stepped token by token with every batch row, channel and
    state in one op per token, the per-token exponentials and contractions batched over blocks of tokens, and a
    hand-written backward that keeps only block-start states (``_scan_seq.py``); without autograd recording it
    works in place on its own time-major copies. While ``torch.compile`` traces, and on other devices: the chunked
    closed form (``_scan_chunked.py``: a fixed-size graph, few kernel launches), which hands inputs it cannot
    take (a decay range too wide for float32, NaN/inf) to the sequential scan.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from glsmamba.reference._scan_chunked import scan_tokens, scan_tokens_export
from glsmamba.reference._scan_seq import SequentialScan, scan
from glsmamba.reference.checks import _FLOATS, ScanDims, _shape, check_selective_scan_inputs  # noqa: F401  (re-exported)

__all__ = [
    "selective_scan",
    "selective_scan_channel_last",
    "selective_scan_recurrent",
    "check_selective_scan_inputs",
    "ScanDims",
]

# Test hook: [True] runs the torch.compile path (the chunked closed form of _scan_chunked.py) in eager mode.
_TRACED_PATH = [False]
# Test hook: [True] runs the torch.export path (_scan_chunked.scan_tokens_export) in eager mode.
_EXPORT_PATH = [False]


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


def _time_major(x, channel_last, copy_to=None):
    """Per-token ``(b, D, L)`` (channel-first) or ``(b, L, D)`` -> contiguous time-major ``(L, b, D)``.

    ``copy_to``: a dtype; the result is then a fresh tensor of ours (to update in place, no autograd)."""
    b = x.shape[0]
    if not channel_last and b == 1:  # a 2-D transpose: torch copies it with a cache-blocked kernel
        x2 = x[0] if copy_to is None else x[0].to(copy_to)
        out = x2.t().contiguous()
        if out.data_ptr() == x.data_ptr():  # already time-major storage (a transposed view was given)
            out = out.clone()
        return out[:, None]
    view = x.permute(2, 0, 1) if not channel_last else x.transpose(0, 1)
    if copy_to is None:
        return view.contiguous()
    return torch.empty(view.shape, dtype=copy_to, device=x.device).copy_(view)


def _from_time_major(y, channel_last):
    """``(L, b, D)`` -> contiguous ``(b, D, L)`` (channel-first) or ``(b, L, D)``."""
    if channel_last:
        return y.transpose(0, 1).contiguous()
    if y.shape[1] == 1:
        return y[:, 0].t().contiguous()[None]
    return y.permute(1, 2, 0).contiguous()


def _scan_fallback(dt, dtu, A, B, C):
    """The sequential scan on token-major ``(b, L, D)`` inputs (the closed form's fallback): (y, last state)."""
    y, h = SequentialScan.apply(dt.transpose(0, 1).contiguous(), dtu.transpose(0, 1).contiguous(),
                                A.to(dt.dtype).t()[None], B.transpose(0, 1).to(dt.dtype).contiguous(),
                                C.transpose(0, 1).to(dt.dtype).contiguous())
    return y.transpose(0, 1), h.transpose(1, 2)


_scan_fallback_eager = torch.compiler.disable(_scan_fallback)


def _run(u, delta, A, B, C, D, z, delta_bias, delta_softplus, channel_last):
    """Both layouts. On CPU outside torch.compile: the sequential scan of ``_scan_seq.py`` (time-major), with its
    hand-written backward when autograd records, else in place on our own time-major copies (dt's buffer takes
    dt*u, then y). While torch.compile traces, and off CPU: the chunked closed form of ``_scan_chunked.py``; under
    torch.export its branch-free variant (``scan_tokens_export``)."""
    ct = _compute_dtype(u)
    if u.shape[0] == 0:  # an empty batch: nothing to scan (the chunk drivers assume b >= 1)
        y = torch.zeros(u.shape, dtype=ct, device=u.device)
        return _finish(y, u, D, z, ct, 2 if channel_last else 1), torch.zeros(0, *A.shape, dtype=ct, device=u.device)
    record_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    cdim = 2 if channel_last else 1
    if B.dim() == 3:
        B, C = B.unsqueeze(cdim), C.unsqueeze(cdim)
    if not channel_last:  # token rows (b, L, G, N)
        B, C = B.permute(0, 3, 1, 2), C.permute(0, 3, 1, 2)
    exporting = _EXPORT_PATH[0] or torch.compiler.is_exporting()
    if exporting or _TRACED_PATH[0] or torch.compiler.is_compiling() or u.device.type != "cpu":
        dt = _dt(delta, delta_bias, delta_softplus, ct, cdim)
        dtu = dt * u.to(ct)
        swap = (lambda t: t.contiguous()) if channel_last else (lambda t: t.transpose(1, 2).contiguous())
        if exporting:  # no branch on values in an exported graph
            y, h = scan_tokens_export(swap(dt), swap(dtu), A, B, C)
        else:
            y, h = scan_tokens(swap(dt), swap(dtu), A, B, C, delta_softplus, _scan_fallback_eager)
        return _finish(y if channel_last else y.transpose(1, 2), u, D, z, ct, cdim), h
    Bt, Ct = (t.transpose(0, 1).to(ct).contiguous() for t in (B, C))  # (L, b, G, N)
    At = A.to(ct).t()[None]  # (1, N, D)
    if record_grad:
        dt = _dt(delta, delta_bias, delta_softplus, ct, cdim)
        dtu = dt * u.to(ct)
        y, h = SequentialScan.apply(_time_major(dt, channel_last), _time_major(dtu, channel_last), At, Bt, Ct)
        return _finish(_from_time_major(y, channel_last), u, D, z, ct, cdim), h.transpose(1, 2)
    dt = _dt(_time_major(delta, channel_last, ct), delta_bias, delta_softplus, ct, 2, inplace=True)
    dtu = _time_major(u, channel_last, ct).mul_(dt)
    y, h = scan(dt, dtu, At, Bt, Ct, y=dtu)  # y overwrites dt*u
    del dt, dtu
    return _finish(_from_time_major(y, channel_last), u, D, z, ct, cdim, inplace=True), h.transpose(1, 2)


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
