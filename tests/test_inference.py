"""Inference as users run it: every op and the network under ``torch.inference_mode`` (both backends), eval and demo
running under it, precision, export, and the streaming predictor with its encoder-feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glsmamba import model
from glsmamba.model.backend import OPS, get_op
from glsmamba.verify.cases import OP_CASES, Sizes
from glsmamba.vhpe.synth import SynthConfig, make_dataset

SIZES = Sizes(1, 2, 3, 4, channels=4, dstate=2, length=11, window=(2, 3), offset_groups=2)


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: on a shared 2-core machine intra-op threads only add contention; restored afterwards
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer_ds")
    make_dataset(root, videos=1, frames=6, seed=3, val_videos=1, cfg=SynthConfig(width=96, height=64))
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("infer_ck") / "tiny.pth"
    torch.manual_seed(0)
    model.save(model.GLSMamba("tiny", num_frames=3, image_size=(32, 24)), path)
    return path


def _outputs(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


# ---------------------------------------------------------------------------------------------- inference mode
def test_the_op_cases_cover_every_registry_op():
    assert {op for op, _ in OP_CASES} == set(OPS)


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("key", list(OP_CASES), ids=["-".join(k) for k in OP_CASES])
def test_every_op_under_inference_mode(key, backend, device):
    """Every registry op runs on inference tensors (built under inference mode, as eval and demo make them) and
    gives exactly its no-grad output."""
    case = OP_CASES[key]
    op = get_op(case.op, backend=backend)
    with torch.no_grad():
        want = _outputs(op(**case.inputs(SIZES, torch.float32, device, 0)))
    with torch.inference_mode():
        kwargs = case.inputs(SIZES, torch.float32, device, 0)
        got = _outputs(op(**kwargs))
    assert all(g.is_inference() for g in got)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g, w), case.op


def _spy_inference_mode(monkeypatch) -> list[bool]:
    """Record, at every call of the network's trunk, whether inference mode is on."""
    seen: list[bool] = []
    real = model.GLSMamba.forward_features

    def spy(self, feats):
        seen.append(torch.is_inference_mode_enabled())
        return real(self, feats)

    monkeypatch.setattr(model.GLSMamba, "forward_features", spy)
    return seen


def test_eval_checkpoint_runs_under_inference_mode(data, ckpt, tmp_path, monkeypatch):
    from glsmamba.vhpe.infer import evaluate_checkpoint

    seen = _spy_inference_mode(monkeypatch)
    res = evaluate_checkpoint(ckpt, data, out=tmp_path / "ev", device="cpu", batch_size=4)
    assert res["clips"] > 0 and seen and all(seen)


def test_demo_runs_under_inference_mode(ckpt, tmp_path, monkeypatch):
    pytest.importorskip("av", reason="PyAV (the optional extra 'video') is not installed")
    from glsmamba.vhpe.demo import run_demo
    from glsmamba.vhpe.synth import render_video
    from glsmamba.vhpe.video import write_video

    images, _ = render_video(1, 4, seed=2, cfg=SynthConfig(width=64, height=48))
    video = write_video(tmp_path / "v.mp4", [np.asarray(im) for im in images], 10)
    seen = _spy_inference_mode(monkeypatch)
    doc = run_demo(video, ckpt, None, tmp_path / "o.json", device="cpu")
    assert len(doc["frames"]) == 4 and seen and all(seen)
