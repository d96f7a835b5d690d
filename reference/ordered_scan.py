"""Direction-aware selective scan over space-time scan orders (pure PyTorch reference).

For each direction k (orders[k] a permutation of the L tokens), with per-direction ``delta[:, k]``, ``B[:, k]``,
``C[:, k]`` given in natural token order and ``x`` shared by all directions::

    u_j = x[:, orders[k, j]]   (and likewise delta, B, C read at orders[k, j])
    h_j = exp(dt_j A[k]) h_{j-1} + dt_j u_j B_j      (h_{j-1} := 0 where reset[k, j]; h_{-1} = 0)
    y_j = C_j . h_j + D[k] u_j,    dt = softplus(delta + delta_bias[k])  (if delta_softplus)
    out[:, groups[k], orders[k, j]] += y_j

i.e. ``space_time_scan -> selective_scan_channel_last (per direction, per reset segment) -> space_time_merge``.

Two implementations with one contract:
  * :func:`ordered_selective_scan_unfused` -- the oracle, exactly that composition: it permutes copies, runs
    ``reference.selective_scan.selective_scan_channel_last`` per direction (the segments between resets become
    independent batch rows, grouped by length), un-permutes and sums each group in fp32. The per-direction outputs
    are in x's dtype (the selective scan's contract). It is also what runs off CPU.
  * :func:`ordered_selective_scan` -- the fast path on CPU: every direction (and every reset segment of one
    length) is a row of one sequential scan (``_scan_seq.py``: the oracle's recurrence, one op per token over all
    rows, so NaN/inf reach exactly as in the oracle). The inputs are read through a table of natural indices per
    (step, row): delta, B and C given as views expanded over the directions (zero stride, as the model passes
    them) are indexed once, from their one natural-order copy. Without autograd recording nothing of size
    ``(Bsz, K, L, C)`` is formed: each block of steps gathers its tokens, computes dt in place, scans, adds
    ``D u`` and index-adds the block into the fp32 ``(G, L)`` group sums. When delta and delta_bias are the same
    for every direction (zero-stride views, as the model passes them with ``ssm_sharing="all"``), dt is computed
    once in natural order (one softplus per token and channel, not K) and gathered instead. With that shared dt
    and no autograd, on an x86-64 CPU with AVX2 and FMA the steps of each table of rows are one call of the C++
    kernel of ``_cpu_kernels.py`` (``GLSMAMBA_CPU_KERNEL``), the group sums added in it. Otherwise, with a state the
    fused steps take (``_scan_seq.use_fused``), each full block of tokens is one compiled call of
    :func:`gathered_steps`: gathers, ``dt u``, the recurrence and ``D u`` in one loop, only the index-add outside.
    With autograd and that shared dt, :class:`GatheredScan` does the same block by block and keeps for its backward
    only the natural-order inputs and one state per block (the backward gathers each block again and adds its
    gradients back into natural order); with dt per direction, the gathered rows are materialised and
    :class:`SequentialScan`'s hand-written backward runs. Per-direction
    outputs stay fp32 until the group sum is cast to x's dtype. ``torch.compile`` runs it eagerly (a graph
    break).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils._python_dispatch import _disable_current_modes

from glsmamba.reference import _cpu_kernels, _scan_seq
from glsmamba.reference._scan_seq import _LOG2E, BLOCK, SequentialScan, Stepper, block_backward, fused_steps
from glsmamba.reference.checks import OrderedScanDims, _check_ordered_scan  # noqa: F401  (re-exported)
from glsmamba.reference.selective_scan import _dt, selective_scan_channel_last


def _segments(reset: torch.Tensor | None, k: int, L: int) -> dict[int, torch.Tensor]:
    """Start positions of the reset segments of direction ``k``, grouped by segment length. The values of
    ``reset`` (a fixed table: a constant of the graph under torch.export) are read outside any tracing mode."""
    if reset is None:
        return {L: torch.zeros(1, dtype=torch.int64)}
    with _disable_current_modes():
        starts = sorted(set([0] + reset[k].cpu().nonzero().flatten().tolist()))
    ends = starts[1:] + [L]
    by_len: dict[int, list[int]] = {}
    for s, e in zip(starts, ends, strict=True):
        by_len.setdefault(e - s, []).append(s)
    return {n: torch.tensor(v, dtype=torch.int64) for n, v in by_len.items()}


def ordered_selective_scan_unfused(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                                   C: torch.Tensor, D: torch.Tensor | None, orders: torch.Tensor, groups: Sequence[int],
                                   reset: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                                   delta_softplus: bool = True) -> torch.Tensor:
    """The oracle of :func:`ordered_selective_scan` (same contract): the unfused composition (module docstring)."""
    dims, inv = _check_ordered_scan(x, delta, A, B, C, D, orders, groups, reset, delta_bias)
    Bsz, L, Cch, K = dims.batch, dims.length, dims.channels, dims.directions
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    G = max(dims.groups) + 1
    out = torch.zeros(Bsz, G, L, Cch, dtype=acc, device=x.device)
    for k in range(K):
        perm = orders[k]
        u = x.index_select(1, perm)  # (Bsz, L, C) in scan order k
        dl = delta[:, k].index_select(1, perm)
        Bk = B[:, k].index_select(1, perm)
        Ck = C[:, k].index_select(1, perm)
        Dk = None if D is None else D[k]
        bk = None if delta_bias is None else delta_bias[k]
        y = torch.empty_like(u)
        for n, starts in _segments(reset, k, L).items():
            # the segments of length n become independent batch rows: (Bsz * S, n, ...)
            rows = (starts[:, None] + torch.arange(n)).reshape(-1).to(x.device)
            S = starts.numel()

            def seg(t: torch.Tensor) -> torch.Tensor:
                return t.index_select(1, rows).reshape(Bsz * S, n, t.shape[-1])  # noqa: B023

            ys = selective_scan_channel_last(seg(u), seg(dl), A[k], seg(Bk), seg(Ck), Dk, None, bk, delta_softplus)
            y.index_copy_(1, rows, ys.reshape(Bsz, S * n, Cch))
        out[:, dims.groups[k]] += y.index_select(1, inv[k]).to(acc)  # back to natural order, summed per group
    return out.to(x.dtype)


def _row_tables(orders: torch.Tensor, reset: torch.Tensor | None, L: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The rows of the fast path, one table per segment length n: ``(idx (n, S) natural index read at step j by
    row s, dirs (S,) the direction of each row)``. Without reset each direction is one row of length L."""
    if reset is None:
        K = orders.shape[0]
        return [(orders.t().contiguous(), torch.arange(K, device=orders.device))]
    by_len: dict[int, tuple[list[torch.Tensor], list[int]]] = {}
    for k in range(orders.shape[0]):
        for n, starts in _segments(reset, k, L).items():
            idx, dirs = by_len.setdefault(n, ([], []))
            idx.append(orders[k][(starts[:, None] + torch.arange(n)).to(orders.device)])  # (S_k, n)
            dirs += [k] * starts.numel()
    return [(torch.cat(idx).t().contiguous(), torch.tensor(dirs, device=orders.device))
            for n, (idx, dirs) in sorted(by_len.items())]


def _natural_rows(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``t (Bsz, K, L, F)`` as ``(Bsz, M, F)`` rows to index: one natural-order copy when t is the same tensor for
    every direction (a zero-stride view, or K = 1), else the K copies side by side (direction k at rows k*L + l).
    Returns (rows, per_direction)."""
    if t.shape[1] == 1 or t.stride(1) == 0:
        return t[:, 0], False
    return t.reshape(t.shape[0], t.shape[1] * t.shape[2], t.shape[-1]), True


def _shared_dt(delta: torch.Tensor, delta_bias: torch.Tensor | None, per_dir: bool, softplus: bool,
               ct: torch.dtype, record_grad: bool) -> torch.Tensor | None:
    """``dt = softplus(delta + delta_bias)`` once, ``(Bsz, L, C)`` in ct, natural order, when it is the same for
    every direction: delta one tensor for all directions (``per_dir`` False: a zero-stride view, or K = 1) and
    delta_bias None or one row for all (a zero-stride view over K, or K = 1); else None (dt per direction). The
    same elementwise ops as per direction, so the same values and the same NaN/inf reach."""
    if per_dir or not (delta_bias is None or delta_bias.shape[0] == 1 or delta_bias.stride(0) == 0):
        return None
    bias = None if delta_bias is None else delta_bias[0]
    if record_grad:
        return _dt(delta[:, 0], bias, softplus, ct, 2)
    if bias is None and not softplus and delta.dtype == ct:
        return delta[:, 0]  # dt is delta itself: read in place, never written
    dt = delta[:, 0].to(ct, copy=True)  # our buffer: bias and softplus in place
    return _dt(dt, bias, softplus, ct, 2, inplace=True)


def _gather(rows: torch.Tensor, per_dir: bool, idx: torch.Tensor, dirs: torch.Tensor, L: int,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """Time-major ``(m, S, Bsz, F)`` of ``rows (Bsz, M, F)`` at the natural indices ``idx (m, S)`` of directions
    ``dirs (S,)``. With ``out`` (a buffer of at least m*S*Bsz*F elements, any dtype; no autograd) the result is
    written there: reused buffers spare the page faults of fresh multi-megabyte temporaries."""
    flat = (idx + dirs * L if per_dir else idx).reshape(-1)
    shape = (*idx.shape, rows.shape[0], rows.shape[-1])
    if out is None:
        return rows.index_select(1, flat).transpose(0, 1).contiguous().view(shape)
    res = out.view(-1)[:flat.numel() * rows.shape[0] * rows.shape[-1]]
    if rows.shape[0] == 1 and rows.dtype == out.dtype:  # (1, I, F) is time-major already
        return torch.index_select(rows, 1, flat, out=res.view(1, flat.numel(), -1)).view(shape)
    return res.view(shape).copy_(rows.index_select(1, flat).transpose(0, 1).view(shape))


def ordered_selective_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                           C: torch.Tensor, D: torch.Tensor | None, orders: torch.Tensor, groups: Sequence[int],
                           reset: torch.Tensor | None = None, delta_bias: torch.Tensor | None = None,
                           delta_softplus: bool = True) -> torch.Tensor:
    """Selective scan of the tokens read in each order, written back in natural order and summed per group.

    Args:
        x: ``[Bsz, L, C]`` natural-order input, shared by all directions.
        delta: ``[Bsz, K, L, C]`` natural-order time steps per direction (before bias / softplus).
        A: ``[K, C, N]`` (float32).
        B: ``[Bsz, K, L, N]`` natural order.
        C: ``[Bsz, K, L, N]`` natural order.
        D: ``[K, C]`` skip per direction, or None.
        orders: ``[K, L]`` int64 permutations (``orders[k, j]`` = natural index read at step j).
        groups: K ints: output group of each direction (G = max + 1, every id used).
        reset: ``[K, L]`` bool or None: the state is zeroed before step j where ``reset[k, j]``.
        delta_bias: ``[K, C]`` or None.
        delta_softplus: softplus (threshold 20) on ``delta + delta_bias``.

    Returns:
        ``[Bsz, G, L, C]`` in x's dtype.

    Example:
        >>> from glsmamba.reference.space_time import STS6D, STS6D_GROUPS, scan_orders
        >>> o = scan_orders((2, 3, 4), STS6D); x = torch.randn(1, 24, 8)
        >>> out = ordered_selective_scan(x, torch.randn(1, 6, 24, 8), -torch.rand(6, 8, 4), torch.randn(1, 6, 24, 4),
        ...                              torch.randn(1, 6, 24, 4), None, o, STS6D_GROUPS)
        >>> out.shape
        torch.Size([1, 3, 24, 8])
    """
    # an empty batch: nothing to step; torch.export: the composition's graph does not grow with L
    if x.device.type != "cpu" or x.shape[0] == 0 or torch.compiler.is_exporting():
        return ordered_selective_scan_unfused(x, delta, A, B, C, D, orders, groups, reset, delta_bias,
                                              delta_softplus)
    return _fast_path(x, delta, A, B, C, D, orders, groups, reset, delta_bias, delta_softplus)


def gathered_steps(h: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, B: tuple[torch.Tensor, bool],
                   C: tuple[torch.Tensor, bool], ix: torch.Tensor, dirs: torch.Tensor, A2: torch.Tensor,
                   D_rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of the no-grad scan with dt shared by the directions, gathers included (compiled by the caller
    for full blocks, so that Inductor reads the tokens in place): x and dt ``(Bsz, L, C)`` natural order, B and C
    as :func:`_natural_rows` gives them, ``ix (m, S)`` the natural token of each (step, row) of directions
    ``dirs``; h and A2 channel-major ``(S * Bsz, C, N)``; D_rows ``(S, 1, C)`` or None. Returns
    ``(y (m, S, Bsz, C) with D u added, h)``, the same ops as the unfused block loop."""
    m, L = ix.shape[0], x.shape[1]

    def rows(t: torch.Tensor, per_dir: bool) -> torch.Tensor:  # time-major (m, S * Bsz, F), in dt's dtype
        return _gather(t, per_dir, ix, dirs, L).view(m, -1, t.shape[-1]).to(dt.dtype)

    u, d = rows(x, False), rows(dt, False)
    y, h = fused_steps(h, d, d * u, A2, rows(*B), rows(*C))
    y = y.view(*ix.shape, x.shape[0], -1)
    if D_rows is not None:
        y = torch.addcmul(y, D_rows, u.view(y.shape))
    return y, h


def _scatter(grad: torch.Tensor, g: torch.Tensor, per_dir: bool, idx: torch.Tensor, dirs: torch.Tensor, L: int) -> None:
    """The adjoint of :func:`_gather`: adds ``g (m, S, Bsz, F)`` into ``grad (Bsz, M, F)`` at the rows the gather
    read (a row read by several (step, row) pairs receives their sum)."""
    flat = (idx + dirs * L if per_dir else idx).reshape(-1)
    grad.index_add_(1, flat, g.reshape(flat.numel(), grad.shape[0], -1).transpose(0, 1).to(grad.dtype))


def _step_block(stepper: Stepper, u: torch.Tensor, dt: torch.Tensor, Bg: torch.Tensor, Cg: torch.Tensor,
                A2: torch.Tensor, D_rows: torch.Tensor | None, out: torch.Tensor, target: torch.Tensor,
                dtu: torch.Tensor | None = None, y: torch.Tensor | None = None) -> None:
    """Steps one block of m gathered tokens (no autograd) and adds them into the group sums: u and dt
    ``(m, S, Bsz, C)``, Bg and Cg ``(m, R, 1, N)``; ``y + D u`` is index-added into ``out (G*L, Bsz, C)`` at
    ``target (m, S)``. The stepper steps ``stepper.block`` tokens at a time; dtu and y are buffers of at least m
    ``(S, Bsz, C)`` rows (fresh tensors when None)."""
    m, S, Bsz, C = u.shape
    dtu = torch.mul(dt, u) if dtu is None else torch.mul(dt, u, out=dtu[:m])
    y = torch.empty_like(dtu) if y is None else y[:m]
    rows = (dt.view(m, S * Bsz, C), dtu.view(m, S * Bsz, C), y.view(m, S * Bsz, C))
    for a in range(0, m, stepper.block):
        e = min(m, a + stepper.block)
        stepper.step(rows[0][a:e], rows[1][a:e], A2, Bg[a:e], Cg[a:e], rows[2][a:e])
    if D_rows is not None:
        y.addcmul_(D_rows, u)
    out.index_add_(0, target.reshape(-1), y.view(m * S, Bsz, C))


def _block_rows(x, dt, Brows, Crows, per_dir, ib, dirs):
    """One block's rows for :class:`GatheredScan`, in dt's dtype: u and dt ``(m, S, Bsz, C)``, B and C
    ``(m, R, 1, N)`` (``per_dir``: the flags of B and C from :func:`_natural_rows`)."""
    L, ct = x.shape[1], dt.dtype
    m, R = ib.shape[0], ib.shape[1] * x.shape[0]
    B, C = (_gather(t, p, ib, dirs, L).to(ct).view(m, R, 1, -1) for t, p in zip((Brows, Crows), per_dir, strict=True))
    return _gather(x, False, ib, dirs, L).to(ct), _gather(dt, False, ib, dirs, L), B, C


class GatheredScan(torch.autograd.Function):
    """The scan of one row table with its gathers, ``D u`` and group sums, for autograd, when dt is the same for every
    direction: ``out (G*L, Bsz, C)``, time-major group sums (each row's ``y + D u`` added at ``target``).

    Inputs are the natural-order tensors (x and dt ``(Bsz, L, C)``, B and C rows as :func:`_natural_rows` gives
    them) and the table ``idx (n, S)``, ``dirs (S,)``; ``A_rows (R, N, C)`` and ``D_rows (S, 1, C)`` (or None) per
    row. The forward steps the rows block by block as the no-grad path does and keeps only those natural-order
    inputs and the state at each block start (:class:`SequentialScan` keeps the gathered rows: dt, dt u and, for its
    caller's product and group sum, u and y, each ``(n, R, C)``, K times the size of the natural tensors). The
    backward gathers each block's rows again, recomputes its decays and states from the kept state, runs
    :func:`block_backward` and adds the block's gradients back into natural order (:func:`_scatter`).
    """

    @staticmethod
    def forward(ctx, x, dt, Brows, Crows, A_rows, D_rows, idx, dirs, target, G, per_dir_b, per_dir_c):
        Bsz, L, C = x.shape
        n, S = idx.shape
        R, N = S * Bsz, A_rows.shape[1]
        ct = dt.dtype
        A2 = A_rows * _LOG2E
        stepper = Stepper(R, N, C, ct, x.device)
        states = torch.empty(-(-n // BLOCK), R, N, C, dtype=ct, device=x.device)
        out = torch.zeros(G * L, Bsz, C, dtype=ct, device=x.device)
        for i, s in enumerate(range(0, n, BLOCK)):
            states[i].copy_(stepper.state())
            rows = _block_rows(x, dt, Brows, Crows, (per_dir_b, per_dir_c), idx[s:s + BLOCK], dirs)
            _step_block(stepper, *rows, A2, D_rows, out, target[s:s + BLOCK])
        ctx.save_for_backward(x, dt, Brows, Crows, A_rows, D_rows, idx, dirs, target, states)
        ctx.flags = (per_dir_b, per_dir_c)
        return out

    @staticmethod
    def backward(ctx, gout):
        x, dt, Brows, Crows, A_rows, D_rows, idx, dirs, target, states = ctx.saved_tensors
        per_dir_b, per_dir_c = ctx.flags
        Bsz, L, C = x.shape
        n, S = idx.shape
        R, N = S * Bsz, A_rows.shape[1]
        ct = dt.dtype
        kw = dict(dtype=ct, device=x.device)
        A2 = A_rows * _LOG2E
        gx, gdt = torch.zeros(x.shape, **kw), torch.zeros(dt.shape, **kw)
        gBr, gCr = torch.zeros(Brows.shape, **kw), torch.zeros(Crows.shape, **kw)
        gA = torch.zeros(R, N, C, **kw)
        gD = None if D_rows is None else torch.zeros(D_rows.shape, **kw)
        gcarry = torch.zeros(R, N, C, **kw)
        bufs = tuple(torch.empty(BLOCK, R, N, C, **kw) for _ in range(3))
        bg = torch.empty(2, BLOCK, R, C, **kw)  # the block's gdt and gdtu
        gBC = torch.empty(2, BLOCK, R, 1, N, **kw)
        for i in reversed(range(-(-n // BLOCK))):
            s = i * BLOCK
            ib = idx[s:s + BLOCK]
            m = ib.shape[0]
            u, d, Bg, Cg = _block_rows(x, dt, Brows, Crows, (per_dir_b, per_dir_c), ib, dirs)
            gy = gout.index_select(0, target[s:s + BLOCK].reshape(-1)).view(m, S, Bsz, C)
            dtu = d * u
            gd, gdtu = bg[0, :m], bg[1, :m]
            gcarry = block_backward(states[i], d.view(m, R, C), dtu.view(m, R, C), A_rows, A2, Bg, Cg,
                                    gy.view(m, R, C), gcarry, gA, bufs, lambda v: v,
                                    (gd, gdtu, gBC[0, :m], gBC[1, :m]))
            gdtu = gdtu.view(m, S, Bsz, C)
            gu = gdtu * d  # through dt u
            if D_rows is not None:
                gu.addcmul_(gy, D_rows)
                gD.add_((gy * u).sum((0, 2))[:, None])
            gd = gd.view(m, S, Bsz, C).addcmul_(gdtu, u)
            _scatter(gx, gu, False, ib, dirs, L)
            _scatter(gdt, gd, False, ib, dirs, L)
            _scatter(gBr, gBC[0, :m].view(m, S, Bsz, N), per_dir_b, ib, dirs, L)
            _scatter(gCr, gBC[1, :m].view(m, S, Bsz, N), per_dir_c, ib, dirs, L)
        return (gx.to(x.dtype), gdt, gBr.to(Brows.dtype), gCr.to(Crows.dtype), gA.to(A_rows.dtype),
                None if gD is None else gD.to(D_rows.dtype), None, None, None, None, None, None)


@torch.compiler.disable  # a loop over blocks of tokens: torch.compile runs it eagerly (a graph break)
def _fast_path(x, delta, A, B, C, D, orders, groups, reset, delta_bias, delta_softplus):
    dims, _ = _check_ordered_scan(x, delta, A, B, C, D, orders, groups, reset, delta_bias)
    Bsz, L, Cch, N = dims.batch, dims.length, dims.channels, dims.dstate
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    G = max(dims.groups) + 1
    grp = torch.tensor(dims.groups, device=x.device)
    record_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, delta, A, B, C, D, delta_bias))
    xr = (x, False)
    dr, br, cr = _natural_rows(delta), _natural_rows(B), _natural_rows(C)
    dt_shared = _shared_dt(delta, delta_bias, dr[1], delta_softplus, ct, record_grad)  # (Bsz, L, C) or None
    out = torch.zeros(G * L, Bsz, Cch, dtype=ct, device=x.device)  # time-major group sums
    for idx, dirs in _row_tables(orders, reset, L):
        S = dirs.numel()
        R = S * Bsz
        A_dirs = A.to(ct)[dirs].transpose(1, 2)  # (S, N, C)
        A_rows = A_dirs[:, None].expand(S, Bsz, N, Cch).reshape(R, N, Cch)
        bias = None if delta_bias is None else delta_bias.to(ct)[dirs][:, None]  # (S, 1, C)
        D_rows = None if D is None else D.to(ct)[dirs][:, None]
        target = idx + grp[dirs] * L  # (n, S): row of the group sum each step adds to
        if record_grad and dt_shared is not None:
            out = out + GatheredScan.apply(x, dt_shared, br[0], cr[0], A_rows, D_rows, idx, dirs, target, G, br[1],
                                           cr[1])
            continue
        if record_grad:
            u = _gather(*xr, idx, dirs, L).to(ct)  # dt per direction (a shared dt took GatheredScan above)
            dt = _gather(*dr, idx, dirs, L).to(ct)
            dt = _dt(dt if bias is None else dt + bias, None, delta_softplus, ct, 3)
            dtu = dt * u
            n = idx.shape[0]
            y, _ = SequentialScan.apply(dt.view(n, R, Cch), dtu.view(n, R, Cch), A_rows,
                                        _gather(*br, idx, dirs, L).to(ct).view(n, R, 1, N),
                                        _gather(*cr, idx, dirs, L).to(ct).view(n, R, 1, N))
            y = y.view(n, S, Bsz, Cch)
            if D_rows is not None:
                y = torch.addcmul(y, D_rows, u)
            out = out.index_add(0, target.reshape(-1), y.reshape(n * S, Bsz, Cch))
            continue
        if dt_shared is not None and not torch.compiler.is_compiling() and _cpu_kernels.use_kernel(ct):
            with torch.no_grad():
                _cpu_kernels.gathered_scan(out, x, dt_shared, br, cr, idx, dirs, A_dirs * _LOG2E, D_rows, target)
            continue
        A2 = A_rows.contiguous() * _LOG2E
        stepper = Stepper(R, N, Cch, ct, x.device)
        q = stepper.block
        if stepper.fused and dt_shared is not None:  # fused steps with their gathers
            A2c = stepper.channel_major(A2)
            with torch.no_grad():
                for s in range(0, idx.shape[0], q):
                    ix = idx[s:s + q]
                    args = (stepper.h, x, dt_shared, br, cr, ix, dirs, A2c, D_rows)
                    y, stepper.h = (_scan_seq.run_compiled(gathered_steps, *args) if ix.shape[0] == BLOCK
                                    else gathered_steps(*args))
                    out.index_add_(0, target[s:s + q].reshape(-1), y.reshape(-1, Bsz, Cch))
            continue
        u_b, dt_b, dtu_b, y_b = (torch.empty(q, S, Bsz, Cch, dtype=ct, device=x.device) for _ in range(4))
        B_b, C_b = (torch.empty(q, R, 1, N, dtype=ct, device=x.device) for _ in range(2))
        with torch.no_grad():
            for s in range(0, idx.shape[0], q):
                ib = idx[s:s + q]
                m = ib.shape[0]
                u = _gather(*xr, ib, dirs, L, u_b)
                if dt_shared is not None:
                    dt = _gather(dt_shared, False, ib, dirs, L, dt_b)
                else:
                    dt = _gather(*dr, ib, dirs, L, dt_b)
                    if bias is not None:
                        dt.add_(bias)
                    _dt(dt, None, delta_softplus, ct, 3, inplace=True)
                _step_block(stepper, u, dt, _gather(*br, ib, dirs, L, B_b).view(m, R, 1, N),
                            _gather(*cr, ib, dirs, L, C_b).view(m, R, 1, N), A2, D_rows, out, target[s:s + q],
                            dtu_b, y_b)
    return out.view(G, L, Bsz, Cch).permute(2, 0, 1, 3).to(x.dtype).contiguous()
