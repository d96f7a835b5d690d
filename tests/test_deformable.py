"""STMM deformable aggregation: hand cases, the depthwise-conv special case, float64 gradcheck of the reference,
and the Triton kernels (interpreter on CPU) against the reference, forward and every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glsmamba.model.backend import get_impl
from glsmamba.reference.deformable import SPATIAL_TAPS, TEMPORAL_TAPS
from glsmamba.reference.deformable import deformable_aggregate as ref_aggregate
from glsmamba.verify.cases import deformable_inputs
from tests.harness import assert_close

BACKENDS = ["reference", "triton"]
NAMES = ("x", "offsets", "mask", "weight")


def make_inputs(B=2, shape=(2, 3, 5), C=12, G=2, **kwargs):
    """The shared deformable inputs (glsmamba.verify.cases: offsets cross the border and, with ``fractional``, stay
    >= 0.05 away from integers so finite differences never cross a bilinear cell edge) with this file's names."""
    return deformable_inputs(batch=B, shape=shape, channels=C, offset_groups=G, **kwargs)


def depthwise_conv(x, weight, taps, shape):
    """torch conv3d (groups = C) with the kernel laid out from the taps: the zero-offset, unit-mask case."""
    T, H, W = shape
    B, L, C = x.shape
    xc = x.view(B, T, H, W, C).permute(0, 4, 1, 2, 3)
    kt, kh, kw = (int(taps[:, i].max() - taps[:, i].min()) + 1 for i in range(3))
    lo = taps.min(0).values.tolist()
    kernel = torch.zeros(C, 1, kt, kh, kw, dtype=x.dtype)
    for p, (dt, dh, dw) in enumerate(taps.tolist()):
        kernel[:, 0, dt - lo[0], dh - lo[1], dw - lo[2]] = weight[p]
    out = F.conv3d(xc, kernel.to(x.device), padding=(-lo[0], -lo[1], -lo[2]), groups=C)
    return out.permute(0, 2, 3, 4, 1).reshape(B, L, C)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("taps", [SPATIAL_TAPS, TEMPORAL_TAPS], ids=["spatial", "temporal"])
def test_zero_offsets_unit_mask_is_depthwise_conv(backend, taps, device):
    shape = (3, 4, 5)
    inp = make_inputs(B=2, shape=shape, C=6, G=3, taps=taps, device=device)
    inp["offsets"].zero_()
    inp["mask"].fill_(1.0)
    out = get_impl("deformable_aggregate", backend)(**inp, taps=taps, shape=shape)
    expected = depthwise_conv(inp["x"].double(), inp["weight"].double(), taps, shape)
    assert_close("deformable == depthwise conv", expected, out, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_bilinear(backend, device):
    # T=2, H=2, W=3, C=1, one tap (dt, dh, dw) = (0, 0, 0); x = natural index + 1
    shape = (2, 2, 3)
    x = (torch.arange(12, dtype=torch.float32) + 1).view(1, 12, 1).to(device)
    off = torch.zeros(1, 12, 1, 1, 2, device=device)
    mask = torch.ones(1, 12, 1, 1, device=device)
    off[0, 0, 0, 0] = torch.tensor([0.5, 0.25])  # token (t0, h0, w0): between x[0,0], x[0,1], x[1,0], x[1,1]
    off[0, 5, 0, 0] = torch.tensor([0.5, 0.0])  # token (t0, h1, w2): half of it falls below the frame
    off[0, 6, 0, 0] = torch.tensor([-1.5, 0.0])  # token (t1, h0, w0): entirely above the frame -> 0
    off[0, 11, 0, 0] = torch.tensor([0.0, -2.25])  # token (t1, h1, w2): w = -0.25 -> 0.75 * x[t1, h1, w0]
    mask[0, 3] = 0.5
    weight = torch.full((1, 1), 2.0, device=device)
    taps = torch.tensor([[0, 0, 0]])
    out = get_impl("deformable_aggregate", backend)(x, off, mask, weight, taps, shape)[0, :, 0]
    expected = 2.0 * (torch.arange(12, dtype=torch.float32) + 1)
    expected[0] = 2.0 * (0.5 * 0.75 * 1 + 0.5 * 0.25 * 2 + 0.5 * 0.75 * 4 + 0.5 * 0.25 * 5)
    expected[5] = 2.0 * 0.5 * 6
    expected[6] = 0.0
    expected[11] = 2.0 * 0.75 * 10
    expected[3] = 0.5 * expected[3]
    assert_close("hand bilinear", expected, out.cpu(), torch.float32)
    # temporal tap: dt = +1 reads the next frame; the last frame reads nothing
    out = get_impl("deformable_aggregate", backend)(x, torch.zeros_like(off), torch.ones_like(mask), weight,
                                                   torch.tensor([[1, 0, 0]]), shape)[0, :, 0]
    expected = torch.cat([2.0 * (torch.arange(6, 12, dtype=torch.float32) + 1), torch.zeros(6)])
    assert_close("temporal tap", expected, out.cpu(), torch.float32)


def test_reference_gradcheck_float64():
    taps = torch.tensor([[0, 0, 0], [0, -1, 1], [-1, 0, 0], [1, 1, -1]])
    inp = make_inputs(B=1, shape=(2, 2, 3), C=4, G=2, taps=taps, off_scale=1.2, dtype=torch.float64)
    args = tuple(inp[n].requires_grad_(True) for n in NAMES)
    assert torch.autograd.gradcheck(lambda *a: ref_aggregate(*a, taps, (2, 2, 3)), args, eps=1e-6, atol=1e-7)


def check_triton_against_reference(inp, taps, shape, dtype=torch.float32, grads=True):
    leaves = {k: v.detach().clone().requires_grad_(grads) for k, v in inp.items()}
    ref_leaves = {k: v.detach().float().requires_grad_(grads) for k, v in inp.items()}
    out = get_impl("deformable_aggregate", "triton")(**leaves, taps=taps, shape=shape)
    ref = ref_aggregate(**ref_leaves, taps=taps, shape=shape)
    assert out.dtype == dtype
    assert_close("out", ref, out, dtype)
    if not grads:
        return
    dy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7)).to(ref.device)
    g_out = torch.autograd.grad(out, [leaves[n] for n in NAMES], dy.to(dtype))
    g_ref = torch.autograd.grad(ref, [ref_leaves[n] for n in NAMES], dy)
    for n, a, b in zip(NAMES, g_out, g_ref, strict=True):
        assert a.dtype == dtype
        assert_close(f"d{n}", b, a, dtype, kind="grad")


@pytest.mark.parametrize("taps,G,C", [(SPATIAL_TAPS, 2, 12), (TEMPORAL_TAPS, 1, 5)], ids=["spatial", "temporal"])
def test_triton_matches_reference(taps, G, C, device):
    shape = (2, 3, 5)
    inp = make_inputs(B=2, shape=shape, C=C, G=G, taps=taps, off_scale=1.5, device=device)
    check_triton_against_reference(inp, taps, shape)


def test_triton_large_offsets_and_integer_positions(device):
    # samples far outside the clip (clamped in the kernel) and exactly on the grid (floor at integers)
    taps = torch.tensor([[0, 0, 0], [1, -1, 1], [-1, 1, 0]])
    shape = (3, 2, 4)
    inp = make_inputs(B=1, shape=shape, C=4, G=1, taps=taps, off_scale=4.0, device=device, fractional=False)
    inp["offsets"][0, ::3] = 1e4
    inp["offsets"][0, 1::3] = torch.round(inp["offsets"][0, 1::3])
    check_triton_against_reference(inp, taps, shape, grads=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_triton_low_precision(dtype, device):
    shape = (2, 3, 5)
    inp = make_inputs(B=1, shape=shape, C=8, G=2, taps=SPATIAL_TAPS, dtype=dtype, device=device)
    check_triton_against_reference(inp, SPATIAL_TAPS, shape, dtype=dtype)


def test_triton_backward_is_deterministic(device):
    shape = (2, 3, 5)
    # strong offsets: many taps land on the same source pixel, so the dx reduction has real contention
    inp = make_inputs(B=2, shape=shape, C=6, G=2, taps=SPATIAL_TAPS, off_scale=3.0, device=device)
    fn = get_impl("deformable_aggregate", "triton")
    dy = torch.randn(2, 30, 6, device=device)
    runs = []
    for _ in range(2):
        leaves = [inp[n].detach().clone().requires_grad_(True) for n in NAMES]
        out = fn(*leaves, SPATIAL_TAPS, shape)
        runs.append(torch.autograd.grad(out, leaves, dy))
    for n, a, b in zip(NAMES, *runs, strict=True):
        assert torch.equal(a, b), f"d{n} differs between two identical runs"


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(backend, device):
    fn = get_impl("deformable_aggregate", backend)
    shape = (2, 3, 5)
    inp = make_inputs(B=1, shape=shape, C=4, G=2, taps=SPATIAL_TAPS, device=device)
    x, off, mask, w = (inp[n] for n in NAMES)
    with pytest.raises(ValueError, match=r"offsets must have one \(off_h, off_w\) pair per tap.*3 taps"):
        fn(x, off[:, :, :, :3], mask, w, SPATIAL_TAPS, shape)
    with pytest.raises(ValueError, match="shape .* has T\\*H\\*W = 24 tokens but x has L = 30"):
        fn(x, off, mask, w, SPATIAL_TAPS, (2, 3, 4))
    with pytest.raises(ValueError, match="divisible by the offset groups Goff = 3"):
        fn(x, torch.zeros(1, 30, 3, 9, 2, device=device), torch.ones(1, 30, 3, 9, device=device), w,
           SPATIAL_TAPS, shape)
    with pytest.raises(ValueError, match="mask must have shape"):
        fn(x, off, mask[:, :, :1], w, SPATIAL_TAPS, shape)
    with pytest.raises(ValueError, match=r"weight must have shape \(P, C\) = \(9, 4\)"):
        fn(x, off, mask, w[:3], SPATIAL_TAPS, shape)
    with pytest.raises(ValueError, match=r"taps must have shape \(P, 3\)"):
        fn(x, off, mask, w, SPATIAL_TAPS[:, :2], shape)
    with pytest.raises(TypeError, match="taps must have an integer dtype"):
        fn(x, off, mask, w, SPATIAL_TAPS.float(), shape)
    with pytest.raises(ValueError, match="x must have 3 dims"):
        fn(x[0], off, mask, w, SPATIAL_TAPS, shape)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gpu_triton_matches_reference(dtype):
    shape = (5, 16, 12)
    inp = make_inputs(B=2, shape=shape, C=96, G=4, taps=SPATIAL_TAPS, off_scale=2.0, dtype=dtype, device="cuda")
    check_triton_against_reference(inp, SPATIAL_TAPS, shape, dtype=dtype)
