"""GLSMambaConfig: presets, overrides, (de)serialisation, validation; and the 2-D sine-cosine embedding."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from glsmamba.model.config import PRESETS, GLSMambaConfig, get_config
from glsmamba.model.embeddings import sincos_2d


def test_presets_exist_and_follow_the_paper():
    assert set(PRESETS) == {"tiny", "base", "base-lr", "huge"}
    base = get_config("base")
    # paper: 4 GSM + 2 LRM, 5-frame clips (centre key frame), 256 x 192 input, frozen ViT-B/16 encoder
    assert (base.num_gsm, base.num_lrm, base.num_frames, base.key_frame) == (4, 2, 5, 2)
    assert base.image_size == (256, 192) and base.encoder == "vit" and base.freeze_encoder
    assert (base.vit_embed_dim, base.vit_depth, base.vit_num_heads) == (768, 12, 12)
    assert base.d_state == 16 and base.directions == 6 and base.merge == "stmm" and base.window == (8, 6)
    assert base.num_joints == 15 and base.feature_stride == 4
    # GLSMamba-BLR: base with the ViT's 1/16 tokens as the trunk's input (docs/paper.md section 3)
    assert get_config("base-lr") == base.replace(name="base-lr", feature_stride=16)
    huge = get_config("huge")
    assert (huge.vit_embed_dim, huge.vit_depth, huge.vit_num_heads) == (1280, 32, 16)
    tiny = get_config("tiny")
    assert tiny.encoder == "conv" and tiny.input_multiple == 4 and tiny.dim <= 32 and tiny.d_state == 4


def test_frozen_and_overrides():
    cfg = get_config("base", num_joints=17, directions=4)
    assert cfg.num_joints == 17 and cfg.directions == 4 and cfg.name == "base"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dim = 3  # type: ignore[misc]
    assert cfg.replace(merge="sum").merge == "sum"
    with pytest.raises(TypeError, match="not_a_field"):
        cfg.replace(not_a_field=1)
    with pytest.raises(ValueError, match="preset name"):
        get_config("large")


def test_derived_sizes():
    cfg = get_config("base")
    assert cfg.d_inner == 512 and cfg.dt_rank_ == math.ceil(256 / 16) and cfg.encoder_channels == 256
    assert get_config("base", dt_rank=4).dt_rank_ == 4
    assert get_config("tiny").encoder_channels == get_config("tiny").conv_channels[-1]
    assert get_config("base-lr").encoder_channels == 768 and get_config("base-lr").input_multiple == 16
    assert get_config("tiny", feature_stride=16).input_multiple == 16 and get_config("tiny").input_multiple == 4
    assert cfg.stmm_channels_per_group == (16, 64)
    assert get_config("base", dim=8).stmm_channels_per_group == (16, 16)  # capped at d_inner


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dict_round_trip_through_json(name):
    cfg = get_config(name, window=(4, 5))
    data = json.loads(json.dumps(cfg.to_dict()))
    back = GLSMambaConfig.from_dict(data)
    assert back == cfg and isinstance(back.window, tuple) and isinstance(back.image_size, tuple)
    with pytest.raises(TypeError, match="bogus"):
        GLSMambaConfig.from_dict({**data, "bogus": 1})


@pytest.mark.parametrize(
    "override, match",
    [
        (dict(directions=3), "directions"),
        (dict(merge="max"), "merge"),
        (dict(encoder="resnet"), "encoder"),
        (dict(backend="cuda"), "backend"),
        (dict(dim=30), "dim"),
        (dict(d_state=0), "d_state"),
        (dict(image_size=(250, 192)), "image_size"),
        (dict(window=(8,)), "window"),
        (dict(stmm_groups=3), "stmm_groups"),
        (dict(num_gsm=-1), "num_gsm"),
        (dict(vit_num_heads=5), "vit_num_heads"),
        (dict(feature_stride=8), "feature_stride"),
        (dict(ssm_sharing="some"), "ssm_sharing"),
        (dict(stmm_form="dense"), "stmm_form"),
        (dict(stmm_group_channels=(24, 64)), "stmm_group_channels"),
        (dict(ca_form="mlp"), "ca_form"),
        (dict(ca_reduction=0), "ca_reduction"),
        (dict(ca_reduction=5000.0), "ca_reduction"),
        (dict(head="deconv"), "head"),
        (dict(ffn_ratio=-1.0), "ffn_ratio"),
    ],
)
def test_validation_names_the_field(override, match):
    with pytest.raises(ValueError, match=match):
        get_config("base", **override)


def test_sincos_2d_hand_values():
    # dim 8 -> quarter 2, omega = [1, 1/100]; the row half first, then the column half, each [sin..., cos...]
    emb = sincos_2d(3, 4, 8, dtype=torch.float64)
    assert emb.shape == (12, 8)
    i, j = 1, 2
    expected = [math.sin(i), math.sin(i / 100), math.cos(i), math.cos(i / 100),
                math.sin(j), math.sin(j / 100), math.cos(j), math.cos(j / 100)]
    torch.testing.assert_close(emb[i * 4 + j], torch.tensor(expected, dtype=torch.float64))
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d(2, 2, 6)
