"""The CPU fast path of the reference scans: the recurrence itself, one fused op per token over every row at once.

Time-major layout: per-token tensors ``(L, R, D)`` (R rows: batch rows, or scan directions x batch rows), B and C
``(L, R, G, N)`` (channel d reads group ``d // (D // G)``), states ``(R, N, D)``. For every row, state and channel::

    a_t = exp2(dt_t * A2)            A2 = A * log2(e): the oracle's exp(dt_t * A)
    h_t = a_t * h_{t-1} + dtu_t B_t  dtu = dt * u, h_{-1} = h0 (zero)
    y_t = sum_n C_t[n] h_t[n]

in the oracle's order of operations (``selective_scan_recurrent``): no closed form mixes tokens, so the values
agree to rounding and a NaN or inf reaches exactly the outputs and gradients it reaches in the oracle. Per block of
up to ``BLOCK`` tokens the exponentials, the input terms ``dtu_t B_t`` and the contraction with C are single
batched ops over ``(tokens, R, N, D)`` on all intra-op threads, and the sequential part is one ``addcmul`` per
token (on one thread while the state is small); with a large state (many rows: the reset segments of windowed
scans) each token is instead four in-place ops on the one ``(R, N, D)`` state, each large enough for all threads.
One exponential per (token, state, channel) is the least work the recurrence needs (the
chunked closed form in ``_scan_chunked.py`` spends two, plus prefix sums); ``bench/bench_reference_speed.py``
measures both.

Fused steps: with ``_FUSED_ELEMS`` to ``_STEP_ELEMS`` state elements (on a CPU, G = 1) the forward runs each block of
``BLOCK`` tokens as one ``torch.compile``d function (:func:`fused_steps`, Inductor's C++ backend): every
(row, channel) keeps its N states in registers through the block -- one exponential (:func:`exp2`, a polynomial
Inductor vectorises), two multiply-adds and the contraction with C per (token, state, channel), nothing written but
y and the last state. Its state is channel-major ``(R, D, N)``, as in the oracle. The same function runs eagerly for
the tokens after the last full block (and where compiling is switched off), so both are the one formula, in the
oracle's order of operations.
``GLSMAMBA_SCAN_COMPILE``: ``auto`` (the default: fused in that range of state sizes; if compiling
fails, a warning and the unfused steps from then on), ``1`` (fused at every size; a compile failure raises), ``0``
(never).

Autograd: :class:`SequentialScan` keeps only the state at each block start; its backward recomputes a block's
decays and states from there and steps the adjoint recurrence ``g_t = C_t gy_t + a_{t+1} g_{t+1}`` backwards
(the gradient of h_t), giving ``d(dtu)_t = sum_n g_t B_t``, ``dB_t = sum_d g_t dtu_t``, ``dC_t = sum_d gy_t h_t``
and, through ``p_t = g_t h_{t-1} a_t``, ``d(dt)_t = sum_n p_t A`` and ``dA = sum_t p_t dt_t`` (the oracle's
autograd graph, term by term).
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings

import torch

# Tokens per block of batched work (the buffers hold BLOCK x R x N x D elements), and between the states the
# autograd path keeps for its backward.
BLOCK = 16
# Fewer tokens per block when R*N*D is large: keep a block's buffers near the L2/L3 cache.
_BLOCK_ELEMS = 1 << 20
# From this many state elements (rows x N x D) on, the forward steps each token in place (see Stepper): the per-token
# ops are then large enough for all intra-op threads. Below it, a block's decays and input terms are single ops
# over (block, R, N, D) on all threads and only the recurrence itself runs per token. Measured on 2 cores (torch
# 2.13, the base network's sts6d scan: 6 x 16 x 512 state, L = 15,360, no grad, the two paths alternated in one
# process, medians of 6): per token 1.39 s, block path 1.06 s per call.
_STEP_ELEMS = 1 << 17
# Below this many state elements the per-token ops (the recurrence's addcmul) run on one intra-op thread: ops this
# small (49k elements for the base scan above) spend more on OpenMP's fork/join than two threads save.
_SERIAL_ELEMS = 1 << 17
# From this many state elements up to _STEP_ELEMS the forward runs compiled fused steps instead of the block path (see
# the module docstring). Measured on 2 cores (torch 2.13, no grad, OMP_WAIT_POLICY unset): the base network's sts6d
# scan as above 1.73-1.81 s per call fused, 2.78-2.86 s unfused; the steps alone (Stepper.scan, medians of 5) for a
# 6 x 16 x 512 state 63-69 ms fused vs 80-134 ms blocked over 960 tokens, a 64 x 8 x 64 state 15-20 vs 14-23 ms. The
# large states that step per token are as fast unfused: 128 x 16 x 512 (the base LRM scan) 150-170 ms per token vs
# 205-218 ms fused over 120 tokens, 512 x 4 x 64 (tiny's) 25-27 vs 49-50 ms. The compile takes ~15 s once per
# state shape (cached on disk by Inductor after).
_FUSED_ELEMS = 1 << 15
_LOG2E = 1.0 / math.log(2.0)
_COMPILED: dict = {}  # function -> its torch.compile'd version, built on first use
_COMPILE_FAILED = [False]  # set once compiling failed under "auto": every later forward runs eagerly


@contextlib.contextmanager
def intra_op_threads(n: int):
    """torch's intra-op thread count set to ``n`` (at most the current count) inside the block, restored after
    (process-wide, as ``torch.set_num_threads``)."""
    prev = torch.get_num_threads()
    if n >= prev:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def serial_for(state: torch.Tensor):
    """The thread count for per-token ops on ``state``: one intra-op thread below ``_SERIAL_ELEMS`` elements."""
    return intra_op_threads(1 if state.numel() < _SERIAL_ELEMS else torch.get_num_threads())


def block_size(rows: int, dstate: int, dim: int) -> int:
    return max(1, min(BLOCK, _BLOCK_ELEMS // max(1, rows * dstate * dim)))


def outer(v: torch.Tensor, w: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out[t, r, n, d] = v[t, r, d] * w[t, r, g(d), n]``: v ``(m, R, D)``, w ``(m, R, G, N)`` -> ``(m, R, N, D)``."""
    m, R, D = v.shape
    G, N = w.shape[2:]
    if G == 1:
        return torch.mul(v[:, :, None, :], w[:, :, 0, :, None], out=out)
    rep = D // G
    torch.mul(v.view(m, R, 1, G, rep), w.transpose(2, 3)[..., None], out=out.view(m, R, N, G, rep))
    return out


def contract_n(w: torch.Tensor, S: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_n w[t, r, g(d), n] * S[t, r, n, d]``: w ``(m, R, G, N)``, S ``(m, R, N, D)`` -> ``(m, R, D)``."""
    m, R, N, D = S.shape
    G = w.shape[2]
    if G == 1:  # one (1 x N) @ (N x D) product per token and row
        y = torch.bmm(w.reshape(m * R, 1, N), S.view(m * R, N, D),
                      out=None if out is None else out.view(m * R, 1, D))
        return y.view(m, R, D)
    rep = D // G
    prod = S.view(m, R, N, G, rep) * w.transpose(2, 3)[..., None]
    return torch.sum(prod, 2, out=None if out is None else out.view(m, R, G, rep)).view(m, R, D)


def contract_d(S: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``sum_{d in group g} S[t, r, n, d] * v[t, r, d]``: S ``(m, R, N, D)``, v ``(m, R, D)`` -> ``(m, R, G, N)``
    (G from the caller's B/C: this returns G = 1 unless ``v`` is given as ``(m, R, G, D // G)``)."""
    m, R, N, D = S.shape
    if v.dim() == 3:
        return torch.bmm(S.view(m * R, N, D), v.reshape(m * R, D, 1)).view(m, R, 1, N)
    G, rep = v.shape[2:]
    return (S.view(m, R, N, G, rep) * v[:, :, None]).sum(-1).transpose(2, 3)


def _exp2_coefficients(degree: int = 6) -> tuple[float, ...]:
    """Coefficients ``c_k`` of the polynomial that interpolates ``2^r`` at the ``degree + 1`` Chebyshev points of
    ``[-1/2, 1/2]`` (solved in fp64, rounded to fp32): ``2^r ~ sum_k c_k r^k`` there."""
    j = torch.arange(degree + 1, dtype=torch.float64)
    r = 0.5 * torch.cos((2 * j + 1) * math.pi / (2 * degree + 2))
    c = torch.linalg.solve(r[:, None] ** j, torch.exp2(r))
    return tuple(float(v) for v in c.float())


_EXP2_COEFFS = _exp2_coefficients()


def exp2(x: torch.Tensor) -> torch.Tensor:
    """``2^x`` from pointwise ops Inductor's C++ backend vectorises, for fp32 (other dtypes: ``torch.exp2``).

    ``2^x = 2^n 2^r`` with ``n = round(x)``, ``r = x - n`` in ``[-1/2, 1/2]``: ``2^r`` by the degree-6 polynomial of
    :func:`_exp2_coefficients` (Horner), ``2^n`` as two fp32 powers of two built from their exponent bits (two, so
    that results below 2^-126 round to subnormals as the exact value does). ``x`` is clamped to ``[-151, 128]`` first:
    below, the exact value rounds to 0; above, to inf; NaN stays NaN. Within 1.3 ulp of the exact value over the
    normal range and within one step (2^-149) below it (``torch.exp2``, Sleef's: 1 ulp); 0 at -inf, inf at inf,
    NaN at NaN (tests/test_reference_fast_paths.py). Measured against Sleef's exp2 call in the same compiled steps
    (2 cores, torch 2.13, a 6 x 16 x 512 state, best of 5): :func:`fused_steps` 33.8 -> 26.8 ms per 960 tokens; the
    ordered scan's autograd forward at 3,840 tokens 0.256 -> 0.21 s; its no-grad ``gathered_steps`` (the model's
    inference path) 33.8 -> 32.5 ms (there the exponential is ~1/3 of the time, the rest the gathers and the 16
    per-token reductions; the int-to-float bit casts of the two powers of two compile to scalar loops)."""
    if x.dtype != torch.float32:
        return torch.exp2(x)
    x = x.clamp(-151.0, 128.0)
    n = torch.round(x)
    r = x - n
    *low, top = _EXP2_COEFFS
    p = r * top + low[-1]
    for c in reversed(low[:-1]):
        p = p * r + c
    n = n.to(torch.int32)
    half = n >> 1
    return p * ((half + 127) << 23).view(torch.float32) * ((n - half + 127) << 23).view(torch.float32)


def fused_steps(h: torch.Tensor, dt: torch.Tensor, dtu: torch.Tensor, A2: torch.Tensor, Bm: torch.Tensor,
                Cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """m tokens of the recurrence on a channel-major state: h ``(R, D, N)``, dt and dtu ``(m, R, D)``, A2
    ``(R or 1, D, N)``, Bm and Cm ``(m, R, N)``. Returns ``(y (m, R, D), h_last)``. Written for torch.compile,
    which unrolls the m tokens into one loop over (row, channel) (see the module docstring); the decays through
    :func:`exp2`."""
    ys = []
    for t in range(dt.shape[0]):
        h = torch.addcmul(dtu[t, :, :, None] * Bm[t, :, None, :], exp2(dt[t, :, :, None] * A2), h)
        ys.append((h * Cm[t, :, None, :]).sum(-1))
    return torch.stack(ys), h


def _scan_compile_mode() -> str:
    mode = os.environ.get("GLSMAMBA_SCAN_COMPILE", "auto")
    if mode not in ("auto", "0", "1"):
        raise ValueError(f"GLSMAMBA_SCAN_COMPILE must be 'auto', '0' or '1', got {mode!r}")
    return mode


def use_fused(elems: int, groups: int, device: torch.device) -> bool:
    """Whether a forward over a state of ``elems`` elements runs the fused steps (see the module docstring)."""
    mode = _scan_compile_mode()
    if groups != 1 or device.type != "cpu" or mode == "0" or _COMPILE_FAILED[0]:
        return False
    return mode == "1" or _FUSED_ELEMS <= elems < _STEP_ELEMS


def run_compiled(fn, *args):
    """``fn(*args)`` through ``torch.compile`` (one compiled version per function, built on first use). Under
    ``GLSMAMBA_SCAN_COMPILE=auto`` a failure to compile (no C++ compiler, say) warns once and runs ``fn`` eagerly,
    as every later forward will."""
    if _COMPILE_FAILED[0]:
        return fn(*args)
    compiled = _COMPILED.get(fn)
    if compiled is None:
        # dynamic=None: the first shapes compile static; new ones recompile with the changed sizes (rows: batch sizes,
        # segment counts) symbolic, once. The token count stays static: every compiled call has BLOCK tokens.
        compiled = _COMPILED[fn] = torch.compile(fn, fullgraph=True)
    try:
        return compiled(*args)
    except Exception as e:  # Inductor reports a missing or failing compiler as several exception types
        if _scan_compile_mode() == "1":
            raise
        warnings.warn(f"GLSMAMBA_SCAN_COMPILE=auto: compiling the reference scan's fused steps failed ({e!r}); "
                      "the unfused steps run instead (set GLSMAMBA_SCAN_COMPILE=0 to skip the attempt)",
                      RuntimeWarning, stacklevel=2)
        _COMPILE_FAILED[0] = True
        return fn(*args)


def block_states(h: torch.Tensor, dt: torch.Tensor, dtu: torch.Tensor, A2: torch.Tensor, Bm: torch.Tensor,
                 a_buf: torch.Tensor, h_buf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decays ``a (m, R, N, D)`` and states ``H (m, R, N, D)`` of one block of m tokens, into the buffers.

    ``h (R, N, D)`` is the state before the block (read only; it may live in another buffer).
    """
    m = dt.shape[0]
    a = torch.mul(dt[:, :, None, :], A2, out=a_buf[:m]).exp2_()
    H = outer(dtu, Bm, h_buf[:m])
    with serial_for(h):
        for H_t, a_t in zip(H.unbind(0), a.unbind(0), strict=True):
            h = H_t.addcmul_(a_t, h)  # h_t = dtu_t B_t + a_t h_{t-1}
    return a, H


class Stepper:
    """Steps the recurrence block by block without autograd; holds the state and reusable buffers.

    ``step`` takes one block's ``dt, dtu (m, R, D)``, ``Bm, Cm (m, R, G, N)`` and writes ``y (m, R, D)``. With at
    least ``_STEP_ELEMS`` state elements (and G = 1) every token is done in place on the one state tensor -- decay,
    input term and output contraction (four ops per token on ``(R, N, D)`` tensors; on one intra-op thread below
    ``_SERIAL_ELEMS``); with fewer, a block's decays and states go through ``(block, R, N, D)`` buffers (fewer,
    larger ops; only the recurrence's addcmul runs per token).
    """

    def __init__(self, rows: int, dstate: int, dim: int, dtype: torch.dtype, device: torch.device,
                 block: int | None = None, groups: int = 1):
        kw = dict(dtype=dtype, device=device)
        self.fused = use_fused(rows * dstate * dim, groups, torch.device(device))
        if self.fused:
            self.block = block or BLOCK
            self.h = torch.zeros(rows, dim, dstate, **kw)  # channel-major
            self._A2 = None
            return
        self.block = block or block_size(rows, dstate, dim)
        self.h = torch.zeros(rows, dstate, dim, **kw)
        self.per_token = groups == 1 and rows * dstate * dim >= _STEP_ELEMS
        if self.per_token:
            self._a = torch.empty(rows, dstate, dim, **kw)
            return
        self._a = torch.empty(self.block, rows, dstate, dim, **kw)
        self._H = (torch.empty(self.block, rows, dstate, dim, **kw), torch.empty(self.block, rows, dstate, dim, **kw))
        self._i = 0

    def channel_major(self, A2: torch.Tensor) -> torch.Tensor:
        """``A2 (R or 1, N, D)`` as the fused steps read it, ``(R or 1, D, N)`` (made once: A2 is the same tensor at
        every step of one scan)."""
        if self._A2 is None:
            self._A2 = A2.transpose(1, 2).contiguous()
        return self._A2

    def state(self) -> torch.Tensor:
        """The current state as ``(R, N, D)`` (a view)."""
        return self.h.transpose(1, 2) if self.fused else self.h

    def step(self, dt, dtu, A2, Bm, Cm, y):
        if self.fused:
            args = (self.h, dt, dtu, self.channel_major(A2), Bm[:, :, 0], Cm[:, :, 0])
            # the last partial block eagerly
            y_new, self.h = run_compiled(fused_steps, *args) if dt.shape[0] == BLOCK else fused_steps(*args)
            return y.copy_(y_new)
        if self.per_token:
            h, a = self.h, self._a
            m, R, D = dt.shape
            per_token = zip(dt.view(m, R, 1, D).unbind(0), dtu.view(m, R, 1, D).unbind(0),
                            Bm.transpose(2, 3).unbind(0), Cm.unbind(0), y.view(m, R, 1, D).unbind(0), strict=True)
            with serial_for(h):
                for dt_t, dtu_t, B_t, C_t, y_t in per_token:  # (R, 1, D), (R, 1, D), (R, N, 1), (R, 1, N), (R, 1, D)
                    torch.mul(dt_t, A2, out=a).exp2_()
                    h.mul_(a).addcmul_(dtu_t, B_t)  # a_t h_{t-1} + dtu_t B_t
                    torch.bmm(C_t, h, out=y_t)
            return y
        _, H = block_states(self.h, dt, dtu, A2, Bm, self._a, self._H[self._i])
        contract_n(Cm, H, y)
        self.h = H[-1]  # the other buffer is written next: this state stays valid for one more block
        self._i ^= 1
        return y

    def scan(self, dt, dtu, A2, Bm, Cm, y, states: torch.Tensor | None = None):
        """The whole sequence ``(L, R, ...)``; ``states[i]`` (if given) receives the state entering token
        ``i * BLOCK`` (the checkpoints of the backward)."""
        L, q = dt.shape[0], (BLOCK if states is not None else self.block)
        for i, s in enumerate(range(0, L, q)):
            if states is not None:
                states[i].copy_(self.state())
            for a in range(s, min(L, s + q), self.block):
                e = min(L, s + q, a + self.block)
                self.step(dt[a:e], dtu[a:e], A2, Bm[a:e], Cm[a:e], y[a:e])
        return y, self.state().clone(memory_format=torch.contiguous_format)


def scan(dt, dtu, A, Bm, Cm, y=None):
    """No-grad scan of time-major inputs (ct dtype): returns ``(y (L, R, D), last state (R, N, D))``.

    ``y`` may be ``dtu`` itself (each block reads its dtu before writing its y)."""
    L, R, D = dt.shape
    N = Bm.shape[-1]
    if y is None:
        y = torch.empty(L, R, D, dtype=dt.dtype, device=dt.device)
    return Stepper(R, N, D, dt.dtype, dt.device, groups=Bm.shape[2]).scan(dt, dtu, A * _LOG2E, Bm, Cm, y)


def block_backward(hprev, dt, dtu, A, A2, Bm, Cm, gy, gcarry, gA, bufs, grouped, grads):
    """One block of :class:`SequentialScan`'s backward (the module docstring's adjoint recurrence).

    ``hprev (R, N, D)``: the state entering the block; dt, dtu, Bm, Cm, gy: the block's m tokens; ``gcarry``: dL/dh
    of the block's last state from later tokens; ``gA (R, N, D)`` accumulates; ``bufs``: three ``(>= m, R, N, D)``
    buffers; ``grouped``: views ``(m, R, D)`` as B's groups; ``grads = (gdt, gdtu, gB, gC)`` the block's slices,
    written. Returns the carry into the previous block."""
    a_buf, h_buf, g_buf = bufs
    gdt, gdtu, gB, gC = grads
    m = dt.shape[0]
    a, H = block_states(hprev, dt, dtu, A2, Bm, a_buf, h_buf)
    gC.copy_(contract_d(H, grouped(gy)))
    Gh = outer(gy, Cm, g_buf[:m])  # C_t gy_t, then the adjoint recurrence
    Gh[m - 1].add_(gcarry)
    with serial_for(gcarry):
        for t in range(m - 2, -1, -1):
            Gh[t].addcmul_(a[t + 1], Gh[t + 1])
    gcarry = a[0] * Gh[0]
    contract_n(Bm, Gh, gdtu)
    gB.copy_(contract_d(Gh, grouped(dtu)))
    P = Gh  # p_t = g_t h_{t-1} a_t: the gradient of the exponent dt_t * A
    P[0].mul_(hprev)
    if m > 1:
        P[1:].mul_(H[:-1])
    P.mul_(a)
    gA.add_(torch.mul(P, dt[:, :, None, :], out=a_buf[:m]).sum(0))
    torch.sum(P.mul_(A), 2, out=gdt)
    return gcarry


class SequentialScan(torch.autograd.Function):
    """``(y, h_last) = scan(dt, dtu, A, Bm, Cm)`` with the hand-written backward of the module docstring.

    dt, dtu ``(L, R, D)``; A ``(R, N, D)`` or ``(1, N, D)`` (natural, not scaled); Bm, Cm ``(L, R, G, N)``;
    all in the compute dtype. Returns y ``(L, R, D)`` and the last state ``(R, N, D)``.
    """

    @staticmethod
    def forward(ctx, dt, dtu, A, Bm, Cm):
        L, R, D = dt.shape
        N = Bm.shape[-1]
        stepper = Stepper(R, N, D, dt.dtype, dt.device, groups=Bm.shape[2])
        states = torch.empty(-(-L // BLOCK), R, N, D, dtype=dt.dtype, device=dt.device)  # one per BLOCK tokens
        y = torch.empty(L, R, D, dtype=dt.dtype, device=dt.device)
        y, h = stepper.scan(dt, dtu, A * _LOG2E, Bm, Cm, y, states)
        ctx.save_for_backward(dt, dtu, A, Bm, Cm, states)
        return y, h

    @staticmethod
    def backward(ctx, gy, gh):
        dt, dtu, A, Bm, Cm, states = ctx.saved_tensors
        L, R, D = dt.shape
        G, N = Bm.shape[2:]
        q = BLOCK
        kw = dict(dtype=dt.dtype, device=dt.device)
        if gy is None:
            gy = torch.zeros(L, R, D, **kw)
        A2 = A * _LOG2E
        gdt, gdtu = torch.empty_like(dt), torch.empty_like(dtu)
        gB, gC = torch.empty(Bm.shape, **kw), torch.empty(Cm.shape, **kw)
        gA = torch.zeros(R, N, D, **kw)
        gcarry = torch.zeros(R, N, D, **kw) if gh is None else gh.to(dt.dtype).clone()  # dL/dh_{e-1} from later
        bufs = tuple(torch.empty(q, R, N, D, **kw) for _ in range(3))
        grouped = (lambda v: v) if G == 1 else (lambda v: v.view(v.shape[0], R, G, D // G))
        for i in reversed(range(-(-L // q))):
            s, e = i * q, min(L, (i + 1) * q)
            gcarry = block_backward(states[i], dt[s:e], dtu[s:e], A, A2, Bm[s:e], Cm[s:e], gy[s:e], gcarry, gA, bufs,
                                    grouped, (gdt[s:e], gdtu[s:e], gB[s:e], gC[s:e]))
        if A.shape[0] != R:
            gA = gA.sum(0, keepdim=True)
        return gdt, gdtu, gA, gB, gC
