"""Pose tracking: OKS matching, the IoU fallback, track ages, new ids, crossing synthetic figures with an
occlusion, and the track ids of the eval predictions and the demo overlay."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from glsmamba.vhpe.skeleton import POSETRACK15
from glsmamba.vhpe.tracking import TRACK_PALETTE, PoseTracker, box_iou, track_clips, track_color

J = POSETRACK15.num_joints


def person(x: float, y: float = 50.0, h: float = 100.0) -> np.ndarray:
    """A fixed upright pose ``(15, 2)`` of height ``h`` with its top-left near ``(x, y)``."""
    rel = np.array([[0.5, 0.1], [0.5, 0.2], [0.5, 0.0], [0.3, 0.25], [0.7, 0.25], [0.2, 0.4], [0.8, 0.4],
                    [0.15, 0.55], [0.85, 0.55], [0.35, 0.55], [0.65, 0.55], [0.35, 0.75], [0.65, 0.75],
                    [0.35, 1.0], [0.65, 1.0]])
    return np.array([x, y]) + rel * np.array([0.5 * h, h])


def box_of(kp: np.ndarray, pad: float = 4.0) -> np.ndarray:
    lo, hi = kp.min(axis=0) - pad, kp.max(axis=0) + pad
    return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]])


def frame(*poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    kp = np.stack(poses) if poses else np.zeros((0, J, 2))
    return kp, np.stack([box_of(p) for p in poses]) if poses else np.zeros((0, 4))


def oks_by_hand(shift: float, area: float, sigmas=POSETRACK15.sigmas) -> float:
    """OKS of a pose moved rigidly by ``shift`` pixels: mean over joints of exp(-d^2 / (2 area (2 sigma)^2))."""
    k2 = (2 * np.asarray(sigmas)) ** 2
    return float(np.mean(np.exp(-(shift**2) / (2 * area * k2))))


# ------------------------------------------------------------------------------------------------ matching
def test_poses_keep_their_ids_when_the_order_changes():
    tr = PoseTracker(motion=False)
    a, b = person(10), person(150)
    assert tr.update(*frame(a, b)) == [0, 1]
    assert tr.update(*frame(b + 2, a - 1)) == [1, 0]  # listed in the other order, moved a little
    assert tr.update(*frame(a)) == [0]


def test_oks_threshold_decides_a_match():
    """A rigid shift whose OKS (computed here by hand with the track's box area) is above the threshold keeps the
    id; one below it starts a new track."""
    a = person(50)
    area = float(np.prod(box_of(a)[2:]))
    near, far = 3.0, 12.0
    thr = 0.5 * (oks_by_hand(near, area) + oks_by_hand(far, area))
    assert oks_by_hand(near, area) > thr > oks_by_hand(far, area)
    tr = PoseTracker(motion=False, oks_threshold=thr)
    assert tr.update(*frame(a)) == [0]
    assert tr.update(*frame(a + [near, 0])) == [0]
    tr = PoseTracker(motion=False, oks_threshold=thr)
    tr.update(*frame(a))
    assert tr.update(*frame(a + [far, 0])) == [1]


def test_the_best_oks_wins_and_ties_go_to_the_lower_track_id():
    tr = PoseTracker(motion=False, oks_threshold=0.1)
    a, b = person(0), person(30)  # two overlapping tracks
    assert tr.update(*frame(a, b)) == [0, 1]
    assert tr.update(*frame(a + [26, 0])) == [1]  # nearer to track 1's pose
    tr = PoseTracker(motion=False, oks_threshold=0.1)
    tr.update(*frame(a, b))
    assert tr.update(*frame(a + [15, 0])) == [0]  # exactly between: the lower id


def test_iou_fallback_when_keypoints_are_unconfident():
    """Joint scores below kpt_thr: the (random) keypoints are ignored and the boxes decide."""
    rng = np.random.default_rng(0)
    low = np.full((1, J), 0.1)
    box = np.array([[10.0, 10.0, 50.0, 100.0]])
    tr = PoseTracker(motion=False, kpt_thr=0.3, iou_threshold=0.5)
    assert tr.update(rng.uniform(0, 200, (1, J, 2)), box, low) == [0]
    moved = box + [[5, 0, 0, 0]]  # IoU 45*100 / (2 * 5000 - 4500) = 0.82
    assert box_iou(box[0], moved[0]) == pytest.approx(4500 / 5500)
    assert tr.update(rng.uniform(0, 200, (1, J, 2)), moved, low) == [0]
    apart = moved + [[40, 0, 0, 0]]  # IoU 5 * 100 / 9500 < 0.5
    assert tr.update(rng.uniform(0, 200, (1, J, 2)), apart, low) == [1]


def test_too_few_common_confident_joints_fall_back_to_iou_and_a_confident_pose_overrides_the_box():
    a = person(50)
    sc = np.zeros((1, J))
    sc[0, :3] = 1.0  # three confident joints < min_keypoints = 4: the box decides, even with a wrong pose
    tr = PoseTracker(motion=False, min_keypoints=4)
    tr.update(a[None], box_of(a)[None], sc)
    assert tr.update((a + 60)[None], box_of(a)[None], sc) == [0]
    # all joints confident: the pose decides; a pose far from the track's is a new person even in the same box
    tr = PoseTracker(motion=False)
    tr.update(a[None], box_of(a)[None])
    assert tr.update((a + [0, 40])[None], box_of(a)[None]) == [1]


def test_max_age_expiry_and_re_match():
    a = person(50)
    for max_age in (0, 2, 5):
        tr = PoseTracker(max_age=max_age)
        tr.update(*frame(a))
        for _ in range(max_age):  # missed max_age frames: still live
            assert tr.update(*frame()) == []
        assert tr.update(*frame(a)) == [0]
        for _ in range(max_age + 1):  # one frame more: dropped
            tr.update(*frame())
        assert tr.update(*frame(a)) == [1]


def test_new_ids_are_consecutive_and_never_reused():
    tr = PoseTracker(max_age=0, motion=False)
    a, b, c = person(0), person(120), person(240)
    assert tr.update(*frame(a)) == [0]
    assert tr.update(*frame(a, b)) == [0, 1]
    assert tr.update(*frame(b)) == [1]  # track 0 unmatched once: with max_age 0 it is gone
    assert tr.update(*frame(c, a, b)) == [2, 3, 1]  # the returning person gets a fresh id
    assert tr.next_id == 4


def test_tracker_is_deterministic_and_checks_its_inputs():
    rng = np.random.default_rng(1)
    seq = [(rng.uniform(0, 300, (3, J, 2)), rng.uniform(0, 1, (3, J))) for _ in range(6)]
    runs = []
    for _ in range(2):
        tr = PoseTracker(oks_threshold=0.2)
        runs.append([tr.update(kp, None, sc) for kp, sc in seq])
    assert runs[0] == runs[1]
    tr = PoseTracker()
    with pytest.raises(ValueError, match=r"poses must have shape \(N, 15, 2\), got \(2, 17, 2\)"):
        tr.update(np.zeros((2, 17, 2)))
    with pytest.raises(ValueError, match=r"boxes must have shape \(1, 4\)"):
        tr.update(np.zeros((1, J, 2)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"scores must have shape \(1, 15\)"):
        tr.update(np.zeros((1, J, 2)), None, np.zeros(J))
    with pytest.raises(ValueError, match="finite"):
        tr.update(np.full((1, J, 2), np.nan))
    for kw, name in (({"max_age": -1}, "max_age"), ({"oks_threshold": 1.5}, "oks_threshold"),
                     ({"min_keypoints": 0}, "min_keypoints"), ({"sigmas": [0.1, -1.0]}, "sigmas")):
        with pytest.raises(ValueError, match=name):
            PoseTracker(**kw)
    assert tr.step == -1  # rejected input does not advance the tracker


# ------------------------------------------------------------------------------------------------ synthetic video
def _crossing_video(frames: int, speed: float, seed: int):
    """Two synthetic figures (vhpe.synth's articulated figure model, same size) walking towards each other along
    nearly the same line and crossing at the middle frame; ``(frames, 2, 15, 2)`` joints."""
    from glsmamba.vhpe.synth import SynthConfig, _make_figure, _pose

    cfg = SynthConfig(width=256, height=192)
    rng = np.random.default_rng(seed)
    mid = frames // 2
    figs = [_make_figure(rng, cfg, i, 2, frames) for i in range(2)]
    figs = [dataclasses.replace(figs[0], x=lambda t: 128 + speed * (t - mid), y=lambda t: 100.0, size=lambda t: 120.0),
            dataclasses.replace(figs[1], x=lambda t: 128 - speed * (t - mid), y=lambda t: 96.0, size=lambda t: 120.0)]
    return np.stack([np.stack([_pose(f, t)[0] for f in figs]) for t in range(frames)])


@pytest.mark.parametrize("seed", range(6))
def test_two_crossing_figures_keep_their_ids_through_the_crossing_and_an_occlusion(seed):
    """Ground-truth poses with noise (joints +-1.5 px, boxes jittered, a few unconfident joints); the figure behind
    is not detected for the 2 frames of the crossing (hidden by the other). Both keep their ids throughout."""
    frames, speed, hidden = 40, 6.0, (20, 21)
    joints = _crossing_video(frames, speed, seed)
    assert abs(joints[20, 0, :, 0].mean() - joints[20, 1, :, 0].mean()) < 10  # they do cross at frame 20
    rng = np.random.default_rng(100 + seed)
    tr = PoseTracker(max_age=3)
    ids_of = {}
    for t in range(frames):
        who = [0] if t in hidden else [0, 1]
        kp = joints[t, who] + rng.normal(0, 1.5, (len(who), J, 2))
        sc = rng.uniform(0.5, 1.0, (len(who), J))
        sc[rng.random(sc.shape) < 0.1] = 0.05
        boxes = np.stack([box_of(k, pad=5 + rng.uniform(-2, 2)) for k in kp])
        ids = tr.update(kp, boxes, sc)
        for w, i in zip(who, ids, strict=True):
            assert ids_of.setdefault(w, i) == i, f"figure {w} changed id at frame {t}"
    assert sorted(ids_of.values()) == [0, 1] and tr.next_id == 2


def test_a_track_lost_longer_than_max_age_gets_a_new_id_in_the_crossing_video():
    """The same video with max_age 1 < the 2 hidden frames: the hidden figure comes back under a new id (so the
    test above does exercise the age limit)."""
    joints = _crossing_video(40, 6.0, 0)
    tr = PoseTracker(max_age=1)
    last = None
    for t in range(40):
        who = [0] if t in (20, 21) else [0, 1]
        last = tr.update(joints[t, who], None, None)
    assert last == [0, 2]


# ------------------------------------------------------------------------------------------------ videos of clips
def test_track_clips_tracks_each_video_and_ages_tracks_over_frames_without_rows():
    a, b = person(0), person(150)
    # video 7: a and b over frames 0..2, rows shuffled; video 3: a alone at frames 0 and 4
    rows = [(7, 2, b), (3, 0, a), (7, 0, a), (7, 1, b), (7, 0, b), (7, 2, a + 1), (3, 4, a), (7, 1, a)]
    vid, fr, kp = [r[0] for r in rows], [r[1] for r in rows], np.stack([r[2] for r in rows])
    sc, boxes = np.ones((len(rows), J)), np.stack([box_of(k) for k in kp])
    ids = track_clips(vid, fr, kp, sc, boxes, max_age=2)
    by = {(v, f, int(k[0, 0] > 100)): i for v, f, k, i in zip(vid, fr, kp, ids, strict=True)}
    assert {by[(7, f, 0)] for f in range(3)} == {0} and {by[(7, f, 1)] for f in range(3)} == {1}
    assert by[(3, 0, 0)] == 0 and by[(3, 4, 0)] == 0  # frames 1..3 of video 3 were not stepped through
    # stepping through every frame of video 3 ages the track past max_age = 2
    ids = track_clips(vid, fr, kp, sc, boxes, frames={3: range(5)}, max_age=2)
    assert ids[vid.index(3)] == 0 and ids[fr.index(4)] == 1
    with pytest.raises(ValueError, match="same N"):
        track_clips(vid, fr[:-1], kp, sc, boxes)


def test_eval_predictions_carry_tracker_ids_with_detection_boxes(tmp_path):
    """evaluate_model with detection boxes (no GT identities): the PoseTrack18 files carry track ids that follow
    the GT people (a stand-in network predicts nothing confident, so the tracker matches the boxes); with GT boxes
    the GT ids are kept."""
    import json

    from glsmamba.vhpe.dataset import PoseTrackClipDataset
    from glsmamba.vhpe.formats import read_videos
    from glsmamba.vhpe.infer import evaluate_model
    from glsmamba.vhpe.synth import SynthConfig, make_dataset

    root = tmp_path / "data"
    make_dataset(root, videos=2, frames=6, seed=2, val_videos=1, cfg=SynthConfig(width=96, height=72, persons=(2, 2),
                                                                                     occluder_prob=0.0))
    (video,) = read_videos(root / "annotations" / "val")
    # people listed in reverse order on odd frames: numbering each frame's boxes 0, 1, ... would not follow them
    order = [p for i, f in enumerate(video.frames) for p in (f.people[::-1] if i % 2 else f.people)]
    dets = [{"image_id": f.id, "category_id": 1, "bbox": list(map(float, p.bbox)), "score": 0.9}
            for i, f in enumerate(video.frames) for p in (f.people[::-1] if i % 2 else f.people)]
    gt_track = [p.track_id for p in order]
    (tmp_path / "dets.json").write_text(json.dumps(dets))

    class Blank(torch.nn.Module):  # flat heatmaps: every joint score 0, below the tracker's kpt_thr
        def forward(self, x):
            return torch.zeros(x.shape[0], J, x.shape[-2] // 4, x.shape[-1] // 4)

    for boxes, expect in ((str(tmp_path / "dets.json"), "tracker"), ("gt", "gt")):
        ds = PoseTrackClipDataset(root, split="val", num_frames=3, boxes=boxes, input_size=(32, 24))
        res = evaluate_model(Blank(), ds, batch_size=8, pred_dir=tmp_path / expect)
        assert res["tracks"] == expect
        (pred,) = read_videos(tmp_path / expect)
        got = [p.track_id for f in pred.frames for p in f.people]
        truth = gt_track if expect == "tracker" else [p.track_id for f in video.frames for p in f.people]
        assert len(got) == len(truth) == 2 * len(video.frames)
        if expect == "gt":
            assert got == truth
        pairs = set(zip(truth, got, strict=True))
        assert len(pairs) == 2 and len({g for g, _ in pairs}) == len({p for _, p in pairs}) == 2  # a bijection


# ------------------------------------------------------------------------------------------------ drawing
def test_track_colours_are_stable_and_distinct():
    assert len(set(TRACK_PALETTE)) == len(TRACK_PALETTE) == 24
    assert track_color(3) == track_color(3 + 24) == TRACK_PALETTE[3] and track_color(0) != track_color(1)
    assert track_color(-1) == track_color(None) == (0, 255, 0)


def test_draw_poses_colours_each_track():
    from glsmamba.vhpe.demo import draw_poses

    img = np.zeros((80, 160, 3), dtype=np.uint8)
    kp = person(10, 10, 60)  # hips at (20.5, 43) and (29.5, 43)
    insts = [{"bbox": [2, 2, 70, 70], "keypoints": kp, "keypoint_scores": np.ones(J), "track_id": 5},
             {"bbox": [82, 2, 70, 70], "keypoints": kp + [80, 0], "keypoint_scores": np.ones(J), "track_id": 6}]
    out = draw_poses(img, insts)
    assert tuple(out[2, 40]) == TRACK_PALETTE[5] and tuple(out[2, 120]) == TRACK_PALETTE[6]  # top box edges
    assert tuple(out[72, 40]) == TRACK_PALETTE[5]  # bottom edge
    assert tuple(out[43, 25]) == TRACK_PALETTE[5] and tuple(out[43, 105]) == TRACK_PALETTE[6]  # hip-hip limbs
    untracked = draw_poses(img, [{k: v for k, v in insts[0].items() if k != "track_id"}])
    assert tuple(untracked[2, 40]) == (0, 255, 0)  # no track: the green box and side-coloured limbs as before
    assert tuple(untracked[43, 25]) == tuple(POSETRACK15.edge_colors[POSETRACK15.edges.index((9, 10))])
    again = draw_poses(img, [dict(insts[1], bbox=[2, 2, 70, 70], keypoints=kp)])  # same id elsewhere: same colour
    assert tuple(again[2, 40]) == TRACK_PALETTE[6]
