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
from tests.harness import STREAMING_ATOL, assert_close

SIZES = Sizes(1, 2, 3, 4, channels=4, dstate=2, length=11, window=(2, 3), offset_groups=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


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


# ---------------------------------------------------------------------------------------------- streaming
def _dataset(data):
    from glsmamba.vhpe.dataset import PoseTrackClipDataset

    return PoseTrackClipDataset(data, split="val", num_frames=3, input_size=(24, 32))


@pytest.mark.parametrize("flip", [False, True], ids=["plain", "flip"])
def test_streaming_key_box_equals_batched_clips(data, ckpt, flip):
    """eval --checkpoint's streaming path (features cached per frame crop) gives the batched clips' predictions."""
    from glsmamba.vhpe.infer import load_model, predict_dataset, predict_dataset_streaming

    net = load_model(ckpt)
    ds = _dataset(data)
    want = predict_dataset(net, ds, batch_size=4, flip=flip)
    got = predict_dataset_streaming(net, ds, batch_size=3, flip=flip)
    assert len(ds) > 3
    for name in ("image_ids", "track_ids", "box_scores"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert np.abs(got.keypoints - want.keypoints).max() <= STREAMING_ATOL
    assert np.abs(got.scores - want.scores).max() <= STREAMING_ATOL


def _moving_boxes(frames: int, people: int = 2) -> list[list[tuple]]:
    return [[(np.array([4.0 + 20 * p + t, 6.0 + 0.5 * t, 20.0, 30.0]), 0.9, p) for p in range(people)]
            for t in range(frames)]


def _run_stream(net, frames, boxes, **kw):
    from glsmamba.vhpe.infer import StreamingPredictor

    stream = StreamingPredictor(net, batch_size=3, **kw)
    out, cached = [], 0
    for f, b in zip(frames, boxes, strict=True):
        out += stream.push(f, b)
        cached = max(cached, len(stream._feats))
    out += stream.finish()
    return stream, out, cached


def test_streaming_predictor_api_matches_crop_clip(ckpt):
    """StreamingPredictor(model).push(frame, boxes): every frame out once, in order, the key-box default equal to
    cropping each clip with crop_clip and running the whole network; bounded feature cache."""
    from glsmamba.vhpe.codec import keypoints_from_heatmaps
    from glsmamba.vhpe.dataset import clip_indices
    from glsmamba.vhpe.infer import crop_clip, load_model, predict_heatmaps

    net = load_model(ckpt)
    rng = np.random.default_rng(0)
    n = 9
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]
    boxes = _moving_boxes(n)
    stream, out, cached = _run_stream(net, frames, boxes)
    assert [r.index for r in out] == list(range(n))
    assert cached <= 2 * 2 * 3  # people x (window + the frames of the batch being filled)
    for t in (0, 4, n - 1):
        for p, inst in enumerate(out[t].instances):
            clip, c, s = crop_clip([frames[i] for i in clip_indices(t, 3, n)], boxes[t][p][0], (24, 32))
            heat = predict_heatmaps(net, torch.from_numpy(clip)[None]).numpy()
            kp, sc = keypoints_from_heatmaps(heat, c[None], s[None])
            assert np.abs(inst["keypoints"] - kp[0]).max() <= STREAMING_ATOL
            assert np.abs(inst["keypoint_scores"] - sc[0]).max() <= STREAMING_ATOL
    # moving boxes: the key-box mode encodes a crop per clip frame (windows clamped at the ends share some)
    assert stream.encoded == sum(len(set(clip_indices(t, 3, n))) for t in range(n)) * 2


@pytest.mark.parametrize("with_ids", [True, False], ids=["track-ids", "iou-linked"])
def test_tube_mode_encodes_every_frame_of_a_track_once(ckpt, with_ids):
    from glsmamba.vhpe.infer import load_model

    net = load_model(ckpt)
    rng = np.random.default_rng(1)
    n = 10
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]
    boxes = _moving_boxes(n)
    if not with_ids:
        boxes = [[b[:2] for b in frame] for frame in boxes]
    stream, out, _ = _run_stream(net, frames, boxes, box_mode="tube")
    assert [len(r.instances) for r in out] == [2] * n
    assert stream.encoded == 2 * n
    for r in out:  # instances in push order, each with its own box; keypoints in the image's neighbourhood
        assert [list(i["bbox"]) for i in r.instances] == [list(b[0]) for b in boxes[r.index]]
        assert all(np.isfinite(i["keypoints"]).all() for i in r.instances)


def test_tube_mode_with_fixed_boxes_is_the_key_box_mode(ckpt):
    from glsmamba.vhpe.infer import load_model

    net = load_model(ckpt)
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(7)]
    boxes = [[(np.array([10.0, 8.0, 24.0, 32.0]), 1.0, 0)] for _ in frames]
    key, out_key, _ = _run_stream(net, frames, boxes)
    tube, out_tube, _ = _run_stream(net, frames, boxes, box_mode="tube")
    assert key.encoded == tube.encoded == 7
    for a, b in zip(out_key, out_tube, strict=True):
        np.testing.assert_array_equal(a.instances[0]["keypoints"], b.instances[0]["keypoints"])


def test_demo_without_boxes_encodes_each_frame_once(tmp_path, monkeypatch):
    """50 frames, T = 5, no --boxes: the encoder runs on 50 crops (counted at GLSMamba.encode), not 250."""
    pytest.importorskip("av", reason="PyAV (the optional extra 'video') is not installed")
    from glsmamba.vhpe.demo import run_demo
    from glsmamba.vhpe.video import write_video

    ck = tmp_path / "tiny5.pth"
    model.save(model.GLSMamba("tiny", image_size=(32, 24)), ck)
    rng = np.random.default_rng(3)
    video = write_video(tmp_path / "v.mp4", [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(50)],
                        25)
    crops = []
    real = model.GLSMamba.encode

    def spy(self, frames):
        crops.append(frames.shape[0])
        return real(self, frames)

    monkeypatch.setattr(model.GLSMamba, "encode", spy)
    doc = run_demo(video, ck, None, tmp_path / "o.json", device="cpu")
    assert doc["num_frames"] == 50 and doc["clip_frames"] == 5
    assert sum(crops) == 50 and doc["encoded_crops"] == 50
    crops.clear()  # without the cache: every crop of every clip, as before it
    before = run_demo(video, ck, None, tmp_path / "b.json", device="cpu", feature_cache=False)
    assert sum(crops) == 250 and before["encoded_crops"] == 250
    for a, b in zip(doc["frames"], before["frames"], strict=True):
        assert np.abs(np.subtract(a["instances"][0]["keypoints"], b["instances"][0]["keypoints"])).max() <= 0.01


# ---------------------------------------------------------------------------------------------- precision
def test_precision_bf16_runs_under_cpu_autocast_and_is_recorded(data, ckpt, tmp_path, monkeypatch):
    import json

    from glsmamba.vhpe.infer import evaluate_checkpoint

    seen = []
    real = model.GLSMamba.forward_features

    def spy(self, feats):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(self, feats)

    monkeypatch.setattr(model.GLSMamba, "forward_features", spy)
    res = evaluate_checkpoint(ckpt, data, device="cpu", precision="bf16", batch_size=4)
    assert seen and all(s == (True, torch.bfloat16) for s in seen)
    doc = json.loads((ckpt.parent / "eval-val-gt-bf16" / "results.json").read_text())
    assert doc["precision"] == "bf16" == res["precision"] and doc["box_mode"] == "key"
    assert 0.0 <= doc["metrics"]["Total"] <= 100.0


def test_fp16_on_cpu_is_refused(data, ckpt, capsys):
    from glsmamba.cli import main

    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--device", "cpu",
                 "--precision", "fp16"]) == 1
    err = capsys.readouterr().err
    assert "precision fp16 needs a CUDA device" in err and "bf16" in err
    assert main(["demo", "v.mp4", "--checkpoint", str(ckpt), "--json", "o.json", "--device", "cpu",
                 "--precision", "fp16"]) == 1
    assert "precision fp16 needs a CUDA device" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- export
LOAD_AND_RUN = """
import sys, torch
ep = torch.export.load(sys.argv[1])
outs = [ep.module()(x) for x in torch.load(sys.argv[2])]
torch.save(outs, sys.argv[3])
assert not [m for m in sys.modules if m.split(".")[0] == "glsmamba"], "the program needed glsmamba"
"""


def test_export_round_trip_runs_without_the_package(tmp_path, capsys):
    """glsmamba export writes a .pt2 that torch.export.load runs in a fresh interpreter that never imports glsmamba;
    its heatmaps equal the eager model's (fp32 tolerance), at two batch sizes (--dynamic-batch)."""
    import subprocess
    import sys

    from glsmamba.cli import main
    from glsmamba.model.export import load_program
    from glsmamba.vhpe.infer import load_model

    ckpt = tmp_path / "tiny-small.pth"  # the tiny preset with one block of each kind (keeps CI fast)
    model.save(model.GLSMamba("tiny", num_frames=3, image_size=(16, 12), num_gsm=1, num_lrm=1), ckpt)
    out = tmp_path / "tiny.pt2"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--dynamic-batch", "--threads", "1"]) == 0
    assert f"-> {out}" in capsys.readouterr().out
    _, meta = load_program(out)
    assert meta["input"] == "frames" and meta["input_shape"] == [None, 3, 3, 16, 12] and meta["backend"] == "reference"
    xs = [torch.randn(1, 3, 3, 16, 12), torch.randn(2, 3, 3, 16, 12)]
    torch.save(xs, tmp_path / "x.pt")
    subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(out), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                   check=True, env={"PATH": "", "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    net = load_model(ckpt)
    with torch.no_grad():
        for x, y in zip(xs, torch.load(tmp_path / "y.pt"), strict=True):
            assert_close("exported heatmaps", net(x), y, torch.float32)


def test_export_errors(tmp_path, capsys):
    from glsmamba.cli import build_parser, main

    assert "export" in build_parser().format_help()
    assert main(["export", "--checkpoint", str(tmp_path / "none.pth"), "--out", str(tmp_path / "m.pt2")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_streaming_refuses_a_frame_stride(data, ckpt):
    from glsmamba.vhpe.dataset import PoseTrackClipDataset
    from glsmamba.vhpe.infer import load_model, predict_dataset_streaming

    ds = PoseTrackClipDataset(data, split="val", num_frames=3, input_size=(24, 32), frame_stride=2)
    with pytest.raises(ValueError, match="frame_stride must be 1, got 2"):
        predict_dataset_streaming(load_model(ckpt), ds)


@pytest.mark.parametrize("command", ["demo", "eval"])
@pytest.mark.parametrize("quiet", [False, True])
def test_progress_on_a_terminal_unless_quiet(command, quiet, tmp_path, monkeypatch):
    """eval --checkpoint and demo show their progress line on a terminal (stderr a TTY), never with --quiet, and
    never when stderr is not a terminal."""
    import sys

    import glsmamba.vhpe.demo as demo_mod
    import glsmamba.vhpe.infer as infer_mod
    from glsmamba.cli import main

    seen = []

    def fake(*args, **kwargs):
        seen.append(kwargs["progress"])
        raise ValueError("stop here")  # the command reports it and exits 1: nothing else runs

    monkeypatch.setattr(demo_mod, "run_demo", fake)
    monkeypatch.setattr(infer_mod, "evaluate_checkpoint", fake)
    ck = str(tmp_path / "c.pth")
    argv = (["demo", str(tmp_path / "v.mp4"), "--checkpoint", ck, "--json", str(tmp_path / "o.json")]
            if command == "demo" else ["eval", "--checkpoint", ck, "--data", str(tmp_path)])
    for tty in (True, False):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty, raising=False)
        assert main(argv + (["--quiet"] if quiet else [])) == 1
    assert seen == [not quiet, False]


def _export_triton_small():
    from glsmamba.model.export import export_network

    torch.manual_seed(0)
    net = model.GLSMamba("tiny", num_frames=3, image_size=(16, 12), num_gsm=1, num_lrm=1, backend="triton").eval()
    return net, export_network(net, batch=1, image_size=(16, 12))


def test_export_on_the_triton_backend_keeps_the_kernels_as_custom_ops():
    """torch.export on the Triton backend: the kernels stay in the program as the registered custom ops
    (``glsmamba::*``; traced with fake tensors, no kernel runs)."""
    _, ep = _export_triton_small()
    custom = {str(n.target).split(".")[1] for n in ep.graph.nodes if str(n.target).startswith("glsmamba.")}
    assert {"ordered_scan_fwd", "deformable_fwd"} <= custom, custom


@pytest.mark.slow  # runs the network twice through the Triton interpreter: minutes on 2 shared cores
def test_export_on_the_triton_backend_computes_the_eager_heatmaps():
    net, ep = _export_triton_small()
    x = torch.randn(1, 3, 3, 16, 12)
    with torch.no_grad():
        assert_close("exported heatmaps (triton)", net(x), ep.module()(x), torch.float32)
