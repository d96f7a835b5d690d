"""``GLSMambaConfig.parse_overrides``: the one ``--set FIELD=VALUE`` parser of every command (typed from the
dataclass field types), its errors, and ``--set`` spelled both ways on the command line."""

from __future__ import annotations

import json

import pytest

from glsmamba.cli import build_parser, main
from glsmamba.model import GLSMambaConfig, get_config

parse = GLSMambaConfig.parse_overrides


def test_values_are_typed_from_the_field_types():
    got = parse(["num_frames=3", "ffn_ratio=3", "drop_path=0.25", "freeze_encoder=false", "vit_qkv_bias=Yes",
                 "share_ssm_proj=1", "merge=sum", "name='mine'", "dt_rank=none", "window=4,3",
                 "image_size=128x96", "conv_channels=[8, 16]"])
    assert got == {"num_frames": 3, "ffn_ratio": 3.0, "drop_path": 0.25, "freeze_encoder": False,
                   "vit_qkv_bias": True, "share_ssm_proj": True, "merge": "sum", "name": "mine", "dt_rank": None,
                   "window": (4, 3), "image_size": (128, 96), "conv_channels": (8, 16)}
    assert [type(got[k]) for k in ("num_frames", "ffn_ratio", "freeze_encoder")] == [int, float, bool]
    assert parse(["dt_rank=8", "window=(6, 5)", "num-frames=1"]) == {"dt_rank": 8, "window": (6, 5), "num_frames": 1}
    assert parse([]) == {}
    # the parsed values build a valid config
    cfg = get_config("tiny", **parse(["num_frames=3", "window=2,2", "merge=sum", "dt_rank=none"]))
    assert (cfg.num_frames, cfg.window, cfg.merge, cfg.dt_rank) == (3, (2, 2), "sum", None)


@pytest.mark.parametrize("item, match", [
    ("num_frames", r"override 'num_frames': expected FIELD=VALUE"),
    ("=3", r"override '=3': expected FIELD=VALUE"),
    ("nope=1", r"unknown model config field 'nope' in override 'nope=1'; fields: backend, ca_reduction, .*window"),
    ("num_frames=1.5", r"override 'num_frames=1.5': num_frames takes an int"),
    ("ffn_ratio=big", r"override 'ffn_ratio=big': ffn_ratio takes a number"),
    ("freeze_encoder=maybe", r"override 'freeze_encoder=maybe': freeze_encoder takes true or false"),
    ("window=4", r"override 'window=4': window takes 2 ints, e.g. window=4,3; got 1"),
    ("window=4,3,2", r"window takes 2 ints.*got 3"),
    ("image_size=a,b", r"override 'image_size=a,b': image_size takes 2 ints"),
    ("dt_rank=auto", r"override 'dt_rank=auto': dt_rank takes an int"),
])
def test_bad_items_name_the_item_and_the_expected_form(item, match):
    with pytest.raises(ValueError, match=match):
        parse(["num_frames=3", item])


def test_set_accepts_both_spellings_in_every_command():
    parser = build_parser()
    for command, required in (("train", ["--data", "d", "--out", "o"]), ("summary", [])):
        args = parser.parse_args([command, *required, "--set", "num_frames=3", "merge=sum", "--set", "window=4,3"])
        assert args.overrides == ["num_frames=3", "merge=sum", "window=4,3"], command
        assert parser.parse_args([command, *required]).overrides == [], command


def test_summary_command_uses_the_typed_parser(capsys):
    assert main(["summary", "--preset", "tiny", "--json", "--set", "directions=2", "merge=sum",
                 "--set", "window=2,3", "dt_rank=none"]) == 0
    cfg = json.loads(capsys.readouterr().out)["config"]
    assert (cfg["directions"], cfg["merge"], cfg["window"], cfg["dt_rank"]) == (2, "sum", [2, 3], None)
    assert main(["summary", "--preset", "tiny", "--set", "window=4"]) == 2
    assert "window takes 2 ints" in capsys.readouterr().out
    assert main(["summary", "--preset", "tiny", "--set", "nope=1"]) == 2
    assert "unknown model config field 'nope'" in capsys.readouterr().out


def test_train_command_rejects_a_bad_override_before_training(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--preset", "tiny",
                 "--set", "num_frames=3", "--set", "window=4,x"]) == 1
    err = capsys.readouterr().err
    assert "override 'window=4,x': window takes 2 ints" in err and not (tmp_path / "r").exists()
