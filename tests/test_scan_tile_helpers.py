"""The step shift of the scan kernels' tiles (kernels/_scan_common.py) at every VEC a launcher can use (fp32 runs
VEC 4 under the interpreter, bf16 8): a tile of VEC steps per thread is split into VEC sub-tiles and joined back, so
the shift is checked against plain indexing."""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from glsmamba.kernels._scan_common import shift_next  # noqa: E402


@triton.jit
def _shift_kernel(x_ptr, nxt_ptr, R: tl.constexpr, T: tl.constexpr, VEC: tl.constexpr):
    o = tl.arange(0, R)[:, None] * T + tl.arange(0, T)[None, :]
    tl.store(nxt_ptr + o, shift_next(tl.load(x_ptr + o), VEC))


@pytest.mark.parametrize("vec", [1, 2, 4, 8])
def test_shift_next_moves_each_step_by_one(vec):
    R, T = 2, 16
    x = torch.arange(R * T, dtype=torch.float32).view(R, T) + 1
    nxt = torch.empty_like(x)
    _shift_kernel[(1,)](x, nxt, R=R, T=T, VEC=vec)
    assert torch.equal(nxt[:, :-1], x[:, 1:])  # the last step of shift_next may hold any value
