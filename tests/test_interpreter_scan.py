"""The interpreter's custom-combine scan, folded per step (kernels._utils.vectorise_interpreter_scan), gives
bit-identical results to the interpreter's own per-element fallback: 1-D, 2-D and 3-D blocks, each axis, forward and
reversed, tuple and single inputs."""

from __future__ import annotations

import pytest
import torch

from glsmamba.kernels import _utils

pytestmark = pytest.mark.skipif(not _utils.interpreting(), reason="the patch applies to the Triton interpreter only")

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")


@triton.jit
def _affine(a1, b1, a2, b2):
    return a1 * a2, b1 * a2 + b2


@triton.jit
def _maxplus(x, y):  # a single-input, non-arithmetic combine
    return tl.maximum(x, y) + 0.5


@triton.jit
def _scan_kernel(a_ptr, b_ptr, h_ptr, m_ptr, S0: tl.constexpr, S1: tl.constexpr, S2: tl.constexpr,
                 AXIS: tl.constexpr, REVERSE: tl.constexpr):
    i0 = tl.arange(0, S0)[:, None, None]
    i1 = tl.arange(0, S1)[None, :, None]
    i2 = tl.arange(0, S2)[None, None, :]
    o = (i0 * S1 + i1) * S2 + i2
    a = tl.load(a_ptr + o)
    b = tl.load(b_ptr + o)
    _, h = tl.associative_scan((a, b), AXIS, _affine, reverse=REVERSE)
    tl.store(h_ptr + o, h)
    tl.store(m_ptr + o, tl.associative_scan(b, AXIS, _maxplus, reverse=REVERSE))


@triton.jit
def _scan_1d_kernel(a_ptr, b_ptr, h_ptr, S: tl.constexpr):
    o = tl.arange(0, S)
    _, h = tl.associative_scan((tl.load(a_ptr + o), tl.load(b_ptr + o)), 0, _affine)
    tl.store(h_ptr + o, h)


def _run(shape, axis, reverse):
    g = torch.Generator().manual_seed(sum(shape) + axis)
    a = torch.rand(shape, generator=g) * 0.9 + 0.05
    b = torch.randn(shape, generator=g)
    h, m = torch.empty(shape), torch.empty(shape)
    _scan_kernel[(1,)](a, b, h, m, *shape, AXIS=axis, REVERSE=reverse)
    return a, b, h, m


@pytest.fixture
def original_scan(monkeypatch):
    """Run a block with the interpreter's own per-element fallback instead of the per-step fold."""
    from triton.runtime import interpreter as ti

    def use_original():
        monkeypatch.setattr(ti.ScanOps, "generic_scan", ti.ScanOps.generic_scan.original)

    return use_original


def test_the_fold_is_installed_under_the_interpreter():
    from triton.runtime import interpreter as ti

    assert _utils.vectorise_interpreter_scan()
    assert getattr(ti.ScanOps.generic_scan, "_glsmamba_vectorised", False)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape,axis", [((1, 4, 16), 2), ((2, 8, 4), 1), ((4, 2, 8), 0)])
def test_per_step_fold_is_bit_identical_to_the_interpreters_own(shape, axis, reverse, original_scan):
    a, b, h, m = _run(shape, axis, reverse)
    original_scan()
    _, _, h0, m0 = _run(shape, axis, reverse)
    assert torch.equal(h, h0) and torch.equal(m, m0)
    # and both are the sequential recurrence h_t = a_t h_{t-1} + b_t along the axis
    ref = torch.empty_like(b)
    steps = range(shape[axis] - 1, -1, -1) if reverse else range(shape[axis])
    prev = None
    for t in steps:
        cur = b.select(axis, t) if prev is None else a.select(axis, t) * prev + b.select(axis, t)
        ref.select(axis, t).copy_(cur)
        prev = cur
    torch.testing.assert_close(h, ref, rtol=1e-6, atol=1e-6)


def test_a_one_dimensional_block(original_scan):
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(16, generator=g), torch.randn(16, generator=g)
    h, h0 = torch.empty(16), torch.empty(16)
    _scan_1d_kernel[(1,)](a, b, h, S=16)
    original_scan()
    _scan_1d_kernel[(1,)](a, b, h0, S=16)
    assert torch.equal(h, h0)
