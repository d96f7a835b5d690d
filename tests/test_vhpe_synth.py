"""Synthetic data, the clip dataset, the prediction writer and the synth -> eval acceptance run."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from glsmamba.cli import main
from glsmamba.vhpe.codec import decode_heatmaps, heatmap_to_image, keypoints_from_heatmaps
from glsmamba.vhpe.dataset import PoseTrackClipDataset, clip_indices, write_posetrack_predictions
from glsmamba.vhpe.formats import read_videos, write_posetrack18
from glsmamba.vhpe.metrics import evaluate_posetrack
from glsmamba.vhpe.skeleton import POSETRACK15, SLOTS_15
from glsmamba.vhpe.synth import JOINT_MARKER_COLORS, SynthConfig, make_dataset, render_video
from glsmamba.vhpe.transforms import Augment


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    split = make_dataset(root, videos=3, frames=6, seed=7, cfg=SynthConfig(ext="png", occluder_prob=1.0))
    assert split == {"train": ["000001_mpii_train", "000002_mpii_train"], "val": ["000003_mpii_val"]}
    return root


# ----------------------------------------------------------------------------------------------- synth
def test_synth_layout_and_ground_truth(synth_root):
    videos = read_videos(synth_root / "annotations" / "train")
    assert [v.name for v in videos] == ["000001_mpii_train", "000002_mpii_train"]
    n_occluded = 0
    for v in videos:
        assert len(v.frames) == 6
        for t, f in enumerate(v.frames):
            assert f.file_name == f"images/train/{v.name}/{t:06d}.png"
            assert (synth_root / f.file_name).is_file()
            assert f.id == f.frame_id == 10_000_000_000 + int(v.name[:6]) * 10_000 + t  # poseval's TSSSSSSFFFF
            assert f.is_labeled and 1 <= len(f.people) <= 2 and f.width == 256 and f.height == 192
            assert len({p.track_id for p in f.people}) == len(f.people)
            for p in f.people:
                k = p.keypoints
                assert (k[3:5] == 0).all()  # ears empty
                lab = p.annotated()
                assert set(np.unique(k[:, 2])) <= {0.0, 1.0}
                inside = (k[:, 0] >= 0) & (k[:, 0] <= 255) & (k[:, 1] >= 0) & (k[:, 1] <= 191)
                assert (inside[lab]).all()
                occ = np.asarray(p.extra["occluded"])
                assert occ.shape == (17,) and not occ[~lab].any()  # occluded joints are labelled (v = 1)
                n_occluded += int(occ.sum())
                x, y, w, h = p.bbox
                assert (k[lab, 0] >= x).all() and (k[lab, 0] <= x + w).all()
                assert (k[lab, 1] >= y).all() and (k[lab, 1] <= y + h).all()
                hx, hy, hw, hh = p.bbox_head
                assert hw == hh and 5 < hw < 40
                for slot in (1, 2):  # head_bottom, head_top on the head box (within rounding)
                    assert hx - 0.02 <= k[slot, 0] <= hx + hw + 0.02 and hy - 0.02 <= k[slot, 1] <= hy + hh + 0.02
    assert n_occluded > 0  # every video has an occluder here


def test_synth_joints_sit_on_their_markers(synth_root):
    """Each visible joint's pixel shows its marker colour (the GT matches what is drawn)."""
    from PIL import Image

    colors = JOINT_MARKER_COLORS
    assert len(set(colors)) == 15  # one colour per joint
    hits = total = 0
    for v in read_videos(synth_root / "annotations" / "train"):
        for f in v.frames:
            img = np.asarray(Image.open(synth_root / f.file_name).convert("RGB")).astype(int)
            for p in f.people:
                occ = np.asarray(p.extra["occluded"])[list(SLOTS_15)]
                for j, slot in enumerate(SLOTS_15):
                    if occ[j] or not p.annotated()[slot]:
                        continue
                    x, y = np.round(p.keypoints[slot, :2]).astype(int)
                    total += 1
                    hits += np.abs(img[y, x] - np.asarray(colors[j])).max() <= 40
    # markers of one figure can overlap (e.g. a wrist over a hip): allow a few
    assert total > 100 and hits / total > 0.9


def test_synth_is_deterministic(tmp_path):
    a = render_video(4, 3, seed=1)
    b = render_video(4, 3, seed=1)
    c = render_video(4, 3, seed=2)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a[0], b[0], strict=True))
    assert not np.array_equal(np.asarray(a[0][0]), np.asarray(c[0][0]))
    for pa, pb in zip(a[1], b[1], strict=True):
        for (ta, ja, oa, ha, _), (tb, jb, ob, hb, _) in zip(pa, pb, strict=True):
            assert ta == tb and np.array_equal(ja, jb) and np.array_equal(oa, ob) and np.array_equal(ha, hb)
    make_dataset(tmp_path / "x", 2, 3, seed=3, val_videos=0)
    make_dataset(tmp_path / "y", 2, 3, seed=3, val_videos=0)
    for name in ("000001_mpii_train", "000002_mpii_train"):
        ja = (tmp_path / "x" / "annotations" / "train" / f"{name}.json").read_text()
        assert ja == (tmp_path / "y" / "annotations" / "train" / f"{name}.json").read_text()
        im = f"images/train/{name}/000002.jpg"
        assert (tmp_path / "x" / im).read_bytes() == (tmp_path / "y" / im).read_bytes()


def test_synth_sparse_labels_and_bad_config(tmp_path):
    make_dataset(tmp_path, 1, 5, cfg=SynthConfig(label_every=2))
    (v,) = read_videos(tmp_path / "annotations" / "val")
    assert [f.is_labeled for f in v.frames] == [True, False, True, False, True]
    assert [len(f.people) > 0 for f in v.frames] == [True, False, True, False, True]
    with pytest.raises(ValueError, match="persons must be"):
        SynthConfig(persons=(2, 1))
    with pytest.raises(ValueError, match="videos must be >= 1"):
        make_dataset(tmp_path, 0, 3)


# ----------------------------------------------------------------------------------------------- dataset
def test_clip_indices_hand_values():
    assert clip_indices(0, 5, 10) == [0, 0, 0, 1, 2]
    assert clip_indices(9, 5, 10) == [7, 8, 9, 9, 9]
    assert clip_indices(4, 5, 10, stride=2) == [0, 2, 4, 6, 8]
    assert clip_indices(0, 1, 1) == [0]
    assert clip_indices(3, 4, 10) == [1, 2, 3, 4]  # even T: key at T // 2
    with pytest.raises(ValueError):
        clip_indices(10, 5, 10)


def test_dataset_items(synth_root):
    ds = PoseTrackClipDataset(synth_root, split="val", num_frames=3)
    n_people = sum(len(f.people) for v in ds.videos for f in v.frames)
    assert len(ds) == n_people
    item = ds[0]
    assert item["frames"].shape == (3, 3, 256, 192) and item["frames"].dtype.is_floating_point
    assert item["target"].shape == (15, 64, 48) and item["target_weight"].shape == (15,)
    m = item["meta"]
    assert m["frame_index"] == 0 and m["track_id"] >= 0 and m["image_id"] == ds.videos[0].frames[0].id
    # key frame 0: the clip is [0, 0, 1] -> the first two crops are equal, the third differs
    assert (item["frames"][0] == item["frames"][1]).all() and not (item["frames"][1] == item["frames"][2]).all()
    assert -2.2 < float(item["frames"].min()) and float(item["frames"].max()) < 2.7  # ImageNet-normalised
    np.testing.assert_allclose(item["target_weight"].numpy(), POSETRACK15.joint_weights, rtol=1e-6)
    kp, _ = keypoints_from_heatmaps(item["target"][None], m["center"][None].numpy(), m["scale"][None].numpy())
    px = float(m["scale"][0]) * 200 / 48  # image pixels per heatmap pixel; MSRA targets round to the grid
    err = np.linalg.norm(kp[0] - m["joints"][:, :2].numpy(), axis=1)
    assert err.max() <= 0.5 * np.sqrt(2) * px + 1e-6


def test_dataset_augmentation_is_consistent(synth_root):
    aug = Augment(scale_factor=0.25, rot_factor=30, rot_prob=1.0, flip_prob=1.0)
    ds = PoseTrackClipDataset(synth_root, split="train", num_frames=1, train=True, augment=aug, seed=3)
    for i in (0, 5, 11):
        item = ds[i]
        m = item["meta"]
        assert m["flipped"] and m["rotation"] != 0
        c, _ = decode_heatmaps(item["target"][None])
        # back to the (flipped) image through the rotated crop, then undo the flip
        img_pts = heatmap_to_image(c[0], m["center"].numpy(), m["scale"].numpy(), rot=m["rotation"])
        img_pts[:, 0] = 255 - img_pts[:, 0]  # undo the flip (width 256)
        img_pts = img_pts[POSETRACK15.flip_indices]  # swap left/right back
        gt = m["joints"].numpy()
        lab = (gt[:, 2] > 0) & (item["target_weight"].numpy()[POSETRACK15.flip_indices] > 0)
        px = float(m["scale"][0]) * 200 / 48
        assert lab.sum() >= 10
        assert np.linalg.norm(img_pts[lab] - gt[lab, :2], axis=1).max() <= 0.5 * np.sqrt(2) * px + 1e-6


def test_dataset_missing_image_and_detections(synth_root, tmp_path):
    videos = read_videos(synth_root / "annotations" / "val")
    videos[0].frames[1].file_name = "images/val/nope/000001.png"
    with pytest.raises(FileNotFoundError, match=r"images\[1\].file_name = 'images/val/nope/000001.png'"):
        PoseTrackClipDataset(synth_root, videos, num_frames=3)
    dets = [{"image_id": videos[0].frames[2].id, "category_id": 1, "bbox": [10, 20, 60, 120], "score": 0.8},
            {"image_id": videos[0].frames[2].id, "category_id": 1, "bbox": [10, 20, 60, 120], "score": 0.1}]
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    ds = PoseTrackClipDataset(synth_root, split="val", boxes=str(tmp_path / "dets.json"), det_score_thr=0.5)
    assert len(ds) == 1
    item = ds[0]
    assert item["meta"]["box_score"] == 0.8 and item["meta"]["track_id"] == -1
    assert float(item["target_weight"].sum()) == 0 and float(item["target"].abs().sum()) == 0
    (tmp_path / "bad.json").write_text(json.dumps([{"image_id": 1, "bbox": [1, 2, 3]}]))
    with pytest.raises(ValueError, match=r"bad.json: \[0\].bbox: expected 4 values"):
        PoseTrackClipDataset(synth_root, split="val", boxes=str(tmp_path / "bad.json"))


def test_decoded_targets_written_as_predictions_score_100(synth_root, tmp_path):
    ds = PoseTrackClipDataset(synth_root, split="val", num_frames=1, unbiased=True)
    items = [ds[i] for i in range(len(ds))]
    heat = np.stack([it["target"].numpy() for it in items])
    centers = np.stack([it["meta"]["center"].numpy() for it in items])
    scales = np.stack([it["meta"]["scale"].numpy() for it in items])
    kp, sc = keypoints_from_heatmaps(heat, centers, scales, method="dark")
    paths = write_posetrack_predictions(tmp_path / "pred", ds.videos, [it["meta"]["image_id"] for it in items],
                                        kp, sc, track_ids=[it["meta"]["track_id"] for it in items])
    doc = json.loads(paths[0].read_text())
    assert len(doc["images"]) == 6 and all(len(a["keypoints"]) == 51 and len(a["scores"]) == 17
                                           for a in doc["annotations"])
    assert all(a["keypoints"][9:15] == [0.0, 0.0, 0, 0.0, 0.0, 0] for a in doc["annotations"])  # ears empty
    res = evaluate_posetrack(ds.videos, read_videos(tmp_path / "pred"))
    assert res.summary()["Total"] == 100.0


# ----------------------------------------------------------------------------------------------- acceptance
def test_synth_then_eval_gt_as_prediction_is_100(tmp_path, capsys):
    root = tmp_path / "ds"
    assert main(["synth", str(root), "--videos", "2", "--frames", "4", "--seed", "1"]) == 0
    capsys.readouterr()
    val = str(root / "annotations" / "val")
    for metric, key in (("posetrack", "Total"), ("coco", "AP"), ("pck", "Mean")):
        assert main(["eval", "--metric", metric, "--gt", val, "--pred", val, "--format", "json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res[key] == 100.0
        defined = {k: v for k, v in res.items() if v is not None}
        assert all(v == 100.0 for v in defined.values()), (metric, defined)
        assert main(["eval", "--metric", metric, "--gt", val, "--pred", val, "--format", "table"]) == 0
        table = capsys.readouterr().out.splitlines()
        assert len(table) == 2 and re.search(r"100\.0", table[1])
    assert table[0].split() == ["Head", "Sho", "Elb", "Wri", "Hip", "Knee", "Ank", "Mean"]
    # a prediction folder missing a frame: exit 1 and the frame named
    pred = tmp_path / "pred"
    (v,) = read_videos(val)
    v.frames.pop(2)
    write_posetrack18(v, pred / f"{v.name}.json")
    assert main(["eval", "--metric", "posetrack", "--gt", val, "--pred", str(pred)]) == 1
    assert "missing: images/val/000002_mpii_val/000002.jpg" in capsys.readouterr().err


def test_eval_accepts_annolist_predictions_without_ids(synth_root, tmp_path, capsys):
    """Predictions from other tools: annolist files without image ids pair with the GT by file name."""
    from glsmamba.vhpe.formats import annolist_to_dict, save_json

    val = synth_root / "annotations" / "val"
    for v in read_videos(val):
        doc = annolist_to_dict(v)
        for el in doc["annolist"]:
            for key in ("id", "frame_id", "vid_id", "nframes", "width", "height"):
                el.pop(key, None)
            for r in el["annorect"]:
                r.pop("id", None)
                for q in r["annopoints"][0]["point"]:
                    q["score"] = [0.9]
        save_json(doc, tmp_path / "al" / f"{v.name}.json")
    for metric, key in (("posetrack", "Total"), ("coco", "AP"), ("pck", "Mean")):
        assert main(["eval", "--metric", metric, "--gt", str(val), "--pred", str(tmp_path / "al"),
                     "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out)[key] == 100.0


def test_synth_records_its_settings_and_the_mirror_conflict(synth_root, tmp_path):
    import json

    from glsmamba.vhpe.synth import SYNTH_META, mirror_inconsistent

    meta = json.loads((synth_root / SYNTH_META).read_text())
    assert meta["generator"] == "glsmamba synth" and meta["mirror_consistent"] is False
    assert mirror_inconsistent(synth_root)
    assert not mirror_inconsistent(tmp_path)  # no synth.json: real data
    (tmp_path / SYNTH_META).write_text("{not json")
    assert not mirror_inconsistent(tmp_path)


def test_train_flip_default_follows_the_data(synth_root, tmp_path):
    from glsmamba.vhpe.train import TrainConfig
    from glsmamba.vhpe.train.data import resolve_flip as _resolve_flip

    said = []
    assert _resolve_flip(TrainConfig(data=str(synth_root), out="o"), said.append).flip_prob == 0.0
    assert "flip augmentation off" in said[-1]
    assert _resolve_flip(TrainConfig(data=str(tmp_path), out="o"), said.append).flip_prob == 0.5
    kept = _resolve_flip(TrainConfig(data=str(synth_root), out="o", flip_prob=0.3), said.append)
    assert kept.flip_prob == 0.3 and said[-1].startswith("warning:")
