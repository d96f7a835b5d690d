"""Space-time scan orders (STS6D, WSTS windows) and the scan / merge gather + grouped scatter-add.

Orders are checked against hand-written cases and properties; scan/merge of every backend against plain
indexing and by adjointness. Triton runs under the interpreter on CPU.
"""

from __future__ import annotations

import pytest
import torch

from glsmamba.model.backend import get_impl
from glsmamba.reference.space_time import STS6D, STS6D_GROUPS, scan_order, scan_orders, window_order, window_orders
from glsmamba.verify.cases import generator_of, randn
from tests.harness import assert_close

BACKENDS = ["reference", "triton"]
SHAPES = [(2, 3, 5), (3, 5, 2), (1, 4, 7), (4, 1, 3), (2, 2, 3)]  # T, H, W all different (and degenerate axes)


def natural(T, H, W, t, h, w):
    return (t * H + h) * W + w


# ------------------------------------------------------------------------------------------------ orders


def test_explicit_orders_T2_H2_W3():
    # natural index l = (t*2 + h)*3 + w; frame 0 holds 0..5, frame 1 holds 6..11
    s = (2, 2, 3)
    assert scan_order(s, "spatial").tolist() == list(range(12))
    assert scan_order(s, "temporal").tolist() == [0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]  # (h, w, t)
    assert scan_order(s, "unified").tolist() == [0, 1, 2, 6, 7, 8, 3, 4, 5, 9, 10, 11]  # panorama rows (h, t, w)
    assert scan_order(s, "temporal_rev").tolist() == [11, 5, 10, 4, 9, 3, 8, 2, 7, 1, 6, 0]
    assert scan_order(s, "spatial_rev").tolist() == list(range(11, -1, -1))
    assert scan_order(s, "unified_rev").tolist() == [11, 10, 9, 5, 4, 3, 8, 7, 6, 2, 1, 0]


def test_explicit_orders_T2_H3_W2():
    # transposed frame (H=3, W=2): catches orders that swap the roles of H and W
    s = (2, 3, 2)
    assert scan_order(s, "unified").tolist() == [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11]
    assert scan_order(s, "temporal").tolist() == [0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_orders_are_permutations_and_follow_their_definition(shape):
    T, H, W = shape
    L = T * H * W
    for name in STS6D:
        perm = scan_order(shape, name)
        assert perm.dtype == torch.int64 and perm.shape == (L,)
        assert sorted(perm.tolist()) == list(range(L)), name
    # definitions by explicit loops
    spatial = [natural(T, H, W, t, h, w) for t in range(T) for h in range(H) for w in range(W)]
    temporal = [natural(T, H, W, t, h, w) for h in range(H) for w in range(W) for t in range(T)]
    unified = [natural(T, H, W, t, h, w) for h in range(H) for t in range(T) for w in range(W)]
    assert scan_order(shape, "spatial").tolist() == spatial
    assert scan_order(shape, "temporal").tolist() == temporal
    assert scan_order(shape, "unified").tolist() == unified
    for base in ("unified", "spatial", "temporal"):
        assert torch.equal(scan_order(shape, base + "_rev"), scan_order(shape, base).flip(0))


def test_three_types_differ():
    shape = (2, 3, 4)
    orders = {n: tuple(scan_order(shape, n).tolist()) for n in STS6D}
    assert len(set(orders.values())) == 6


def test_scan_orders_stack_cache_and_device():
    o = scan_orders((2, 3, 5))
    assert o.shape == (6, 30)
    for k, n in enumerate(STS6D):
        assert torch.equal(o[k], scan_order((2, 3, 5), n))
    assert scan_orders((2, 3, 5)) is o  # cached per shape and device
    assert scan_order((2, 3, 5), "temporal") is scan_order((2, 3, 5), "temporal")
    assert scan_order((2, 3, 5), "temporal", device="cpu").device.type == "cpu"
    assert scan_orders((2, 3, 5), ["spatial", "temporal"]).shape == (2, 30)


def test_window_order_by_hand():
    # T=2, H=3, W=5, windows 2 x 3: (rows 0-1, cols 0-2), (0-1, 3-4), (2, 0-2), (2, 3-4); frame-major inside
    order, reset = window_order((2, 3, 5), (2, 3))
    expected = [0, 1, 2, 5, 6, 7, 15, 16, 17, 20, 21, 22,
                3, 4, 8, 9, 18, 19, 23, 24,
                10, 11, 12, 25, 26, 27,
                13, 14, 28, 29]
    assert order.tolist() == expected
    assert reset.nonzero().flatten().tolist() == [0, 12, 20, 26]
    rorder, rreset = window_order((2, 3, 5), (2, 3), reverse=True)
    assert rorder.tolist() == expected[::-1]
    assert rreset.nonzero().flatten().tolist() == [0, 4, 10, 18]  # window sizes 4, 6, 8, 12 in flipped order


@pytest.mark.parametrize("shape,window", [((5, 64, 48), (8, 6)), ((3, 10, 7), (8, 6)), ((2, 5, 3), (2, 2)),
                                          ((2, 3, 4), (8, 8))])
def test_window_order_properties(shape, window):
    T, H, W = shape
    L = T * H * W
    for reverse in (False, True):
        order, reset = window_order(shape, window, reverse=reverse)
        assert sorted(order.tolist()) == list(range(L))  # no token dropped, none repeated, no padding
        assert reset.dtype == torch.bool and bool(reset[0])
        starts = reset.nonzero().flatten().tolist() + [L]
        t_of = order // (H * W)
        h_of = (order // W) % H
        w_of = order % W
        nwin = -(-H // window[0]) * -(-W // window[1])
        assert len(starts) - 1 == nwin
        for s, e in zip(starts[:-1], starts[1:], strict=True):
            hs, ws = h_of[s:e], w_of[s:e]
            # one window: a tube inside one (wh x ww) cell, all T frames
            assert len(set((hs // window[0]).tolist())) == 1 and len(set((ws // window[1]).tolist())) == 1
            assert len(set(t_of[s:e].tolist())) == T
            seg = order[s:e] if not reverse else order[s:e].flip(0)
            assert seg.tolist() == sorted(seg.tolist())  # frame-major raster inside the window
    fwd, fr = window_order(shape, window)
    rev, rr = window_order(shape, window, reverse=True)
    assert torch.equal(rev, fwd.flip(0))
    both, both_reset = window_orders(shape, window)
    assert torch.equal(both[0], fwd) and torch.equal(both[1], rev) and torch.equal(both_reset[1], rr)


def test_default_window_counts():
    order, reset = window_order((5, 64, 48))
    assert int(reset.sum()) == 64  # 8 x 8 windows of 8 x 6 x 5 = 240 tokens
    assert (reset.nonzero().flatten().diff() == 240).all()
    _, reset = window_order((5, 10, 7))  # border windows: 8x6, 8x1, 2x6, 2x1 (x 5 frames)
    sizes = torch.cat([reset.nonzero().flatten(), torch.tensor([350])]).diff().tolist()
    assert sizes == [240, 40, 60, 10]


def test_order_bad_input():
    with pytest.raises(ValueError, match="name must be one of"):
        scan_order((2, 3, 4), "diagonal")
    with pytest.raises(TypeError, match="shape must be a sequence of three ints"):
        scan_order((2, 3), "spatial")
    with pytest.raises(ValueError, match="shape must have T, H, W >= 1"):
        scan_order((2, 0, 4), "spatial")
    with pytest.raises(ValueError, match="window must have rows, cols >= 1"):
        window_order((2, 3, 4), (0, 2))
    with pytest.raises(TypeError, match="window must be a pair"):
        window_order((2, 3, 4), 8)


# ------------------------------------------------------------------------------------------------ scan / merge


def rand_tokens(B, L, C, dtype=torch.float32, device="cpu", seed=0):
    return randn(generator_of(seed), B, L, C, dtype=dtype, device=device)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_scan_and_merge_match_indexing(backend, dtype, device):
    shape, C = (2, 3, 5), 12
    L = 30
    orders = scan_orders(shape, device=device)
    x = rand_tokens(2, L, C, dtype, device)
    scan = get_impl("space_time_scan", backend)
    merge = get_impl("space_time_merge", backend)
    ys = scan(x, orders)
    assert ys.shape == (2, 6, L, C) and ys.dtype == dtype
    for k in range(6):
        assert torch.equal(ys[:, k], x[:, orders[k]])  # a gather is exact
    y = rand_tokens(2, 6 * L, C, dtype, device, seed=1).view(2, 6, L, C)
    groups = (1, 0, 2, 0, 1, 2)
    out = merge(y, orders, groups)
    expected = torch.zeros(2, 3, L, C, dtype=torch.float64, device=device)
    for k, g in enumerate(groups):
        expected[:, g].index_add_(1, orders[k], y[:, k].double())
    assert out.shape == (2, 3, L, C) and out.dtype == dtype
    assert_close("merge", expected, out, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adjoint_and_round_trip(backend, device):
    shape, C = (3, 5, 2), 7
    L = 30
    orders = scan_orders(shape, device=device)
    scan = get_impl("space_time_scan", backend)
    merge = get_impl("space_time_merge", backend)
    x = rand_tokens(2, L, C, device=device)
    y = rand_tokens(2, 6 * L, C, device=device, seed=3).view(2, 6, L, C)
    lhs = (scan(x, orders).double() * y.double()).sum()
    rhs = (x.double() * merge(y, orders, [0] * 6)[:, 0].double()).sum()
    assert_close("<scan x, y> vs <x, merge y>", lhs, rhs, torch.float32)
    # with G = K, merge un-permutes each direction: adjoint of the per-direction gather z[:, k, orders[k]]
    z = rand_tokens(2, 6 * L, C, device=device, seed=4).view(2, 6, L, C)
    zk = torch.stack([z[:, k, orders[k]] for k in range(6)], 1)
    lhs = (merge(y, orders, range(6)).double() * z.double()).sum()
    assert_close("<merge y, z> vs <y, gather z>", (y.double() * zk.double()).sum(), lhs, torch.float32)
    # merge(scan(x)) = K x with one group; = (group size) x per group
    assert_close("merge(scan(x))", 6 * x[:, None], merge(scan(x, orders), orders, [0] * 6), torch.float32)
    assert_close("grouped", 2 * x[:, None].expand(2, 3, L, C),
                 merge(scan(x, orders), orders, STS6D_GROUPS), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_merge_gradients(backend, device):
    """Backward of scan is merge (all directions in one group), backward of merge is the grouped gather."""
    shape, C = (2, 3, 5), 5
    orders = scan_orders(shape, device=device)
    wo, _ = window_orders(shape, (2, 2), device=device)
    orders = torch.cat([orders, wo])  # K = 8 with the window orders
    scan = get_impl("space_time_scan", backend)
    merge = get_impl("space_time_merge", backend)
    x = rand_tokens(2, 30, C, device=device).requires_grad_(True)
    groups = (0, 1, 2, 0, 1, 2, 3, 3)
    out = merge(scan(x, orders) * 1.5, orders, groups)
    dy = rand_tokens(2, 4 * 30, C, device=device, seed=5).view(2, 4, 30, C)
    (gx,) = torch.autograd.grad(out, x, dy)
    # d/dx of sum_g <dy_g, 1.5 * sum_{k in g} x> = 1.5 * sum_k dy[groups[k]]
    expected = 1.5 * sum(dy[:, g] for g in groups)
    assert_close("dx", expected, gx, torch.float32, kind="grad")


def test_triton_scan_merge_double_backward(device):
    orders = scan_orders((2, 3, 5), device=device)
    scan = get_impl("space_time_scan", "triton")
    x = rand_tokens(1, 30, 4, device=device).requires_grad_(True)
    y = scan(x, orders)
    (g,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    assert_close("double backward", torch.full_like(x, 12.0), gg, torch.float32, kind="grad")  # d2/dx2 of 6 x^2


@pytest.mark.parametrize("backend", BACKENDS)
def test_scan_merge_bad_input(backend, device):
    scan = get_impl("space_time_scan", backend)
    merge = get_impl("space_time_merge", backend)
    x = rand_tokens(1, 30, 4, device=device)
    orders = scan_orders((2, 3, 5), device=device)
    dup = orders.clone()
    dup[2, 5] = dup[2, 6]
    with pytest.raises(ValueError, match=r"orders rows must be permutations of range\(30\); row\(s\) \[2\]"):
        scan(x, dup)
    with pytest.raises(ValueError, match="orders must have shape"):
        scan(rand_tokens(1, 24, 4, device=device), orders)
    with pytest.raises(TypeError, match="orders must have dtype int64"):
        scan(x, orders.int())
    with pytest.raises(ValueError, match="x must have 3 dims"):
        scan(x[0], orders)
    ys = scan(x, orders)
    with pytest.raises(ValueError, match="groups must have one group id per direction"):
        merge(ys, orders, (0, 1, 2))
    with pytest.raises(ValueError, match="groups must use every id"):
        merge(ys, orders, (0, 2, 2, 0, 2, 2))
    with pytest.raises(ValueError, match=r"orders must have shape \(K, L\)"):
        merge(ys, orders[:3], (0, 1, 2))
    out_of_range = orders.clone()
    out_of_range[0, 0] = 30
    with pytest.raises(ValueError, match="permutations"):
        merge(ys, out_of_range, range(6))


@pytest.mark.gpu
def test_gpu_scan_merge_large():
    shape, C = (5, 64, 48), 96
    orders = scan_orders(shape, device="cuda")
    x = rand_tokens(2, 15360, C, torch.bfloat16, "cuda")
    scan = get_impl("space_time_scan", "triton")
    merge = get_impl("space_time_merge", "triton")
    ys = scan(x, orders)
    assert torch.equal(ys, get_impl("space_time_scan", "reference")(x, orders))
    assert_close("merge", get_impl("space_time_merge", "reference")(ys, orders, STS6D_GROUPS),
                 merge(ys, orders, STS6D_GROUPS), torch.bfloat16)


def test_triton_rejects_float64_like_the_other_kernels(device):
    # float64 is for the reference's gradcheck; every Triton op refuses it with the same TypeError
    x = rand_tokens(1, 30, 4, torch.float64, device)
    with pytest.raises(TypeError, match="supports float16/bfloat16/float32"):
        get_impl("space_time_scan", "triton")(x, scan_orders((2, 3, 5), device=device))
    assert get_impl("space_time_scan", "reference")(x, scan_orders((2, 3, 5), device=device)).dtype == torch.float64
