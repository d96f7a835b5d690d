"""The step shifts of the scan kernels' tiles (kernels/_scan_common.py) at every VEC the launchers use: a tile of
VEC steps per thread is split into VEC sub-tiles and joined back, so each shift is checked against plain indexing."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from glsmamba.kernels._scan_common import shift_next, shift_prev  # noqa: E402


@triton.jit
def _shift_kernel(x_ptr, first_ptr, nxt_ptr, prv_ptr, R: tl.constexpr, T: tl.constexpr, VEC: tl.constexpr):
    o = tl.arange(0, R)[:, None] * T + tl.arange(0, T)[None, :]
    x = tl.load(x_ptr + o)
    tl.store(nxt_ptr + o, shift_next(x, VEC))
    tl.store(prv_ptr + o, shift_prev(x, tl.load(first_ptr + tl.arange(0, R)), VEC))


@pytest.mark.parametrize("vec", [1, 2, 4, 8])
def test_shift_prev_and_shift_next_move_each_step_by_one(vec):
    R, T = 2, 16
    x = torch.arange(R * T, dtype=torch.float32).view(R, T) + 1
    first = torch.tensor([-1.0, -2.0])
    nxt, prv = torch.empty_like(x), torch.empty_like(x)
    _shift_kernel[(1,)](x, first, nxt, prv, R=R, T=T, VEC=vec)
    assert torch.equal(prv, torch.cat([first[:, None], x[:, :-1]], 1))
    assert torch.equal(nxt[:, :-1], x[:, 1:])  # the last step of shift_next may hold any value
