"""Damaged checkpoint files: one line naming the file and what is wrong, exit code 1, never a traceback and never
torch's advice to unpickle with ``weights_only=False`` (``eval --checkpoint``, ``demo --checkpoint``,
``train --resume``); the way on for a damaged ``last.pth``; a checkpoint saved without its encoder; the
temporary file a killed run leaves."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from glsmamba import model
from glsmamba.cli import main
from glsmamba.model.checkpoint import DamagedCheckpointError, MissingEncoderError, damaged_file_reason, read

# a small frozen ViT encoder (as in test_model_checkpoint.py)
SMALL_VIT = dict(vit_embed_dim=64, vit_depth=2, vit_num_heads=4, deconv_channels=32, dim=16, d_state=4,
                 num_gsm=1, num_lrm=1, stmm_groups=2, ca_reduction=4, image_size=(64, 48))

# kind -> words the one-line message must contain
KINDS = {
    "truncated": "truncated: not a complete torch zip archive",
    "empty": "empty file (0 bytes)",
    "random": "not a torch checkpoint",
    "zip": "a zip archive but not a torch checkpoint",
}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "good.pth"
    torch.manual_seed(0)
    model.save(model.GLSMamba("tiny", num_frames=3, image_size=(32, 24)), path, extra={"train": {"epoch": 1}})
    return path


def damage(good: Path, kind: str, dest: Path) -> Path:
    """A copy of ``good`` damaged as ``kind`` (see KINDS) at ``dest``."""
    data = good.read_bytes()
    if kind == "truncated":  # a copy cut short, as by a full disk or an interrupted transfer
        dest.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        dest.write_bytes(b"")
    elif kind == "random":
        dest.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("notes/readme.txt", "not a checkpoint")
        dest.write_bytes(buf.getvalue())
    else:
        raise ValueError(kind)
    return dest


def assert_one_line(err: str, path: Path, words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0] and words in lines[0], err
    assert "Traceback" not in err and "weights_only" not in err, err


# ------------------------------------------------------------------------------------------------ the classifier
@pytest.mark.parametrize("kind", KINDS)
def test_read_names_what_is_wrong(good, tmp_path, kind):
    bad = damage(good, kind, tmp_path / f"{kind}.pth")
    assert damaged_file_reason(good) is None and damaged_file_reason(good, deep=True) is None
    assert KINDS[kind] in damaged_file_reason(bad)
    with pytest.raises(DamagedCheckpointError) as info:
        read(bad)
    assert info.value.path == str(bad) and KINDS[kind] in info.value.reason
    assert str(info.value) == f"{bad}: {info.value.reason}" and "\n" not in str(info.value)
    with pytest.raises(DamagedCheckpointError, match=re.escape(KINDS[kind])):  # a damaged ViTPose file too
        model.GLSMamba("base", **SMALL_VIT).load_vitpose(bad)


def test_safe_loader_refusal_quotes_no_unsafe_advice(tmp_path):
    """An intact torch file holding a numpy scalar: 'not tensors + plain values', without torch's advice to load it
    with weights_only=False."""
    path = tmp_path / "np.pth"
    torch.save({"format": "glsmamba", "meta": np.float64(1.0)}, path)
    assert damaged_file_reason(path) is None
    with pytest.raises(ValueError, match="not tensors \\+ plain values: Unsupported global") as info:
        read(path)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------ the commands
@pytest.mark.parametrize("kind", KINDS)
def test_eval_checkpoint_damaged(good, tmp_path, capsys, kind):
    bad = damage(good, kind, tmp_path / "last.pth")
    assert main(["eval", "--checkpoint", str(bad), "--data", str(tmp_path), "--device", "cpu"]) == 1
    assert_one_line(capsys.readouterr().err, bad, KINDS[kind])


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    pytest.importorskip("av", reason="PyAV (the optional extra 'video') is not installed")
    from glsmamba.vhpe.video import write_video

    frames = [np.full((24, 32, 3), 40 * i, np.uint8) for i in range(3)]
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames, 10)


@pytest.mark.parametrize("kind", KINDS)
def test_demo_checkpoint_damaged(good, video, tmp_path, capsys, kind):
    bad = damage(good, kind, tmp_path / "final.pth")
    assert main(["demo", str(video), "--checkpoint", str(bad), "--json", str(tmp_path / "o.json"),
                 "--device", "cpu"]) == 1
    assert_one_line(capsys.readouterr().err, bad, KINDS[kind])
    assert not (tmp_path / "o.json").exists()


def _run_folder(good: Path, root: Path, kind: str, epochs: tuple[int, ...] = (2, 3)) -> Path:
    """A run folder whose last.pth is damaged, with intact per-epoch checkpoints ``epochs`` (the newest one
    damaged too, so the way on is the newest *intact* one)."""
    out = root / "run"
    (out / "checkpoints").mkdir(parents=True)
    for e in epochs:
        (out / "checkpoints" / f"epoch_{e:03d}.pth").write_bytes(good.read_bytes())
    damage(good, kind, out / "checkpoints" / f"epoch_{max(epochs) + 1:03d}.pth")
    damage(good, kind, out / "last.pth")
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_train_resume_damaged_names_the_newest_intact_epoch(good, tmp_path, capsys, kind):
    out = _run_folder(good, tmp_path, kind)
    argv = ["train", "--data", str(tmp_path), "--out", str(out), "--preset", "tiny", "--flip-prob", "0",
            "--device", "cpu"]
    assert main([*argv, "--resume"]) == 1
    err = capsys.readouterr().err
    newest = out / "checkpoints" / "epoch_003.pth"
    assert_one_line(err, out / "last.pth", KINDS[kind])
    assert f"continue with --resume-from {newest}" in err
    # --resume-from a damaged per-epoch file: same message, naming that file, and the newest intact one
    bad_epoch = out / "checkpoints" / "epoch_004.pth"
    assert main([*argv, "--resume-from", str(bad_epoch)]) == 1
    err = capsys.readouterr().err
    assert_one_line(err, bad_epoch, KINDS[kind])
    assert f"--resume-from {newest}" in err


def test_train_resume_without_any_intact_checkpoint(good, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    damage(good, "truncated", out / "last.pth")
    assert main(["train", "--data", str(tmp_path), "--out", str(out), "--preset", "tiny", "--device", "cpu",
                 "--resume"]) == 1
    err = capsys.readouterr().err
    assert_one_line(err, out / "last.pth", "truncated")
    assert "--resume-from" not in err


def test_train_resume_damaged_in_a_fresh_process(good, tmp_path):
    """The real command in its own process: stderr is exactly one line, exit code 1."""
    out = _run_folder(good, tmp_path, "truncated")
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.run([sys.executable, "-m", "glsmamba", "train", "--data", str(tmp_path), "--out", str(out),
                           "--preset", "tiny", "--flip-prob", "0", "--device", "cpu", "--resume"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert_one_line(proc.stderr, out / "last.pth", KINDS["truncated"])


# ------------------------------------------------------------------------------------------------ the encoder
def test_checkpoint_without_encoder_says_pass_backbone(tmp_path, capsys):
    net = model.GLSMamba("base", **SMALL_VIT)
    path = tmp_path / "no_encoder.pth"
    model.save(net, path, include_frozen=False)
    with pytest.raises(MissingEncoderError, match="pass backbone=<ViTPose file> or strict=False"):  # the API's words
        model.load(path)
    assert main(["eval", "--checkpoint", str(path), "--data", str(tmp_path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert_one_line(err, path, "pass --backbone FILE")
    assert "backbone=" not in err and "strict=False" not in err
