"""Checkpoints (weights + config in one file) and ViTPose backbone import in the mmpose key naming."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from glsmamba import model
from glsmamba.model import CheckpointError, GLSMamba, get_config
from glsmamba.model.checkpoint import map_vitpose_keys

# a ViT-encoder config small enough for CPU: 2 blocks, 64 wide, 4 heads, a narrow trunk
SMALL_VIT = dict(vit_embed_dim=64, vit_depth=2, vit_num_heads=4, deconv_channels=32, dim=16, d_state=4,
                 num_gsm=1, num_lrm=1, stmm_groups=2, ca_reduction=4, image_size=(64, 48))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def _frames(b, t, h, w, seed=0):
    return torch.randn(b, t, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _randomise(net: torch.nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


# --------------------------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path):
    net = GLSMamba("tiny", num_joints=17, directions=4).eval()
    _randomise(net)
    path = tmp_path / "tiny.pt"
    net.save(path, extra={"epoch": 3})
    back = GLSMamba.load(path).eval()
    assert back.config == net.config and back.config.num_joints == 17 and back.config.directions == 4
    for (k, v), (k2, v2) in zip(net.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    frames = _frames(1, 5, 16, 12)
    with torch.no_grad():
        assert torch.equal(net(frames), back(frames))
    assert model.checkpoint.read(path)["extra"] == {"epoch": 3}


def test_load_with_overrides_and_module_functions(tmp_path):
    net = GLSMamba("tiny")
    model.save(net, tmp_path / "a.pt")
    back = model.load(tmp_path / "a.pt", backend="reference")
    assert back.backend == "reference" and back.config.replace(backend="auto") == net.config


def test_save_without_frozen_encoder(tmp_path):
    net = GLSMamba("base", **SMALL_VIT)
    _randomise(net)
    net.freeze_encoder()
    path = tmp_path / "trunk.pt"
    net.save(path, include_frozen=False)
    state = model.checkpoint.read(path)["state_dict"]
    assert state and not any(k.startswith("encoder.") for k in state)
    with pytest.raises(ValueError, match="backbone="):
        model.load(path)
    back = model.load(path, strict=False)
    assert torch.equal(back.head.final.weight, net.head.final.weight)


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    net = GLSMamba("tiny")
    path = tmp_path / "t.pt"
    net.save(path)
    payload = torch.load(path, weights_only=True)
    sd = payload["state_dict"]
    del sd["head.final.bias"]
    sd["head.extra.weight"] = torch.zeros(2)
    sd["embed.temporal"] = torch.zeros(4, 32)
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as err:
        model.load(path)
    msg = str(err.value)
    assert "missing keys: head.final.bias" in msg and "unexpected keys: head.extra.weight" in msg
    assert "embed.temporal (file (4, 32), model (5, 32))" in msg
    assert err.value.missing == ["head.final.bias"] and err.value.unexpected == ["head.extra.weight"]


# the model config of a version-1 checkpoint as the version-1 code wrote it (tiny, from the run folders of the
# first occlusion experiment); that code reported 109,951 trainable parameters for it
# (bench/results/experiments/occlusion_ablation.md, before the paper-fidelity defaults)
V1_TINY = {"name": "tiny", "num_frames": 5, "image_size": [64, 48], "num_joints": 15, "encoder": "conv",
           "vit_embed_dim": 768, "vit_depth": 12, "vit_num_heads": 12, "vit_mlp_ratio": 4.0, "vit_qkv_bias": True,
           "deconv_channels": 256, "conv_channels": [16, 32], "freeze_encoder": False, "dim": 32, "d_state": 4,
           "expand": 2, "dt_rank": 4, "ffn_ratio": 2.0, "num_gsm": 2, "num_lrm": 1, "directions": 6, "merge": "stmm",
           "share_ssm_proj": True, "stmm_groups": 2, "ca_reduction": 4, "window": [4, 3], "drop_path": 0.0,
           "backend": "auto"}


def test_version_1_checkpoint_loads_into_its_own_layout(tmp_path):
    cfg = model.GLSMambaConfig.from_dict(model.checkpoint.upgrade_config(V1_TINY, 1))
    assert (cfg.ssm_sharing, cfg.stmm_form, cfg.ca_form, cfg.head, cfg.feature_stride) == (
        "proj", "depthwise", "joint", "conv", 4)
    net = GLSMamba(cfg).eval()
    assert net.num_parameters(trainable_only=True) == 109_951
    _randomise(net)
    path = tmp_path / "v1.pt"
    net.save(path)
    payload = torch.load(path, weights_only=True)
    payload["version"], payload["config"] = 1, V1_TINY  # what the version-1 code wrote
    torch.save(payload, path)
    assert model.checkpoint.read(path)["config"] == cfg.to_dict()
    back = model.load(path).eval()
    frames = _frames(1, 5, 16, 12)
    with torch.no_grad():
        assert torch.equal(net(frames), back(frames))
    unshared = model.checkpoint.upgrade_config({**V1_TINY, "share_ssm_proj": False}, 1)
    assert unshared["ssm_sharing"] == "none" and "share_ssm_proj" not in unshared
    # the version-1 layout is not the current default: loading its weights into today's tiny fails, naming keys
    with pytest.raises(CheckpointError, match="shape mismatches"):
        model.checkpoint._check_and_load(GLSMamba("tiny"), back.state_dict(), "v1 into v2", strict=True)
    payload["version"] = 3
    torch.save(payload, path)
    with pytest.raises(ValueError, match="version 3"):
        model.load(path)


def test_load_rejects_other_files(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a GLSMamba checkpoint"):
        model.load(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError):
        model.load(tmp_path / "missing.pt")


# --------------------------------------------------------------------------------------------- ViTPose import
def _vitpose_state_dict(c: int, depth: int, grid: tuple[int, int], deconv: int, joints: int, head_prefix: str,
                        seed: int = 0) -> dict[str, torch.Tensor]:
    """A ViTPose/mmpose-named state dict with shapes written out here (not taken from the model)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.05
    sd = {"backbone.patch_embed.proj.weight": r(c, 3, 16, 16), "backbone.patch_embed.proj.bias": r(c),
          "backbone.pos_embed": r(1, 1 + grid[0] * grid[1], c),
          "backbone.last_norm.weight": 1 + r(c), "backbone.last_norm.bias": r(c)}
    for i in range(depth):
        p = f"backbone.blocks.{i}."
        sd.update({p + "norm1.weight": 1 + r(c), p + "norm1.bias": r(c),
                   p + "attn.qkv.weight": r(3 * c, c), p + "attn.qkv.bias": r(3 * c),
                   p + "attn.proj.weight": r(c, c), p + "attn.proj.bias": r(c),
                   p + "norm2.weight": 1 + r(c), p + "norm2.bias": r(c),
                   p + "mlp.fc1.weight": r(4 * c, c), p + "mlp.fc1.bias": r(4 * c),
                   p + "mlp.fc2.weight": r(c, 4 * c), p + "mlp.fc2.bias": r(c)})
    for idx, cin in ((0, c), (3, deconv)):
        sd[f"{head_prefix}.deconv_layers.{idx}.weight"] = r(cin, deconv, 4, 4)
        bn = f"{head_prefix}.deconv_layers.{idx + 1}."
        sd.update({bn + "weight": 1 + r(deconv), bn + "bias": r(deconv), bn + "running_mean": r(deconv),
                   bn + "running_var": 1 + r(deconv).abs(), bn + "num_batches_tracked": torch.tensor(7)})
    sd[f"{head_prefix}.final_layer.weight"] = r(joints, deconv, 1, 1)
    sd[f"{head_prefix}.final_layer.bias"] = r(joints)
    return sd


@pytest.mark.parametrize("head_prefix", ["keypoint_head", "head"])  # mmpose 0.x (ViTPose) and 1.x
def test_load_vitpose_mmpose_naming(tmp_path, head_prefix):
    net = GLSMamba("base", **SMALL_VIT)
    sd = _vitpose_state_dict(64, 2, (4, 3), 32, 17, head_prefix)
    path = tmp_path / "vitpose.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "meta": {"epoch": 210}}, path)
    report = net.load_vitpose(path)
    enc = net.encoder
    assert torch.equal(enc.vit.patch_embed.proj.weight, sd["backbone.patch_embed.proj.weight"])
    assert torch.equal(enc.vit.blocks[1].attn.qkv.bias, sd["backbone.blocks.1.attn.qkv.bias"])
    assert torch.equal(enc.vit.blocks[0].mlp.fc2.weight, sd["backbone.blocks.0.mlp.fc2.weight"])
    assert torch.equal(enc.deconv[3].weight, sd[f"{head_prefix}.deconv_layers.3.weight"])
    assert torch.equal(enc.deconv[4].running_var, sd[f"{head_prefix}.deconv_layers.4.running_var"])
    assert sorted(report["skipped"]) == sorted(f"module.{head_prefix}.final_layer.{s}" for s in ("weight", "bias"))
    assert report["missing"] == [] and report["unexpected"] == []
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())


def test_vit_forward_follows_vitpose_semantics(tmp_path):
    # the loaded ViT against the ViTPose forward written out with functional ops: patch conv (stride 16,
    # padding 2), pos_embed[1:] + pos_embed[:1], pre-norm blocks (eps 1e-6), softmax attention, GELU MLP, last_norm
    net = GLSMamba("base", **SMALL_VIT)
    c, heads = 64, 4
    sd = _vitpose_state_dict(c, 2, (4, 3), 32, 17, "keypoint_head")
    torch.save({"state_dict": sd}, tmp_path / "v.pth")
    net.load_vitpose(tmp_path / "v.pth")
    x = torch.randn(2, 3, 64, 48)
    y = F.conv2d(x, sd["backbone.patch_embed.proj.weight"], sd["backbone.patch_embed.proj.bias"], stride=16,
                 padding=2)
    assert y.shape[-2:] == (4, 3)
    t = y.flatten(2).transpose(1, 2) + sd["backbone.pos_embed"][:, 1:] + sd["backbone.pos_embed"][:, :1]
    ln = lambda v, p: F.layer_norm(v, (c,), sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)
    for i in range(2):
        p = f"backbone.blocks.{i}."
        h = ln(t, p + "norm1")
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(2, 12, 3, heads, c // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), dim=-1)
        o = (att @ v).transpose(1, 2).reshape(2, 12, c)
        t = t + F.linear(o, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.gelu(F.linear(ln(t, p + "norm2"), sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
        t = t + F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    expected = ln(t, "backbone.last_norm").transpose(1, 2).reshape(2, c, 4, 3)
    with torch.no_grad():
        torch.testing.assert_close(net.encoder.vit(x), expected, atol=1e-5, rtol=1e-4)  # fp32 reassociation


def test_load_vitpose_bare_backbone_and_errors(tmp_path):
    net = GLSMamba("base", **SMALL_VIT)
    sd = _vitpose_state_dict(64, 2, (4, 3), 32, 17, "keypoint_head")
    bare = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    torch.save(bare, tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: deconv\.0\.weight"):
        net.load_vitpose(tmp_path / "bare.pth")
    report = net.load_vitpose(tmp_path / "bare.pth", strict=False)
    assert "deconv.0.weight" in report["missing"]
    assert torch.equal(net.encoder.vit.last_norm.bias, sd["backbone.last_norm.bias"])
    # a ViT-S-sized file into a 64-wide model: shape mismatches name the key and both shapes
    wrong = _vitpose_state_dict(96, 2, (4, 3), 32, 17, "keypoint_head")
    wrong["backbone.cls_token"] = torch.zeros(1, 1, 96)
    torch.save({"state_dict": wrong}, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError) as err:
        net.load_vitpose(tmp_path / "wrong.pth")
    assert "vit.patch_embed.proj.weight (file (96, 3, 16, 16), model (64, 3, 16, 16))" in str(err.value)
    assert "vit.cls_token" in str(err.value)
    with pytest.raises(TypeError, match="encoder='vit'"):
        GLSMamba("tiny").load_vitpose(tmp_path / "bare.pth")


def test_load_vitpose_into_the_low_resolution_encoder_skips_the_deconvolutions(tmp_path):
    net = GLSMamba("base", **SMALL_VIT, feature_stride=16)
    sd = _vitpose_state_dict(64, 2, (4, 3), 32, 17, "keypoint_head")
    torch.save({"state_dict": sd}, tmp_path / "v.pth")
    report = net.load_vitpose(tmp_path / "v.pth")
    assert report["missing"] == [] and report["unexpected"] == [] and "deconv.0.weight" in report["skipped"]
    assert torch.equal(net.encoder.vit.last_norm.bias, sd["backbone.last_norm.bias"])


def test_load_vitpose_resizes_pos_embed(tmp_path):
    # a 256 x 192 checkpoint (16 x 12 grid) into a model whose nominal grid is 4 x 3
    net = GLSMamba("base", **SMALL_VIT)
    sd = _vitpose_state_dict(64, 2, (16, 12), 32, 17, "keypoint_head")
    torch.save({"state_dict": sd}, tmp_path / "big.pth")
    net.load_vitpose(tmp_path / "big.pth")
    pos = net.encoder.vit.pos_embed
    assert pos.shape == (1, 1 + 12, 64)
    assert torch.equal(pos[:, 0], sd["backbone.pos_embed"][:, 0])  # the class slot is kept as is


def test_map_vitpose_keys():
    mapped, skipped = map_vitpose_keys({
        "backbone.blocks.0.attn.qkv.weight": torch.zeros(1),
        "head.deconv_layers.4.running_mean": torch.zeros(1),
        "keypoint_head.final_layer.bias": torch.zeros(1),
        "something.else": torch.zeros(1),
    })
    assert set(mapped) == {"vit.blocks.0.attn.qkv.weight", "deconv.4.running_mean", "something.else"}
    assert skipped == ["keypoint_head.final_layer.bias"]


class Meta:  # an arbitrary object, as mmpose checkpoints store their config objects in "meta"
    pass


def test_load_vitpose_untrusted_pickle_explains(tmp_path):
    sd = _vitpose_state_dict(64, 2, (4, 3), 32, 17, "keypoint_head")
    torch.save({"state_dict": sd, "meta": Meta()}, tmp_path / "m.pth")
    net = GLSMamba("base", **SMALL_VIT)
    with pytest.raises(ValueError, match="trusted=True"):
        net.load_vitpose(tmp_path / "m.pth")
    assert net.load_vitpose(tmp_path / "m.pth", trusted=True)["missing"] == []


def test_checkpoint_without_encoder_reads_an_mmpose_backbone_only_when_trusted(tmp_path):
    """A checkpoint saved without its frozen encoder + an mmpose backbone file that pickles metadata: refused by
    default (the message names the option), read with trust_backbone=True through load, load_model and the CLI."""
    from glsmamba.cli import build_parser
    from glsmamba.vhpe.infer import load_model

    sd = _vitpose_state_dict(64, 2, (4, 3), 32, 17, "keypoint_head", seed=4)
    torch.save({"state_dict": sd, "meta": Meta()}, tmp_path / "vitpose.pth")
    net = GLSMamba("base", **SMALL_VIT)
    assert net.encoder_frozen
    model.save(net, tmp_path / "ck.pth", include_frozen=False)
    with pytest.raises(ValueError, match="--trust-backbone"):
        model.load(tmp_path / "ck.pth", backbone=tmp_path / "vitpose.pth")
    loaded = model.load(tmp_path / "ck.pth", backbone=tmp_path / "vitpose.pth", trust_backbone=True)
    assert torch.equal(loaded.encoder.vit.patch_embed.proj.weight, sd["backbone.patch_embed.proj.weight"])
    via_infer = load_model(tmp_path / "ck.pth", "cpu", "reference", tmp_path / "vitpose.pth", trust_backbone=True)
    assert torch.equal(via_infer.encoder.vit.patch_embed.proj.weight, sd["backbone.patch_embed.proj.weight"])
    for cmd in (["eval", "--checkpoint", "ck.pth", "--data", "d"], ["demo", "v.mp4", "--checkpoint", "ck.pth"],
                ["train", "--data", "d", "--out", "o"]):
        args = build_parser().parse_args([*cmd, "--backbone", "b.pth", "--trust-backbone"])
        assert args.backbone == "b.pth" and args.trust_backbone is True


def test_config_overrides_in_model_construction():
    cfg = get_config("tiny")
    assert GLSMamba(cfg, num_joints=3).config.num_joints == 3
    with pytest.raises(TypeError, match="config"):
        GLSMamba(42)  # type: ignore[arg-type]
