"""The GLSMamba network: shapes, parameter counts, block semantics against a hand-written oracle, ablations,
backend switching, whole-network equivalence of the backends, and overfitting one clip."""

from __future__ import annotations

import itertools
import math
import weakref

import pytest
import torch
import torch.nn.functional as F

from glsmamba import model
from glsmamba.model import GLSMamba, get_config
from glsmamba.model.backend import call_counts, current_backend, reset_call_counts
from glsmamba.model.blocks import GSMBlock, LRMBlock
from tests.harness import assert_close, assert_same_special_values

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def _fused_here(device: torch.device) -> bool:
    """Whether a no-grad reference forward on ``device`` runs the grouped modulators' fused C++ kernel."""
    from glsmamba.reference import _cpu_kernels

    return device.type == "cpu" and _cpu_kernels.enabled()


def _frames(b, t, h, w, seed=0):
    return torch.randn(b, t, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("hw", [(64, 48), (36, 28), (20, 12)])
def test_tiny_forward_shapes_any_multiple_of_4(hw):
    # 36 x 28 -> 9 x 7 features and 20 x 12 -> 5 x 3: not divisible by the 4 x 3 window (smaller border windows)
    net = GLSMamba("tiny").eval()
    h, w = hw
    out = net(_frames(2, 5, h, w))
    assert out.shape == (2, 15, h // 4, w // 4)
    assert torch.isfinite(out).all()


def test_base_forward_shape_small_input():
    # the full base preset (ViT-B/16, 12 blocks) at a small 32 x 48 input: a 2 x 3 patch grid
    net = GLSMamba("base").eval()
    with torch.no_grad():
        out = net(_frames(1, 5, 32, 48))
    assert out.shape == (1, 15, 8, 12)


def test_huge_forward_shape_small_input():
    # huge is ~650M parameters; its structure is checked on the meta device, the forward with one ViT-H block
    with torch.device("meta"):
        full = GLSMamba("huge")
    assert len(full.encoder.vit.blocks) == 32 and full.encoder.vit.pos_embed.shape[-1] == 1280
    net = GLSMamba("huge", vit_depth=1).eval()
    with torch.no_grad():
        out = net(_frames(1, 5, 32, 32))
    assert out.shape == (1, 15, 8, 8)


def test_num_joints_configurable():
    net = GLSMamba("tiny", num_joints=17).eval()
    assert net(_frames(1, 5, 16, 12)).shape == (1, 17, 4, 3)


@pytest.mark.parametrize(
    "frames, match",
    [
        (torch.zeros(1, 5, 3, 16), "B, T, 3, H, W"),
        (torch.zeros(1, 5, 1, 16, 12), "B, T, 3, H, W"),
        (torch.zeros(1, 4, 3, 16, 12), "num_frames=5"),
        (torch.zeros(1, 5, 3, 18, 12), "multiples of 4"),
    ],
)
def test_bad_frames_raise_value_error(frames, match):
    with pytest.raises(ValueError, match=match):
        GLSMamba("tiny")(frames)


def test_bad_frames_type():
    with pytest.raises(TypeError, match="frames"):
        GLSMamba("tiny")(torch.zeros(1, 5, 3, 16, 12, dtype=torch.long))
    with pytest.raises(ValueError, match="multiples of 16"):
        GLSMamba("base", vit_depth=1)(torch.zeros(1, 5, 3, 40, 48))


# --------------------------------------------------------------------------------------------- parameters
def _block_params(cfg, gsm: bool) -> int:
    """Trainable parameters of one block, counted by hand from the design (model/config.py docstring)."""
    d, di, n, r, t = cfg.dim, cfg.d_inner, cfg.d_state, cfg.dt_rank_, cfg.num_frames
    k = cfg.directions if gsm else 2
    hid = int(round(d * cfg.ffn_ratio))
    total = 2 * d                                          # norm1
    total += d * 2 * di                                    # in_proj (no bias)
    total += di * 9 + di + 2 * di                          # gate: depthwise 3x3 (+bias), LayerNorm
    n_proj = k if cfg.ssm_sharing == "none" else 1
    n_own = 1 if cfg.ssm_sharing == "all" else k
    total += n_proj * (di * (r + 2 * n) + r * di)          # x_proj, dt_proj (shared or per direction)
    total += n_own * (di * n + di + di)                    # A_log, D, delta bias (shared or per direction)
    total += 2 * di + di * d                               # out_norm, out_proj (no bias)
    if hid:
        total += 2 * d + d * hid + hid + hid * d + d       # norm2, FFN
    if gsm:
        width = t * d if cfg.ca_form == "joint" else d
        ca_hidden = int(width // cfg.ca_reduction)
        total += width * ca_hidden + ca_hidden + ca_hidden * width + width  # channel attention MLP
        stmm = cfg.merge == "stmm" and k > 2
        for p, cg in zip((9, 3)[: {2: 0, 4: 1, 6: 2}[k]] if stmm else (), cfg.stmm_channels_per_group, strict=False):
            total += 2 * di * 9 + 2 * di                   # offset depthwise 3x3
            total += 2 * di * cfg.stmm_groups * p * 3 + cfg.stmm_groups * p * 3  # offsets + masks projection
            total += p * di * (cg if cfg.stmm_form == "grouped" else 1)  # tap weights (grouped or depthwise)
    return total


def _trainable_by_hand(cfg) -> int:
    d = cfg.dim
    embed = cfg.encoder_channels * d + d + cfg.num_frames * d
    head = 2 * d + (d * d * 9 + 2 * d if cfg.head == "conv" else 0) + d * cfg.num_joints + cfg.num_joints
    return embed + cfg.num_gsm * _block_params(cfg, True) + cfg.num_lrm * _block_params(cfg, False) + head


def test_base_trainable_parameters_match_paper():
    cfg = get_config("base")
    with torch.device("meta"):
        net = GLSMamba(cfg)
    trainable = net.num_parameters(trainable_only=True)
    assert trainable == _trainable_by_hand(cfg)
    assert abs(trainable - 9.8e6) <= 0.03 * 9.8e6, trainable  # the paper reports 9.8M trainable
    assert trainable == 9_885_343  # the number quoted in model/config.py and the README


def test_base_lr_has_base_trunk_and_reads_the_vit_tokens():
    # GLSMamba-BLR: the same trunk and head; only the projection reads the ViT's 768 channels instead of 256
    with torch.device("meta"):
        base, lr = GLSMamba("base"), GLSMamba("base-lr")
    assert lr.encoder.deconv is None and lr.config.encoder_channels == 768
    diff = lr.num_parameters(trainable_only=True) - base.num_parameters(trainable_only=True)
    assert diff == (768 - 256) * 256 == _trainable_by_hand(lr.config) - _trainable_by_hand(base.config)


@pytest.mark.parametrize("override", [dict(directions=2), dict(directions=4), dict(merge="sum"), dict(num_lrm=0),
                                      dict(ssm_sharing="proj"), dict(ssm_sharing="none"), dict(stmm_form="depthwise"),
                                      dict(ca_form="frame", ca_reduction=4), dict(ffn_ratio=0.0),
                                      dict(head="linear"), dict(stmm_groups=4, stmm_group_channels=(32, 128))])
def test_ablation_parameter_counts_by_hand(override):
    cfg = get_config("base", **override)
    with torch.device("meta"):
        net = GLSMamba(cfg)
    assert net.num_parameters(trainable_only=True) == _trainable_by_hand(cfg)


def test_vit_b_encoder_parameters_by_hand_and_frozen():
    cfg = get_config("base")
    with torch.device("meta"):
        net = GLSMamba(cfg)
    c, grid = 768, (256 // 16) * (192 // 16)
    per_block = 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + 2 * c + (c * 4 * c + 4 * c) + (4 * c * c + c)
    vit = 3 * 16 * 16 * c + c + (1 + grid) * c + 12 * per_block + 2 * c
    deconv = c * 256 * 16 + 2 * 256 + 256 * 256 * 16 + 2 * 256
    assert sum(p.numel() for p in net.encoder.vit.parameters()) == vit
    assert sum(p.numel() for p in net.encoder.deconv.parameters()) == deconv
    assert not any(p.requires_grad for p in net.encoder.parameters())


def test_frozen_encoder_stays_in_eval_mode_and_gets_no_grad():
    net = GLSMamba("base", vit_depth=1).train()
    assert not net.encoder.training and net.head.training
    out = net(_frames(1, 5, 32, 32))
    out.sum().backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert net.head.final.weight.grad is not None
    net.freeze_encoder(False)
    net.train()
    assert net.encoder.training


# --------------------------------------------------------------------------------------------- block oracle
def _orders_by_hand(t, h, w):
    nat = lambda tt, hh, ww: (tt * h + hh) * w + ww
    spatial = [nat(a, b, c) for a, b, c in itertools.product(range(t), range(h), range(w))]
    temporal = [nat(a, b, c) for b, c, a in itertools.product(range(h), range(w), range(t))]
    unified = [nat(a, b, c) for b, a, c in itertools.product(range(h), range(t), range(w))]
    return {"unified": unified, "spatial": spatial, "temporal": temporal,
            "unified_rev": unified[::-1], "spatial_rev": spatial[::-1], "temporal_rev": temporal[::-1]}


def _window_by_hand(t, h, w, wh, ww):
    windows = []
    for h0 in range(0, h, wh):
        for w0 in range(0, w, ww):
            windows.append([(a * h + b) * w + c for a in range(t) for b in range(h0, min(h0 + wh, h))
                            for c in range(w0, min(w0 + ww, w))])
    fwd = [(l, i == 0) for win in windows for i, l in enumerate(win)]
    bwd = [(l, i == 0) for win in reversed(windows) for i, l in enumerate(reversed(win))]
    return fwd, bwd


def _naive_scan(u, dt, a, bm, cm, d, steps):
    """Step-by-step S6 along ``steps`` = [(natural index, reset before this step)]; natural-order in and out."""
    bsz, _, c = u.shape
    h = u.new_zeros(bsz, c, a.shape[-1])
    out = torch.zeros_like(u)
    for l, reset in steps:
        if reset:
            h = torch.zeros_like(h)
        h = torch.exp(dt[:, l, :, None] * a) * h + (dt[:, l] * u[:, l])[..., None] * bm[:, l, None, :]
        out[:, l] = (h * cm[:, l, None, :]).sum(-1) + d * u[:, l]
    return out


def _naive_block(blk, x, shape, directions):
    """The block written out from the design with functional ops; ``directions`` = [(k, steps)] summed."""
    t, hh, ww = shape
    b, l, d = x.shape
    ln = lambda m, v: F.layer_norm(v, (v.shape[-1],), m.weight, m.bias, m.eps)
    h = ln(blk.norm1, x)
    if blk.channel_attn is not None:
        ca = blk.channel_attn
        g = h.reshape(b, t, hh * ww, d).mean(2).reshape(b, t * d)
        a = torch.sigmoid(F.linear(F.relu(F.linear(g, ca.fc1.weight, ca.fc1.bias)), ca.fc2.weight, ca.fc2.bias))
        h = (h.reshape(b, t, hh * ww, d) * a.reshape(b, t, 1, d)).reshape(b, l, d)
    xs, z = F.linear(h, blk.in_proj.weight).chunk(2, dim=-1)
    di = xs.shape[-1]
    zc = z.reshape(b * t, hh, ww, di).permute(0, 3, 1, 2)
    zc = F.conv2d(zc, blk.gate.dwconv.weight, blk.gate.dwconv.bias, padding=1, groups=di)
    gate = F.silu(ln(blk.gate.norm, zc.permute(0, 2, 3, 1).reshape(b, l, di)))
    u = F.silu(xs)
    ssm = blk.ssm
    r, n = ssm.dt_rank, ssm.d_state
    proj = F.linear(u, ssm.x_proj.weight)
    dt_in, bm, cm = proj[..., :r], proj[..., r:r + n], proj[..., r + n:]
    delta = F.linear(dt_in, ssm.dt_proj.weight)
    f = torch.zeros_like(u)
    for k, steps in directions:
        j = k if ssm.A_log.shape[0] > 1 else 0  # per-direction A_log / D / delta bias, or one shared S6
        dt = F.softplus(delta + ssm.dt_bias[j])
        f = f + _naive_scan(u, dt, -torch.exp(ssm.A_log[j]), bm, cm, ssm.D[j], steps)
    x = x + F.linear(ln(blk.out_norm, f) * gate, blk.out_proj.weight)
    if blk.ffn is None:
        return x
    f1, f2 = blk.ffn[0], blk.ffn[2]
    return x + F.linear(F.gelu(F.linear(ln(blk.norm2, x), f1.weight, f1.bias)), f2.weight, f2.bias)


SHAPE = (3, 4, 5)  # T, H, W all different


@pytest.mark.parametrize("directions, sharing", [(2, "all"), (4, "all"), (6, "all"), (6, "proj")])
def test_gsm_block_sum_merge_matches_hand_written_oracle(directions, sharing):
    cfg = get_config("tiny", num_frames=SHAPE[0], dim=16, directions=directions, merge="sum", ssm_sharing=sharing)
    blk = GSMBlock(cfg).eval()
    x = torch.randn(2, SHAPE[0] * SHAPE[1] * SHAPE[2], 16)
    orders = _orders_by_hand(*SHAPE)
    names = ["unified", "spatial", "temporal"][: directions // 2]
    names = names + [f"{s}_rev" for s in names]
    dirs = [(k, [(l, False) for l in orders[name]]) for k, name in enumerate(names)]
    with torch.no_grad(), model.use_backend("reference"):
        assert_close("gsm block", _naive_block(blk, x, SHAPE, dirs), blk(x, SHAPE))


def test_lrm_block_matches_hand_written_windowed_oracle():
    # window 3 x 2 on a 4 x 5 grid: border windows of 1 row / 1 column, state reset at each window start
    cfg = get_config("tiny", num_frames=SHAPE[0], dim=16, window=(3, 2))
    blk = LRMBlock(cfg).eval()
    x = torch.randn(2, SHAPE[0] * SHAPE[1] * SHAPE[2], 16)
    fwd, bwd = _window_by_hand(*SHAPE, 3, 2)
    with torch.no_grad(), model.use_backend("reference"):
        assert_close("lrm block", _naive_block(blk, x, SHAPE, [(0, fwd), (1, bwd)]), blk(x, SHAPE))


def test_gsm_stmm_streams_are_wired_by_type():
    # with both modulators' tap weights zeroed, STMM leaves only y_u: the unified forward/backward pair (k = 0, 3)
    cfg = get_config("tiny", num_frames=SHAPE[0], dim=16)
    blk = GSMBlock(cfg).eval()
    with torch.no_grad():
        blk.merge.spatial.weight.zero_()
        blk.merge.temporal.weight.zero_()
    x = torch.randn(2, SHAPE[0] * SHAPE[1] * SHAPE[2], 16)
    orders = _orders_by_hand(*SHAPE)
    dirs = [(0, [(l, False) for l in orders["unified"]]), (3, [(l, False) for l in orders["unified_rev"]])]
    with torch.no_grad(), model.use_backend("reference"):
        assert_close("gsm y_u only", _naive_block(blk, x, SHAPE, dirs), blk(x, SHAPE))


def test_stmm_modulators_use_the_contract_taps():
    blk = GSMBlock(get_config("tiny"))
    sp, tm = blk.merge.spatial.taps, blk.merge.temporal.taps
    assert sp.shape == (9, 3) and (sp[:, 0] == 0).all() and sorted(map(tuple, sp[:, 1:].tolist())) == sorted(
        itertools.product((-1, 0, 1), repeat=2))
    assert tm.shape == (3, 3) and sorted(tm[:, 0].tolist()) == [-1, 0, 1] and (tm[:, 1:] == 0).all()


def test_stmm_at_initialisation_equals_sum_merge():
    # zero-initialised offsets, masks 0.5 and centre tap weight 2: M(y) = y, so STMM starts as the plain sum
    torch.manual_seed(1)
    stmm = GLSMamba("tiny").eval()
    plain = GLSMamba("tiny", merge="sum").eval()
    state = {k: v for k, v in stmm.state_dict().items() if ".merge." not in k}
    plain.load_state_dict(state)
    frames = _frames(1, 5, 24, 20)
    with torch.no_grad(), model.use_backend("reference"):
        assert_close("stmm at init vs sum", plain(frames), stmm(frames))


@pytest.mark.parametrize("which", ["spatial", "temporal"])
def test_grouped_modulator_with_zero_offsets_is_a_grouped_convolution(which):
    # offsets 0 (the zero-initialised projection) put every tap on the grid: the grouped DCN is then
    # 0.5 (the mask) x a grouped 3x3 conv per frame (spatial taps) or a grouped size-3 conv along T per pixel (temporal)
    t, h, w, c, cg = 4, 5, 3, 8, 4
    from glsmamba.model.blocks import Modulator
    from glsmamba.reference.deformable import SPATIAL_TAPS, TEMPORAL_TAPS

    taps = SPATIAL_TAPS if which == "spatial" else TEMPORAL_TAPS
    mod = Modulator(c, taps, offset_groups=2, group_channels=cg)
    with torch.no_grad():
        mod.weight.copy_(torch.randn(mod.weight.shape, generator=torch.Generator().manual_seed(0)))
    y = torch.randn(2, t * h * w, c)
    with torch.no_grad(), model.use_backend("reference"):
        out = mod(torch.randn_like(y), y, (t, h, w))
    g = c // cg
    kernel = torch.zeros(c, cg, 3, 3)  # (out, in per group, kh, kw) or, temporal, (out, in per group, dt) in [..., 1]
    for p, (dt, dh, dw) in enumerate(mod.taps.tolist()):
        wp = mod.weight[p].detach().reshape(c, cg)  # (g, o, i) -> (g*o, i)
        if which == "spatial":
            kernel[:, :, dh + 1, dw + 1] = wp
        else:
            kernel[:, :, dt + 1, 1] = wp
    if which == "spatial":
        frames = y.reshape(2 * t, h, w, c).permute(0, 3, 1, 2)
        ref = F.conv2d(frames, kernel, padding=1, groups=g).permute(0, 2, 3, 1).reshape(2, t * h * w, c)
    else:
        seq = y.reshape(2, t, h * w, c).permute(0, 2, 3, 1).reshape(2 * h * w, c, t)
        ref = F.conv1d(seq, kernel[..., 1], padding=1, groups=g).reshape(2, h * w, c, t).permute(0, 3, 1, 2)
        ref = ref.reshape(2, t * h * w, c)
    assert_close(f"grouped {which} modulator", 0.5 * ref, out)


@pytest.mark.parametrize("which", ["spatial", "temporal"])
def test_grouped_modulator_tap_by_tap_matches_the_oracle(which):
    """The grouped form tap by tap (forward) against its first form (P stacked copies, one einsum): values and
    gradients, with learned-looking offsets (fractional, some outside the frame) and masks."""
    t, h, w, c, cg = 3, 4, 5, 8, 4
    from glsmamba.model.blocks import Modulator
    from glsmamba.reference.deformable import SPATIAL_TAPS, TEMPORAL_TAPS

    gen = torch.Generator().manual_seed(1)
    mod = Modulator(c, SPATIAL_TAPS if which == "spatial" else TEMPORAL_TAPS, offset_groups=2, group_channels=cg)
    with torch.no_grad():
        for prm in mod.parameters():
            prm.copy_(torch.randn(prm.shape, generator=gen))
    ref, y = (torch.randn(2, t * h * w, c, generator=gen) for _ in range(2))
    res = {}
    for name, fn in (("tap by tap", mod), ("oracle", mod.grouped_oracle)):
        leaves = [v.clone().requires_grad_() for v in (ref, y)]
        with model.use_backend("reference"):
            out = fn(*leaves, (t, h, w))
        dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        params = [prm for prm in mod.parameters()]
        res[name] = (out, *torch.autograd.grad(out, leaves + params, dy))
    for i, (want, got) in enumerate(zip(res["oracle"], res["tap by tap"], strict=True)):
        assert_close(f"{which} {i}", want, got, torch.float32, "fwd" if i == 0 else "grad")


@pytest.mark.parametrize("which", ["spatial", "temporal"])
def test_grouped_modulator_keeps_no_tap_samples_for_backward(monkeypatch, which):
    """With autograd the grouped form keeps none of its P per-tap (B, L, C) samples for the backward (the weight
    gradient would need them): its tap-by-tap sum runs under activation checkpointing and samples again in the
    backward (values and gradients: test_grouped_modulator_tap_by_tap_matches_the_oracle), on the backend the
    forward ran on (the backward is outside its ``use_backend`` context)."""
    from glsmamba.model.blocks import Modulator
    from glsmamba.reference.deformable import SPATIAL_TAPS, TEMPORAL_TAPS

    mod = Modulator(8, SPATIAL_TAPS if which == "spatial" else TEMPORAL_TAPS, offset_groups=2, group_channels=4)
    samples, kept, backends = [], set(), []
    inner = model.ops.deformable_aggregate

    def recorded(*args, **kwargs):
        out = inner(*args, **kwargs)
        samples.append(out)  # kept alive: no storage of a sample is reused by another tensor in this test
        backends.append(current_backend())
        return out

    monkeypatch.setattr(model.ops, "deformable_aggregate", recorded)
    ref, y = (torch.randn(2, 60, 8, requires_grad=True) for _ in range(2))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.add(t.untyped_storage().data_ptr()) or t,
                                                  lambda t: t), model.use_backend("reference"):
        out = mod(ref, y, (3, 4, 5))
    assert len(samples) == len(mod.tap_list)
    assert not kept & {s.untyped_storage().data_ptr() for s in samples}
    out.sum().backward()  # the backward samples every tap again, on the forward's backend
    assert len(samples) == 2 * len(mod.tap_list) and ref.grad is not None and y.grad is not None
    assert backends == ["reference"] * len(samples)


def test_offsets_without_the_concatenation_match_the_concatenated_form():
    """The modulator's offsets and masks come from the depthwise conv and the projection applied to ref and y apart
    (no (B, L, 2C) concatenation): the same values as the two layers over the concatenation."""
    from glsmamba.model.blocks import Modulator, frame_conv
    from glsmamba.reference.deformable import TEMPORAL_TAPS

    torch.manual_seed(0)
    mod = Modulator(8, TEMPORAL_TAPS, offset_groups=2, group_channels=4).double()
    for p in mod.parameters():  # the initialisation zeroes the projection
        torch.nn.init.normal_(p)
    ref, y = (torch.randn(2, 60, 8, dtype=torch.float64) for _ in range(2))
    shape = (3, 4, 5)
    o = mod.offset_pw(frame_conv(mod.offset_dw, torch.cat([ref, y], dim=-1), shape))
    o = o.reshape(2, 60, 2, mod.taps.shape[0], 3)
    offsets, mask = mod.offsets_and_mask(ref, y, shape)
    assert_close("offsets", o[..., :2], offsets, torch.float64)
    assert_close("mask", torch.sigmoid(o[..., 2]), mask, torch.float64)


def test_no_grad_scan_applies_the_delta_softplus_in_place(monkeypatch):
    """Without autograd on a CPU the S6 applies softplus(delta + bias) itself, in place, and hands the op dt with no
    bias and no softplus: the op's output is bitwise the one it gives with the bias and softplus to apply."""
    from glsmamba.model import blocks

    # the no-grad op on the PyTorch steps, as the autograd one: bitwise comparable (the C++ kernel's sums round
    # differently; tests/test_cpu_kernels.py holds it to the oracle)
    monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", "0")
    blk = GSMBlock(get_config("tiny", num_frames=SHAPE[0], dim=16)).eval()
    with torch.no_grad():
        blk.ssm.dt_bias.normal_()
    x = torch.randn(2, 60, blk.ssm.d_inner)
    orders = blocks._global_orders(SHAPE, blk.scan_names, x.device)
    seen, op = [], blocks.ops.ordered_selective_scan

    def spy(*args, **kwargs):
        seen.append((kwargs["delta_bias"] is None, kwargs["delta_softplus"]))
        return op(*args, **kwargs)

    monkeypatch.setattr(blocks.ops, "ordered_selective_scan", spy)
    with model.use_backend("reference"):
        want = blk.ssm(x, orders, blk.scan_groups)
        with torch.no_grad():
            got = blk.ssm(x, orders, blk.scan_groups)
    assert seen == [(False, True), (True, False)]
    assert torch.equal(want, got)


@pytest.mark.parametrize("form", ["grouped", "depthwise"])
def test_stmm_in_place_matches_the_summed_form(form):
    """STMM's no-grad in-place merge (every modulator's offsets first, F summed into ys[:, 0], the grouped taps
    sampled frame by frame) against its autograd form: same values (fp64, random parameters, offsets that leave the
    frame), NaN and inf in a clip's first and last frames reaching the same outputs; the STMM block's no-grad
    forward takes the in-place form."""
    from glsmamba.model.blocks import STMM

    gen = torch.Generator().manual_seed(2)
    shape, b, c = (3, 4, 5), 2, 16
    stmm = STMM(c, 6, offset_groups=2, group_channels=(4, 8) if form == "grouped" else None).double()
    with torch.no_grad():
        for prm in stmm.parameters():
            prm.copy_(torch.randn(prm.shape, generator=gen, dtype=torch.float64))
    ys = torch.randn(b, 3, 60, c, generator=gen, dtype=torch.float64)
    for special in (None, math.nan, math.inf):
        y = ys.clone()
        if special is not None:
            y[0, 2, 3, 1] = special  # y_t in frame 0: reached through the temporal taps of frame 1 only
            y[1, 1, 59, 5] = -special  # y_s in the last frame
        with torch.no_grad(), model.use_backend("reference"):
            want = stmm(y.clone(), shape)
            buf = y.clone()
            got = stmm(buf, shape, inplace=True)
            # the grouped form's in-place sum without the frame-by-frame sampling (its GPU form)
            whole = y[:, 0].clone()
            for i, m in ((1, stmm.spatial), (2, stmm.temporal)):
                m.add_to(whole, y[:, i], *m.offsets_and_mask(y[:, 0], y[:, i], shape), shape, by_frame=False)
        assert got.data_ptr() == buf.data_ptr()  # F is ys[:, 0]
        for name, out in (("in place", got), ("in place, whole clip", whole)):
            assert torch.equal(torch.isnan(want), torch.isnan(out)), (name, special)
            assert_close(f"stmm {name}, {special}", want.nan_to_num(0.0, 1.0, -1.0), out.nan_to_num(0.0, 1.0, -1.0),
                         torch.float64)
    with pytest.raises(RuntimeError, match="without autograd"):
        stmm(ys.clone(), shape, inplace=True)


@pytest.mark.skipif(not _fused_here(torch.device("cpu")), reason="the reference's C++ kernels cannot run here")
def test_stmm_fused_kernel_matches_the_per_tap_form(monkeypatch):
    """fp32 on CPU, reference backend: the grouped modulators' in-place merge as one fused kernel call each
    (``_cpu_kernels.grouped_deformable_add``) equals the tap-by-tap registry form (``GLSMAMBA_CPU_KERNEL=0``) to the
    fp32 tolerance, 2 clips (y_u a strided view), 2 offset groups, groups of 4 and 12 channels; a NaN / inf in y_s
    or y_t is non-finite at the same outputs; no ``deformable_aggregate`` call is made."""
    from glsmamba.model.blocks import STMM
    from glsmamba.reference import _cpu_kernels

    calls = []
    kernel = _cpu_kernels.grouped_deformable_add
    monkeypatch.setattr(_cpu_kernels, "grouped_deformable_add", lambda *a: calls.append(1) or kernel(*a))
    gen = torch.Generator().manual_seed(5)
    shape, c = (3, 4, 5), 24
    stmm = STMM(c, 6, offset_groups=2, group_channels=(4, 12))
    with torch.no_grad():
        for prm in stmm.parameters():
            prm.copy_(torch.randn(prm.shape, generator=gen) * 0.5)
    ys = torch.randn(2, 3, 60, c, generator=gen)
    for special in (None, math.nan, math.inf):
        y = ys.clone()
        if special is not None:
            y[0, 2, 3, 1] = special
            y[1, 1, 59, 5] = -special
        out = {}
        for mode in ("0", "1"):
            monkeypatch.setenv("GLSMAMBA_CPU_KERNEL", mode)
            reset_call_counts()
            with torch.no_grad(), model.use_backend("reference"):
                out[mode] = stmm(y.clone(), shape, inplace=True)
            assert ("deformable_aggregate" in _op_calls("reference")) == (mode == "0")
        assert_same_special_values(f"stmm fused, {special}", out["0"], out["1"], torch.float32, exact=False)
    assert len(calls) == 2 * 3  # two modulators, three runs with the kernel


def test_no_grad_forward_releases_what_it_no_longer_needs():
    """Memory of the no-grad forward: the encoder's features are gone once the blocks run, and a block's scan input
    is gone when its merge runs (the merge is the forward's peak)."""
    net = GLSMamba("tiny").eval()
    probes, alive = {}, []
    net.encoder.register_forward_hook(lambda m, i, o: probes.__setitem__("feats", weakref.ref(o)))
    net.gsm[0].register_forward_pre_hook(lambda m, i: alive.append(("feats", probes["feats"]() is not None)))
    for blk in net.blocks:
        scan, merge = blk.scan, blk.merge_scans

        def probed_scan(x, shape, scan=scan):
            probes["scan input"] = weakref.ref(x)
            return scan(x, shape)

        def probed_merge(ys, shape, merge=merge):
            alive.append(("scan input", probes["scan input"]() is not None))
            return merge(ys, shape)

        blk.scan, blk.merge_scans = probed_scan, probed_merge
    with torch.no_grad():
        out = net(_frames(1, 5, 64, 48))
    assert torch.isfinite(out).all()
    assert alive == [("feats", False)] + [("scan input", False)] * len(net.blocks)


def test_low_resolution_variant_shapes_and_parameters():
    # feature_stride 16: the trunk runs on the 1/16 grid, the heatmaps still come out at 1/4
    tiny, lr = GLSMamba("tiny"), GLSMamba("tiny", feature_stride=16)
    assert lr.num_parameters(trainable_only=True) == tiny.num_parameters(trainable_only=True)  # pooling only
    x, shape = lr.eval().tokens(_frames(1, 5, 64, 48))
    assert shape == (5, 4, 3) and x.shape == (1, 60, 32)
    out = lr(_frames(2, 5, 64, 48))
    assert out.shape == (2, 15, 16, 12) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="multiples of 16"):
        lr(_frames(1, 5, 40, 48))
    net = GLSMamba("base-lr", vit_depth=1).eval()
    with torch.no_grad():
        assert net(_frames(1, 5, 64, 48)).shape == (1, 15, 16, 12)
    assert net.tokens(_frames(1, 5, 64, 48))[1] == (5, 4, 3)


# --------------------------------------------------------------------------------------------- ablations
@pytest.mark.parametrize(
    "override",
    [dict(directions=2), dict(directions=4), dict(directions=6), dict(merge="sum"), dict(num_lrm=0),
     dict(num_gsm=0), dict(num_gsm=0, num_lrm=0), dict(ssm_sharing="none"), dict(ssm_sharing="proj"),
     dict(stmm_form="depthwise", stmm_groups=2), dict(ca_form="frame"), dict(ffn_ratio=0.0), dict(head="linear")],
    ids=["dirs2", "dirs4", "dirs6", "sum", "gsm_only", "lrm_only", "backbone_only", "unshared_proj",
         "shared_proj", "depthwise_stmm", "frame_ca", "no_ffn", "linear_head"],
)
def test_ablation_switches_build_and_train(override):
    net = GLSMamba("tiny", **override).train()
    out = net(_frames(2, 5, 20, 16))
    assert out.shape == (2, 15, 5, 4)
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# --------------------------------------------------------------------------------------------- backends
def _op_calls(backend: str) -> dict[str, int]:
    return {op: n for (op, b), n in call_counts().items() if b == backend}


def _expected_calls(num_gsm: int, num_lrm: int, frames: int = 1, fused: bool = False) -> dict[str, int]:
    """Registry calls of one forward of a grouped-STMM network (6 directions), derived from its structure: every
    block (GSM or LRM) runs one ``ordered_selective_scan`` over all its directions; only a GSM block merges with
    STMM, whose spatial modulator samples its 9 taps (3x3, ``SPATIAL_TAPS``) and temporal modulator its 3 taps
    (dt = -1, 0, 1, ``TEMPORAL_TAPS``) one ``deformable_aggregate`` call per tap (the grouped form tap by tap): 12
    calls per GSM block, none per LRM block (2 directions, no merge). ``frames``: clips x frames of a no-grad
    forward on CPU tensors, where each tap is sampled one frame at a time. ``fused``: a no-grad forward on the
    reference backend on a CPU with its C++ kernels, where each modulator is one fused kernel call, no registry
    call."""
    return {"ordered_selective_scan": num_gsm + num_lrm,
            **({} if fused else {"deformable_aggregate": num_gsm * (9 + 3) * frames})}



def test_backend_switch_changes_what_a_built_model_runs(device):
    # 2 GSM (6 directions, STMM) + 1 LRM; narrow and small so the forwards under the interpreter stay short
    net = GLSMamba("tiny", num_frames=3, dim=8).eval().to(device)
    frames = _frames(1, 3, 8, 8).to(device)
    # 3 scans, 24 deformable calls (x 3 frames on CPU: the no-grad merge samples frame by frame)
    # (on CPU with the reference's C++ kernels the reference backend's modulators make no registry call)
    per_frame = 3 if frames.device.type == "cpu" else 1
    expected = {"triton": _expected_calls(num_gsm=2, num_lrm=1, frames=per_frame),
                "reference": _expected_calls(num_gsm=2, num_lrm=1, frames=per_frame, fused=_fused_here(frames.device))}
    try:
        for name in ("reference", "triton"):
            model.set_backend(name)
            reset_call_counts()
            with torch.no_grad():
                net(frames)
            assert _op_calls(name) == expected[name]
            assert _op_calls({"reference": "triton", "triton": "reference"}[name]) == {}
        model.set_backend("triton")
        reset_call_counts()
        with model.use_backend("reference"), torch.no_grad():  # the context wins over the process default
            net(frames)
        assert _op_calls("reference") == expected["reference"] and _op_calls("triton") == {}
        net.backend = "triton"  # a pinned model wins over the context
        reset_call_counts()
        with model.use_backend("reference"), torch.no_grad():
            net(frames)
        assert _op_calls("triton") == expected["triton"] and _op_calls("reference") == {}
        assert net.pin_backend("auto") is net and net.backend == "auto"  # unpinned: the context wins again
        reset_call_counts()
        with model.use_backend("reference"), torch.no_grad():
            net(frames)
        assert _op_calls("reference") == expected["reference"] and _op_calls("triton") == {}
        assert not hasattr(net, "set_backend")  # one name per scope: model.set_backend is process-wide
    finally:
        model.set_backend(None)


def test_auto_backend_on_cpu_runs_reference():
    net = GLSMamba("tiny", backend="auto").eval()
    reset_call_counts()
    with model.use_backend("auto"), torch.no_grad():
        net(_frames(1, 5, 16, 12))
    # tiny: 2 GSM + 1 LRM, T = 5
    assert _op_calls("reference") == _expected_calls(num_gsm=2, num_lrm=1, frames=5,
                                                     fused=_fused_here(torch.device("cpu")))
    with pytest.raises(ValueError, match="backend"):
        net.backend = "cuda"


def test_whole_network_reference_vs_triton_outputs_and_all_grads(device):
    from glsmamba.verify.network import exact_float32, perturb_for_check

    torch.manual_seed(0)
    # tiny's structure (STMM, windowed LRM with border windows) narrowed for the interpreter: 1 GSM + 1 LRM, D = 8,
    # T = 3, 16 x 12 frames -> a 3 x 4 x 3 token grid, 3 x 2 windows
    net = GLSMamba("tiny", num_frames=3, dim=8, num_gsm=1, num_lrm=1, window=(3, 2)).train()
    perturb_for_check(net, seed=0)  # non-zero offsets: exercise the deformable sampling off the integer grid
    net = net.to(device)
    frames = _frames(2, 3, 16, 12).to(device)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    results = {}
    for backend in ("reference", "triton"):
        net.load_state_dict(state)
        net.zero_grad(set_to_none=True)
        reset_call_counts()
        with model.use_backend(backend), exact_float32():  # TF32 off on GPU: compare the kernels, not TF32
            out = net(frames)
            assert _op_calls(backend) == _expected_calls(num_gsm=1, num_lrm=1)  # 2 scans, 12 deformable calls
            cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
            (out * cot).sum().backward()
        results[backend] = (out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()})
    (ref_out, ref_g), (tri_out, tri_g) = results["reference"], results["triton"]
    assert_close("heatmaps", ref_out, tri_out)
    assert ref_g.keys() == tri_g.keys() and len(ref_g) > 40
    for name in ref_g:
        assert_close(f"grad {name}", ref_g[name], tri_g[name], kind="grad")


# --------------------------------------------------------------------------------------------- overfitting
def _gaussian_target(j, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    ys = torch.randint(0, h, (j,), generator=g).float()
    xs = torch.randint(0, w, (j,), generator=g).float()
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return torch.exp(-((yy - ys[:, None, None]) ** 2 + (xx - xs[:, None, None]) ** 2) / 2.0)[None]


def _overfit(backend: str, frames_hw: tuple[int, int], steps: int, lr: float, device=None, **cfg) -> list[float]:
    torch.manual_seed(0)
    net = GLSMamba("tiny", **cfg).train().to(device)
    h, w = frames_hw
    t = net.config.num_frames
    frames = _frames(1, t, h, w).to(device)
    target = _gaussian_target(net.config.num_joints, h // 4, w // 4).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    with model.use_backend(backend):
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = F.mse_loss(net(frames), target)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def test_tiny_overfits_one_clip_reference():
    losses = _overfit("reference", (16, 12), steps=60, lr=1e-2)
    assert min(losses[-5:]) <= losses[0] / 10, (losses[0], losses[-5:])


def test_tiny_overfits_one_clip_triton_short(device):
    # the CPU interpreter costs seconds per scan call: 8 x 8 frames (a 3 x 2 x 2 token grid), D = 8, one GSM block
    # with the unified pair only; the full structure trains in the slow test below
    losses = _overfit("triton", (8, 8), steps=20, lr=2e-2, device=device, num_frames=3, dim=8, num_gsm=1, num_lrm=0,
                      directions=2)
    assert min(losses[-5:]) <= losses[0] / 10, (losses[0], losses[-5:])


@pytest.mark.slow
def test_tiny_overfits_one_clip_triton_long(device):
    # slow (~8 min on 2 shared CPU cores under the interpreter, ~12-15 s per step): tiny's full structure
    # (T = 5, 2 GSM with STMM + 1 LRM) at D = 8 on a 16 x 12 clip, 30 steps
    losses = _overfit("triton", (16, 12), steps=30, lr=1e-2, device=device, dim=8)
    assert min(losses[-5:]) <= losses[0] / 10, (losses[0], losses[-5:])


# --------------------------------------------------------------------------------------------- encode / features
def test_forward_is_encode_then_forward_features_bit_identical():
    net = GLSMamba("tiny").eval()
    frames = _frames(2, 5, 16, 12)
    with torch.no_grad():
        want = net(frames)
        feats = net.encode(frames.flatten(0, 1))
        assert feats.shape == (10, net.config.encoder_channels, 4, 3)
        got = net.forward_features(feats.unflatten(0, (2, 5)))
    assert torch.equal(got, want)


def test_encode_is_per_frame():
    """A frame's features do not depend on the other frames of the batch (what the feature cache relies on)."""
    net = GLSMamba("tiny").eval()
    frames = _frames(1, 6, 16, 12)[0]
    with torch.no_grad():
        batched = net.encode(frames)
        one_by_one = torch.cat([net.encode(f[None]) for f in frames])
    assert_close("features", one_by_one, batched)


@pytest.mark.parametrize("call,arg,match", [
    ("encode", torch.zeros(5, 3, 16), r"frames must be \(N, 3, H, W\)"),
    ("encode", torch.zeros(5, 3, 18, 12), "multiples of 4"),
    ("forward_features", torch.zeros(1, 4, 32, 4, 3), r"feats must be \(B, T=5, C=32, h, w\)"),
    ("forward_features", torch.zeros(1, 5, 16, 4, 3), r"got shape \(1, 5, 16, 4, 3\)"),
])
def test_encode_and_forward_features_reject_bad_shapes(call, arg, match):
    with pytest.raises(ValueError, match=match):
        getattr(GLSMamba("tiny"), call)(arg)


# --------------------------------------------------------------------------------------------- inference mode
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_network_runs_under_inference_mode(backend, device):
    """Every op works on inference tensors, on both backends, including the first call at a new clip shape (the
    cached scan orders are built there); the cache it fills still serves autograd afterwards."""
    from glsmamba.reference import space_time

    space_time._scan_orders_cached.cache_clear()
    space_time._window_orders_cached.cache_clear()
    net = GLSMamba("tiny", num_frames=3, dim=8, num_gsm=1, num_lrm=1, window=(3, 2)).eval().to(device)
    net.backend = backend
    frames = _frames(1, 3, 16, 12).to(device)
    with torch.inference_mode():
        out = net(frames)
    assert out.is_inference() and torch.isfinite(out).all()
    with torch.no_grad():
        assert torch.equal(net(frames), out)
    net.train()
    net(frames).sum().backward()  # the orders cached under inference mode are ordinary tensors
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_scan_orders_accept_inference_tensors():
    """Order tables made by the caller under inference mode (no version counter) are checked on every call."""
    from glsmamba.reference.ordered_scan import ordered_selective_scan
    from glsmamba.reference.space_time import STS6D, scan_orders

    with torch.inference_mode():
        orders = scan_orders((2, 3, 4), STS6D).clone()
        assert orders.is_inference()
        x = torch.randn(1, 24, 4)
        args = (torch.randn(1, 6, 24, 4), -torch.rand(6, 4, 2), torch.randn(1, 6, 24, 2), torch.randn(1, 6, 24, 2),
                None, orders, (0, 1, 2, 0, 1, 2))
        assert ordered_selective_scan(x, *args).shape == (1, 3, 24, 4)
        bad = orders.clone()
        bad[0, 0] = 1
        with pytest.raises(ValueError, match="permutations"):
            ordered_selective_scan(x, *args[:5], bad, args[6])
