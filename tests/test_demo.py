"""Video demo: PyAV reading/writing, frame windows, drawing, per-frame JSON, and clear errors."""

from __future__ import annotations

import json
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch

from glsmamba.cli import main
from glsmamba.vhpe.dataset import clip_indices
from glsmamba.vhpe.skeleton import POSETRACK15

av = pytest.importorskip("av", reason="PyAV (the optional extra 'video') is not installed")

from glsmamba.vhpe.demo import draw_poses, load_boxes  # noqa: E402
from glsmamba.vhpe.video import VideoError, VideoReader, check_fps, video_info, write_video  # noqa: E402

FPS = Fraction(25, 2)  # a non-integer rate: the demo must keep it, not round it or assume 25
N_FRAMES = 7


@pytest.fixture(autouse=True)
def _restore_threads():
    # the commands run here with --threads 1 (tiny tensors: on a shared 2-core machine intra-op threads only add
    # contention) and that setting is process-wide: restore it for the tests that follow
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from glsmamba.vhpe.synth import SynthConfig, render_video

    tmp = tmp_path_factory.mktemp("demo")
    images, _ = render_video(1, N_FRAMES, seed=4, cfg=SynthConfig(width=96, height=72))
    video = write_video(tmp / "clip.mp4", [np.asarray(im) for im in images], FPS)
    from glsmamba import model
    net = model.GLSMamba("tiny", num_frames=3, image_size=(32, 24))
    model.save(net, tmp / "tiny.pth")
    return tmp, video, tmp / "tiny.pth"


def test_demo_keeps_frame_count_and_fps_and_writes_one_entry_per_frame(clip, tmp_path, capsys):
    tmp, video, ckpt = clip
    assert video_info(video) == {"fps": FPS, "width": 96, "height": 72, "frames": N_FRAMES}
    out, js = tmp_path / "out.mp4", tmp_path / "out.json"
    assert main(["demo", str(video), "--checkpoint", str(ckpt), "--out", str(out), "--json", str(js),
                 "--threads", "1"]) == 0
    assert f"{N_FRAMES} frames at 12.5 fps" in capsys.readouterr().out
    assert video_info(out) == {"fps": FPS, "width": 96, "height": 72, "frames": N_FRAMES}
    doc = json.loads(js.read_text())
    assert doc["num_frames"] == N_FRAMES and doc["fps"] == 12.5 and doc["fps_fraction"] == "25/2"
    assert doc["boxes"] == "whole frame" and doc["clip_frames"] == 3
    assert [f["frame_id"] for f in doc["frames"]] == list(range(N_FRAMES))
    assert doc["frames"][2]["time_s"] == pytest.approx(2 / 12.5)
    for f in doc["frames"]:
        (inst,) = f["instances"]  # no boxes given: the whole frame is one person
        assert inst["bbox"] == [0.0, 0.0, 96.0, 72.0] and inst["bbox_score"] == 1.0
        assert np.shape(inst["keypoints"]) == (15, 2) and np.shape(inst["keypoint_scores"]) == (15,)
    assert doc["keypoint_names"] == list(POSETRACK15.joints)


def test_demo_windows_are_clamped_around_each_frame(clip, tmp_path, monkeypatch):
    """The model sees frames clip_indices(t, T, n) for key frame t (recorded through the crop function)."""
    from glsmamba.vhpe import infer
    from glsmamba.vhpe.demo import run_demo

    tmp, video, ckpt = clip
    with VideoReader(video) as v:
        means = [float(f.mean()) for f in v]
    assert len(set(means)) == N_FRAMES  # frames are distinguishable by their mean
    seen = []
    real = infer.crop_clip

    def spy(images, box, size):
        seen.append([means.index(float(im.mean())) for im in images])
        return real(images, box, size)

    monkeypatch.setattr(infer, "crop_clip", spy)
    doc = run_demo(video, ckpt, None, tmp_path / "o.json", batch_size=2)
    assert seen == [clip_indices(t, 3, N_FRAMES) for t in range(N_FRAMES)]
    assert seen[0] == [0, 0, 1] and seen[-1] == [5, 6, 6]
    assert len(doc["frames"]) == N_FRAMES


def test_demo_with_boxes_file(clip, tmp_path):
    from glsmamba.vhpe.demo import run_demo

    tmp, video, ckpt = clip
    boxes = [{"image_id": 0, "category_id": 1, "bbox": [10, 5, 30, 60], "score": 0.9},
             {"image_id": 0, "category_id": 1, "bbox": [50, 5, 30, 60], "score": 0.8},
             {"image_id": 3, "category_id": 1, "bbox": [20, 10, 30, 50], "score": 0.7}]
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    doc = run_demo(video, ckpt, tmp_path / "o.mp4", tmp_path / "o.json", boxes=tmp_path / "boxes.json")
    assert [len(f["instances"]) for f in doc["frames"]] == [2, 0, 0, 1, 0, 0, 0]
    assert doc["frames"][3]["instances"][0]["bbox"] == [20.0, 10.0, 30.0, 50.0]
    assert doc["frames"][0]["instances"][1]["bbox_score"] == 0.8
    assert video_info(tmp_path / "o.mp4")["frames"] == N_FRAMES
    # the demo's own JSON is a valid boxes file too, and so is {frame_index: [[x, y, w, h, score]]}
    assert {k: len(v) for k, v in load_boxes(tmp_path / "o.json").items()} == {0: 2, 3: 1}
    (tmp_path / "map.json").write_text(json.dumps({"4": [[1, 2, 3, 4, 0.5]]}))
    got = load_boxes(tmp_path / "map.json")
    assert list(got) == [4] and got[4][0][1] == 0.5 and list(got[4][0][0]) == [1, 2, 3, 4]
    (tmp_path / "bad.json").write_text(json.dumps({"frame_a": [[1, 2, 3, 4]]}))
    with pytest.raises(ValueError, match="'frame_a' is not a frame index"):
        load_boxes(tmp_path / "bad.json")


def test_draw_poses_draws_joints_limbs_and_box():
    img = np.zeros((60, 80, 3), dtype=np.uint8)
    kp = np.array([[10.0 + 4 * j, 30.0] for j in range(15)])
    inst = {"bbox": [2, 2, 70, 50], "keypoints": kp, "keypoint_scores": np.ones(15)}
    out = draw_poses(img, [inst])
    assert out.shape == img.shape and not np.shares_memory(out, img) and img.max() == 0
    assert tuple(out[2, 30]) == (0, 255, 0)  # top edge of the box
    colors = POSETRACK15.joint_colors()
    assert tuple(out[30, 10]) == tuple(colors[0])  # nose marker (drawn last, on top)
    low = dict(inst, keypoint_scores=np.zeros(15))
    blank = draw_poses(img, [low])
    assert blank[30, 10].max() == 0 and tuple(blank[2, 30]) == (0, 255, 0)  # box only


def test_demo_errors_are_clear(clip, tmp_path, capsys):
    tmp, video, ckpt = clip
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    assert main(["demo", str(bad), "--checkpoint", str(ckpt), "--json", str(tmp_path / "x.json")]) == 1
    err = capsys.readouterr().err
    assert "broken.mp4" in err and "cannot open as a video" in err
    assert main(["demo", str(tmp_path / "nope.mp4"), "--checkpoint", str(ckpt), "--json", "x.json"]) == 1
    assert "video not found" in capsys.readouterr().err
    assert main(["demo", str(video), "--checkpoint", str(ckpt)]) == 2
    assert "nothing to write" in capsys.readouterr().err
    for rate in (0, None, Fraction(0, 1)):
        with pytest.raises(VideoError, match=r"v\.mp4: the video reports a frame rate of"):
            check_fps(rate, "v.mp4")
    assert check_fps(Fraction(30000, 1001), "v.mp4") == Fraction(30000, 1001)
    with pytest.raises(VideoError, match="frame rate"):
        write_video(tmp_path / "z.mp4", [np.zeros((8, 8, 3), np.uint8)], 0)


def test_missing_pyav_gives_install_hint(clip, monkeypatch, capsys):
    tmp, video, ckpt = clip
    monkeypatch.setitem(sys.modules, "av", None)  # import av -> ImportError
    assert main(["demo", str(video), "--checkpoint", str(ckpt), "--json", str(tmp / "y.json")]) == 1
    assert "pip install 'glsmamba[video]'" in capsys.readouterr().err


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_demo_refuses_a_still_image(clip, tmp_path, capsys, ext):
    """A still image has no frame rate of its own (FFmpeg reads it as 1 frame at a made-up 25 fps): refused."""
    from PIL import Image

    tmp, video, ckpt = clip
    image = tmp_path / f"photo.{ext}"
    Image.fromarray(np.full((72, 96, 3), 128, np.uint8)).save(image)
    assert main(["demo", str(image), "--checkpoint", str(ckpt), "--json", str(tmp_path / "p.json")]) == 1
    err = capsys.readouterr().err
    assert f"{image}: a still image" in err and "not a video" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.json").exists()
    with pytest.raises(VideoError, match="still image"):
        VideoReader(image)
    with VideoReader(video) as v:  # a real video still opens
        assert v.fps == FPS
