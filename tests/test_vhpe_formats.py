"""Pose formats: lossless round trips, Sub-JHMDB 1-based handling, clear errors, the convert command."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from glsmamba.cli import main
from glsmamba.vhpe.formats import (
    FormatError,
    annolist_from_dict,
    annolist_to_dict,
    coco_from_dict,
    coco_results_from_list,
    coco_results_to_list,
    coco_to_dict,
    detect_format,
    posetrack18_from_dict,
    posetrack18_to_dict,
    read_jhmdb_json,
    read_jhmdb_mat,
    read_posetrack18,
    read_videos,
    write_videos,
)
from glsmamba.vhpe.skeleton import POSETRACK18, POSEVAL_JOINTS

PT18_NAMES = list(POSETRACK18.joints)


def _kp(seed: int, ears_empty: bool = True, missing: tuple[int, ...] = ()) -> list[float]:
    """51 keypoint values with integer-valued coordinates (exact through every arithmetic round trip)."""
    rng = np.random.default_rng(seed)
    out = []
    for slot in range(17):
        if (ears_empty and slot in (3, 4)) or slot in missing:
            out += [0, 0, 0]
        else:
            out += [float(rng.integers(1, 300)), float(rng.integers(1, 200)), 1]
    return out


def pt18_doc() -> dict:
    """A PoseTrack18 per-video document exercising every field (two labelled frames, one unlabelled)."""
    img = []
    for t in range(3):
        fid = 10003420000 + t
        d = {"file_name": f"images/val/000342_mpii_test/{t:06d}.jpg", "id": fid, "frame_id": fid,
             "vid_id": "000342", "nframes": 3, "is_labeled": t != 1, "has_no_densepose": True}
        if t == 0:
            d["ignore_regions_x"] = [[10.0, 50.0, 50.0, 10.0], [200.0, 220.0, 210.0]]
            d["ignore_regions_y"] = [[10.0, 10.0, 40.0, 40.0], [5.0, 5.0, 30.0]]
        img.append(d)
    anns = [
        {"id": 1000342000000, "image_id": 10003420000, "category_id": 1, "track_id": 0,
         "bbox": [10.0, 20.0, 80.0, 160.0], "bbox_head": [30.0, 22.0, 20.0, 24.0],
         "keypoints": _kp(1), "scores": [], "person_id": 7},
        {"id": 1000342000001, "image_id": 10003420000, "category_id": 1, "track_id": 3,
         "bbox": [100.0, 20.0, 60.0, 150.0], "bbox_head": [120.0, 25.0, 18.0, 20.0],
         "keypoints": _kp(2, missing=(15, 16)), "scores": []},
        {"id": 1000342000200, "image_id": 10003420002, "category_id": 1, "track_id": 0,
         "bbox": [12.0, 21.0, 80.0, 158.0], "bbox_head": [31.0, 22.0, 20.0, 24.0], "keypoints": _kp(3), "scores": [],
         "occluded": [0] * 16 + [1]},
    ]
    cats = [{"supercategory": "person", "id": 1, "name": "person", "keypoints": PT18_NAMES,
             "skeleton": [[a + 1, b + 1] for a, b in POSETRACK18.edges]}]
    return {"images": img, "annotations": anns, "categories": cats}


def pred_doc() -> dict:
    d = pt18_doc()
    rng = np.random.default_rng(5)
    for a in d["annotations"]:  # a score for every annotated slot, 0 for empty ones
        v = a["keypoints"][2::3]
        a["scores"] = [float(np.round(rng.uniform(0.1, 1), 3)) if v[s] else 0.0 for s in range(17)]
        a["score"] = 0.75
    return d


# ----------------------------------------------------------------------------------------------- round trips
def test_posetrack18_roundtrip_is_identity():
    doc = pt18_doc()
    v = posetrack18_from_dict(doc, "000342_mpii_test")
    assert len(v.frames) == 3 and [len(f.people) for f in v.frames] == [2, 0, 1]
    assert v.frames[0].ignore_regions[1].shape == (3, 2)
    assert v.frames[2].people[0].extra["occluded"][16] == 1
    assert posetrack18_to_dict(v) == doc  # the written document equals the input, key for key


def test_posetrack18_annolist_roundtrips():
    for doc in (pt18_doc(), pred_doc()):
        v = posetrack18_from_dict(doc, "000342_mpii_test")
        al = annolist_to_dict(v)
        v2 = annolist_from_dict(json.loads(json.dumps(al)), "000342_mpii_test")
        assert v2 == v
        assert posetrack18_to_dict(v2) == doc
        # annolist -> PT18 -> annolist reproduces the annolist document
        assert annolist_to_dict(posetrack18_from_dict(posetrack18_to_dict(v2), v2.name)) == al


def test_annolist_content_matches_poseval_layout():
    v = posetrack18_from_dict(pt18_doc(), "000342_mpii_test")
    al = annolist_to_dict(v)["annolist"]
    assert al[0]["image"] == [{"name": "images/val/000342_mpii_test/000000.jpg"}]
    assert al[0]["imgnum"] == [1] and al[1]["is_labeled"] == [0]
    rect = al[0]["annorect"][0]
    # head box corners from bbox_head [30, 22, 20, 24]
    assert (rect["x1"], rect["y1"], rect["x2"], rect["y2"]) == ([30.0], [22.0], [50.0], [46.0])
    assert rect["track_id"] == [0]
    ids = sorted(p["id"][0] for p in rect["annopoints"][0]["point"])
    assert ids == list(range(15))  # 15 joints, ears dropped
    by_id = {p["id"][0]: p for p in rect["annopoints"][0]["point"]}
    kp = np.asarray(pt18_doc()["annotations"][0]["keypoints"]).reshape(17, 3)
    assert by_id[POSEVAL_JOINTS.index("head_bottom")]["x"] == [kp[1, 0]]  # neck (id 12) = slot 1
    assert by_id[0]["x"] == [kp[16, 0]]  # poseval id 0 = right_ankle = slot 16
    # the second person lacks both ankles: no points with ids 0 and 5
    ids2 = {p["id"][0] for p in al[0]["annorect"][1]["annopoints"][0]["point"]}
    assert 0 not in ids2 and 5 not in ids2 and len(ids2) == 13
    regions = al[0]["ignore_regions"]
    assert regions[1]["point"][2] == {"x": [210.0], "y": [30.0]}


def test_plain_annolist_without_extensions():
    """A PoseTrack17 file (no PT18 extension keys, no is_visible) reads with v = 1 and no person box."""
    doc = {"annolist": [{"image": [{"name": "images/bonn_5sec/000001_bonn/00000001.jpg"}], "imgnum": [1],
                         "annorect": [{"x1": [10], "y1": [20], "x2": [40], "y2": [60], "track_id": [2],
                                       "annopoints": [{"point": [{"id": [14], "x": [25], "y": [22]},
                                                                 {"id": [0], "x": [30], "y": [200]}]}]}]}]}
    v = annolist_from_dict(doc, "000001_bonn")
    p = v.frames[0].people[0]
    assert v.frames[0].is_labeled and p.bbox is None and p.track_id == 2
    np.testing.assert_array_equal(p.bbox_head, [10, 20, 30, 40])
    np.testing.assert_array_equal(p.keypoints[POSETRACK18.index("head_top")], [25, 22, 1])
    np.testing.assert_array_equal(p.keypoints[POSETRACK18.index("right_ankle")], [30, 200, 1])
    assert p.annotated().sum() == 2
    # poseval derives imgnum = int(stem) + 1 = 2 for 00000001.jpg; the file says 1, so it is kept verbatim
    assert v.frames[0].extra == {"imgnum": [1]}
    assert annolist_to_dict(v)["annolist"][0]["imgnum"] == [1]
    # annolist -> PoseTrack18 -> annolist keeps every original key; PoseTrack18's frame ids and nframes (assigned
    # on the way) come back as extension keys
    back = annolist_to_dict(posetrack18_from_dict(posetrack18_to_dict(v), v.name))["annolist"][0]
    orig = doc["annolist"][0]
    assert back["image"] == orig["image"] and back["imgnum"] == orig["imgnum"]
    rect, orect = back["annorect"][0], orig["annorect"][0]
    assert all(rect[k] == orect[k] for k in ("x1", "y1", "x2", "y2", "track_id"))
    got = sorted((q["id"], q["x"], q["y"]) for q in rect["annopoints"][0]["point"])
    assert got == sorted((q["id"], q["x"], q["y"]) for q in orect["annopoints"][0]["point"])
    assert all(q["is_visible"] == [1] for q in rect["annopoints"][0]["point"])  # poseval's default made explicit
    assert (back["id"], back["frame_id"], back["nframes"], rect["id"]) == (0, 0, 1, 0)


def test_coco_roundtrip_several_videos():
    v1 = posetrack18_from_dict(pt18_doc(), "000342_mpii_test")
    d2 = pt18_doc()
    for img in d2["images"]:
        img["file_name"] = img["file_name"].replace("000342", "000343")
        img["id"] += 10000
        img["frame_id"] += 10000
        img["vid_id"] = "000343"
    for a in d2["annotations"]:
        a["image_id"] += 10000
        a["id"] += 1000000
    v2 = posetrack18_from_dict(d2, "000343_mpii_test")
    coco = coco_to_dict([v1, v2])
    ann = coco["annotations"][0]
    assert ann["area"] == 80.0 * 160.0 and ann["iscrowd"] == 0 and ann["num_keypoints"] == 15
    back = coco_from_dict(json.loads(json.dumps(coco)))
    assert [v.name for v in back] == ["000342_mpii_test", "000343_mpii_test"]
    assert back == [v1, v2]
    labelled = coco_to_dict([v1], labeled_only=True)
    assert [i["id"] for i in labelled["images"]] == [10003420000, 10003420002]


def test_coco_results_roundtrip():
    gt = [posetrack18_from_dict(pt18_doc(), "000342_mpii_test")]
    pred = [posetrack18_from_dict(pred_doc(), "000342_mpii_test")]
    res = coco_results_to_list(pred)
    assert len(res) == 3 and res[0]["score"] == 0.75 and len(res[0]["keypoints"]) == 51
    back = coco_results_from_list(json.loads(json.dumps(res)), gt)
    p0, q0 = pred[0].frames[0].people[0], back[0].frames[0].people[0]
    np.testing.assert_array_equal(q0.keypoints[:, :2], p0.keypoints[:, :2])
    np.testing.assert_array_equal(q0.scores, p0.scores)
    assert q0.score == 0.75
    with pytest.raises(FormatError, match=r"\[0\]\.image_id: image id 5 is not in the ground truth"):
        coco_results_from_list([{"image_id": 5, "keypoints": [0] * 51, "score": 1}], gt, "r.json")


def test_write_and_detect_formats(tmp_path):
    v = posetrack18_from_dict(pt18_doc(), "000342_mpii_test")
    write_videos([v], tmp_path / "pt18", "posetrack18")
    write_videos([v], tmp_path / "al", "annolist")
    write_videos([v], tmp_path / "c.json", "coco")
    assert detect_format(tmp_path / "pt18") == "posetrack18"
    assert detect_format(tmp_path / "al") == "annolist"
    assert detect_format(tmp_path / "pt18" / "000342_mpii_test.json") == "posetrack18"
    assert read_videos(tmp_path / "pt18") == [v]
    assert read_videos(tmp_path / "al") == [v]
    assert read_videos(tmp_path / "c.json") == [v]


# ----------------------------------------------------------------------------------------------- Sub-JHMDB
def test_jhmdb_mat_is_one_based(tmp_path):
    scipy_io = pytest.importorskip("scipy.io", reason="reading .mat needs scipy (the jhmdb extra)")
    rng = np.random.default_rng(0)
    pos = rng.uniform(1, 240, (2, 15, 4))
    path = tmp_path / "joint_positions" / "catch" / "clip_a" / "joint_positions.mat"
    path.parent.mkdir(parents=True)
    scipy_io.savemat(str(path), {"pos_img": pos, "scale": np.ones(4)})
    v = read_jhmdb_mat(path)
    assert v.skeleton == "jhmdb" and v.name == "clip_a" and len(v.frames) == 4
    assert v.frames[2].file_name == "Rename_Images/catch/clip_a/00003.png"
    np.testing.assert_allclose(v.frames[2].people[0].keypoints[:, :2], pos[:, :, 2].T - 1)
    assert (v.frames[0].people[0].keypoints[:, 2] == 2).all()
    scipy_io.savemat(str(path), {"pos_img": pos[:, :14]})
    with pytest.raises(FormatError, match=r"joint_positions.mat: pos_img: expected shape \(2, 15, T\)"):
        read_jhmdb_mat(path)


def test_jhmdb_json_is_one_based(tmp_path):
    names = ["neck", "belly", "head", "right_shoulder", "left_shoulder", "right_hip", "left_hip", "right_elbow",
             "left_elbow", "right_knee", "left_knee", "right_wrist", "left_wrist", "right_ankle", "left_ankle"]
    kp = [float(v) for j in range(15) for v in (10.0 + j, 50.0 + 2 * j, 2.0)]
    doc = {"categories": [{"id": 1, "name": "person", "keypoints": names, "skeleton": [[1, 3]]}],
           "images": [{"is_labeled": True, "file_name": "clip/00001.png", "nframes": 1, "frame_id": 2280001,
                       "vid_id": "00228", "id": 2280001, "width": 320, "height": 240}],
           "annotations": [{"keypoints": kp, "track_id": 0, "image_id": 2280001, "bbox": [79.0, 62.0, 54.0, 159.0],
                            "scores": [], "category_id": 1, "id": 1000002280001}]}
    (tmp_path / "sub1.json").write_text(json.dumps(doc))
    assert detect_format(tmp_path / "sub1.json") == "jhmdb-json"
    (v,) = read_jhmdb_json(tmp_path / "sub1.json")
    p = v.frames[0].people[0]
    np.testing.assert_array_equal(p.keypoints[3], [12.0, 55.0, 2.0])  # (13, 56) 1-based -> (12, 55)
    np.testing.assert_array_equal(p.bbox, [78.0, 61.0, 54.0, 159.0])
    write_videos([v], tmp_path / "out.json", "jhmdb-json")
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["annotations"][0]["keypoints"] == kp and out["annotations"][0]["bbox"] == [79.0, 62.0, 54.0, 159.0]


# ----------------------------------------------------------------------------------------------- errors
def test_malformed_json_names_file_and_position(tmp_path):
    bad = tmp_path / "000001_mpii_val.json"
    bad.write_text('{"images": [}')
    with pytest.raises(FormatError, match=r"000001_mpii_val.json: malformed JSON at line 1 column"):
        read_posetrack18(bad)
    with pytest.raises(FormatError, match=r"nope.json: file does not exist"):
        read_posetrack18(tmp_path / "nope.json")


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda d: d.pop("annotations"), r"v.json: top level: missing key 'annotations'"),
        (lambda d: d["images"][1].pop("file_name"), r"v.json: images\[1\]: missing key 'file_name'"),
        (lambda d: d["annotations"][2]["keypoints"].pop(), r"annotations\[2\].keypoints: expected 51 values, got 50"),
        (lambda d: d["annotations"][0].pop("keypoints"), r"annotations\[0\]: missing key 'keypoints'"),
        (lambda d: d["annotations"][1].update(bbox=[1, 2, 3]), r"annotations\[1\].bbox: expected 4 values, got 3"),
        (lambda d: d["annotations"][1].update(image_id=5), r"annotations\[1\].image_id: image id 5 is not in"),
        (lambda d: d["annotations"][0].update(scores=[0.5] * 3), r"annotations\[0\].scores: expected 17 values"),
        (lambda d: d["annotations"][0].update(track_id=1.5), r"annotations\[0\].track_id: expected an integer"),
        (lambda d: d["images"][0].update(ignore_regions_y=[[1.0]]), r"images\[0\]: ignore_regions_x / _y"),
        (lambda d: d["images"][2].update(id=10003420000), r"images\[2\].id: duplicate image id"),
    ],
)
def test_posetrack18_errors_name_the_field(tmp_path, mutate, pattern):
    doc = pt18_doc()
    mutate(doc)
    path = tmp_path / "v.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=pattern.replace("ignore_regions_x / _y", "ignore_regions_x / "
                                                           "ignore_regions_y must be lists of equal length")):
        read_posetrack18(path)


def test_annolist_errors_name_the_field():
    doc = annolist_to_dict(posetrack18_from_dict(pt18_doc(), "v"))
    bad = copy.deepcopy(doc)
    bad["annolist"][0]["annorect"][0]["annopoints"][0]["point"][3]["id"] = [15]
    with pytest.raises(FormatError, match=r"annolist\[0\].annorect\[0\].annopoints\[0\].point\[3\].id: poseval"):
        annolist_from_dict(bad, "v", "al.json")
    bad = copy.deepcopy(doc)
    del bad["annolist"][2]["image"]
    with pytest.raises(FormatError, match=r"al.json: annolist\[2\]: missing key 'image'"):
        annolist_from_dict(bad, "v", "al.json")
    bad = copy.deepcopy(doc)
    bad["annolist"][0]["annorect"][1]["x1"] = [1, 2]
    with pytest.raises(FormatError, match=r"annolist\[0\].annorect\[1\].x1: expected a one-element list"):
        annolist_from_dict(bad, "v", "al.json")


def test_coco_wrong_keypoint_length(tmp_path):
    coco = coco_to_dict([posetrack18_from_dict(pt18_doc(), "v")])
    coco["annotations"][1]["keypoints"] = coco["annotations"][1]["keypoints"][:48]
    with pytest.raises(FormatError, match=r"c.json: annotations\[1\].keypoints: expected 51 values, got 48"):
        coco_from_dict(coco, "c.json")
    coco["categories"][0]["keypoints"] = ["a", "b"]
    with pytest.raises(FormatError, match=r"categories\[0\].keypoints: names \['a', 'b'\] match no known"):
        coco_from_dict(coco, "c.json")


# ----------------------------------------------------------------------------------------------- convert CLI
def test_convert_cli_chain(tmp_path, capsys):
    v = posetrack18_from_dict(pt18_doc(), "000342_mpii_test")
    write_videos([v], tmp_path / "al", "annolist")
    assert main(["convert", str(tmp_path / "al"), str(tmp_path / "pt18"), "--to", "posetrack18"]) == 0
    assert main(["convert", str(tmp_path / "pt18"), str(tmp_path / "all.json"), "--to", "coco"]) == 0
    assert main(["convert", str(tmp_path / "all.json"), str(tmp_path / "pt18b"), "--to", "posetrack18"]) == 0
    assert main(["convert", str(tmp_path / "pt18b"), str(tmp_path / "al2"), "--to", "annolist"]) == 0
    assert json.loads((tmp_path / "pt18b" / "000342_mpii_test.json").read_text()) == pt18_doc()
    assert (json.loads((tmp_path / "al2" / "000342_mpii_test.json").read_text())
            == json.loads((tmp_path / "al" / "000342_mpii_test.json").read_text()))
    assert "converted 1 video(s) from annolist to posetrack18" in capsys.readouterr().out
    (tmp_path / "broken.json").write_text("[1, 2")
    assert main(["convert", str(tmp_path / "broken.json"), str(tmp_path / "x"), "--to", "coco"]) == 1
    assert "broken.json: malformed JSON" in capsys.readouterr().err
