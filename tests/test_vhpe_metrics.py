"""Metrics: PoseTrack mAP (poseval rules), COCO OKS AP/AR, PCK; perfect = 100 and hand-computed cases."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest

from glsmamba.vhpe.formats import Frame, Person, Video, coco_to_dict
from glsmamba.vhpe.metrics import MissingPredictionError, evaluate_coco, evaluate_pck, evaluate_posetrack
from glsmamba.vhpe.metrics._npsort import _heapsort, classic_argsort, poseval_ranking
from glsmamba.vhpe.metrics.posetrack import MIN_SCORE, point_in_polygon, voc_ap
from glsmamba.vhpe.skeleton import COCO_SIGMAS, JHMDB15, POSETRACK15, POSETRACK18, POSEVAL_JOINTS, slots15_to_17

# numbers that pass through float arithmetic (means of percentages): compared to 1e-9
EPS = 1e-9


def person15(xy, head=(0.0, 0.0, 30.0, 40.0), scores=None, track=0, bbox=None) -> Person:
    """A PoseTrack person from 15 joints in network order; head box 30 x 40 -> head size 0.6 * 50 = 30 px."""
    kp = np.concatenate([np.asarray(xy, dtype=np.float64), np.ones((15, 1))], axis=1)
    return Person(keypoints=slots15_to_17(kp), track_id=track, bbox_head=np.asarray(head, dtype=np.float64),
                  bbox=None if bbox is None else np.asarray(bbox, dtype=np.float64),
                  scores=None if scores is None else slots15_to_17(np.asarray(scores, float)[:, None])[:, 0])


def video(frames_people: list[list[Person]], name: str = "000001_mpii_val", regions=None) -> Video:
    frames = []
    for t, people in enumerate(frames_people):
        frames.append(Frame(file_name=f"images/val/{name}/{t:06d}.jpg", id=t + 1, is_labeled=bool(people),
                            people=people, ignore_regions=(regions or {}).get(t, [])))
    return Video(name=name, frames=frames)


def base_pose(offset=(100.0, 100.0)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(0, 80, (15, 2)) + np.asarray(offset)


# ----------------------------------------------------------------------------------------------- PoseTrack
def test_posetrack_perfect_is_100_even_without_scores():
    g = base_pose()
    gt = video([[person15(g)], [], [person15(g + 5, track=1)]])
    pred = video([[person15(g)], [], [person15(g + 5, track=1)]])  # GT as prediction: scores -> MIN_SCORE
    res = evaluate_posetrack([gt], [pred])
    assert res.summary() == {k: 100.0 for k in ("Head", "Shou", "Elb", "Wri", "Hip", "Knee", "Ankl", "Total")}
    assert MIN_SCORE == -9999


@pytest.mark.parametrize("offset, wrist_ap", [(14.99, 100.0), (15.01, 0.0)])
def test_posetrack_pckh_threshold(offset, wrist_ap):
    """Head size 30 px -> a joint matches within 0.5 * 30 = 15 px."""
    g = base_pose()
    p = g.copy()
    rw = POSETRACK15.index("right_wrist")
    p[rw, 0] += offset
    res = evaluate_posetrack([video([[person15(g)]])], [video([[person15(p, scores=np.full(15, 0.9))]])])
    s = res.summary()
    assert res.ap[POSEVAL_JOINTS.index("right_wrist")] == wrist_ap
    assert s["Wri"] == pytest.approx((wrist_ap + 100) / 2, abs=EPS)
    assert s["Total"] == pytest.approx((14 * 100 + wrist_ap) / 15, abs=EPS)
    assert s["Head"] == 100.0


@pytest.mark.parametrize("extra_score, total", [(0.95, 50.0), (0.5, 100.0)])
def test_posetrack_extra_unmatched_person(extra_score, total):
    """One GT; a perfect prediction (0.9) and a far-away one. Ranked first, the false positive gives
    precision [0, 1/2] at recall [0, 1] -> AP 50; ranked last it costs nothing -> AP 100."""
    g = base_pose()
    preds = [person15(g, scores=np.full(15, 0.9)), person15(g + 500, scores=np.full(15, extra_score), track=1)]
    res = evaluate_posetrack([video([[person15(g)]])], [video([preds])])
    assert res.summary()["Total"] == pytest.approx(total, abs=EPS)
    np.testing.assert_allclose(res.ap, total)


@pytest.mark.parametrize("exact_first, total", [(True, 50.0), (False, 100.0)])
def test_posetrack_tied_scores_rank_like_poseval(exact_first, total):
    """One GT person, an exact and a far-off prediction, all scores 0.5. poseval ranks by
    numpy.argsort(scores)[::-1]: two tied scores sort ascending in collection order (insertion sort), and the
    reversal puts the one collected last first. Exact collected first -> the false positive ranks first:
    precision [0, 1/2] at recall [0, 1] -> AP 50 (poseval's Total 50.0); exact collected last -> AP 100."""
    g = base_pose()
    exact, far = person15(g, scores=np.full(15, 0.5)), person15(g + 500, scores=np.full(15, 0.5), track=1)
    preds = [exact, far] if exact_first else [far, exact]
    res = evaluate_posetrack([video([[person15(g)]])], [video([preds])])
    assert res.summary()["Total"] == pytest.approx(total, abs=EPS)
    np.testing.assert_allclose(res.ap, total)


# NumPy's classic argsort of 18 equal values, traced by hand through its quicksort (more than 17 elements, so
# one partition): median of 3 at index 8 (swapped to 16), the scans swap 1<->15, 2<->14, ..., 7<->9 and meet at
# 8, the pivot returns to 8; both halves (<= 17 elements) are then insertion-sorted, which moves nothing. So
# ascending = [0, 15, 14, ..., 1, 16, 17] and poseval's ranking (reversed) = [17, 16, 1, 2, ..., 15, 0].
HAND_RANK_18 = [17, 16, *range(1, 16), 0]


def test_classic_argsort_hand_traced_ties():
    assert classic_argsort(np.full(18, 0.5)).tolist() == [0, *range(15, 0, -1), 16, 17]
    assert poseval_ranking(np.full(18, 0.5)).tolist() == HAND_RANK_18
    assert poseval_ranking([0.5, 0.5]).tolist() == [1, 0]
    assert poseval_ranking([0.2, 0.9, 0.2, 0.9]).tolist() == [3, 1, 2, 0]  # insertion sort: stable, reversed


@pytest.mark.parametrize("exact_at", [0, 1, 16, 17])
def test_posetrack_eighteen_tied_predictions(exact_at):
    """One GT person and 18 tied predictions (0.5), one of them exact: its rank is its place in HAND_RANK_18,
    so AP = 100 / rank (precision 1/rank at recall 1, none before)."""
    g = base_pose()
    preds = [person15(g + (0 if i == exact_at else 500 + 10 * i), scores=np.full(15, 0.5), track=i)
             for i in range(18)]
    res = evaluate_posetrack([video([[person15(g)]])], [video([preds])])
    rank = HAND_RANK_18.index(exact_at) + 1
    np.testing.assert_allclose(res.ap, 100.0 / rank, atol=EPS)


def test_classic_argsort_sorts_and_agrees_without_ties():
    rng = np.random.default_rng(3)
    for n in (0, 1, 2, 17, 18, 19, 64, 1000):
        for levels in (1, 3, 1000):
            x = rng.integers(0, levels, n).astype(np.float64)
            if n > 4:
                x[rng.integers(0, n, 2)] = np.nan
            np.testing.assert_array_equal(x[classic_argsort(x)], np.sort(x))  # NaN last, as NumPy
        distinct = rng.permutation(n).astype(np.float64)
        np.testing.assert_array_equal(classic_argsort(distinct), np.argsort(distinct))
    idx = list(range(40))  # the heapsort fallback (deep recursion) sorts too
    vals = [float(v) for v in rng.integers(0, 7, 40)]
    _heapsort(vals, idx, 5, 30)
    assert [vals[i] for i in idx[5:35]] == sorted(vals[5:35]) and idx[:5] == list(range(5))


def test_posetrack_greedy_assignment_like_poseval():
    """P2 overlaps GT1 on 9 joints (pck 0.6) and GT2 on 6 (pck 0.4): it keeps only GT1, which prefers P1
    (pck 1), so P2 is unmatched and all its joints are false positives (an optimal matching would give P2 to
    GT2). Each joint: TP 0.9, FP 0.8 of 2 GT -> precision [1, 1/2], recall [1/2, 1/2] -> AP 50."""
    g1 = base_pose()
    g2 = g1 + np.array([1000.0, 0.0])
    p2 = np.concatenate([g1[:9], g2[9:]])
    preds = [person15(g1, scores=np.full(15, 0.9)), person15(p2, scores=np.full(15, 0.8), track=1)]
    res = evaluate_posetrack([video([[person15(g1), person15(g2, track=1)]])], [video([preds])])
    np.testing.assert_allclose(res.ap, 50.0)
    np.testing.assert_allclose(res.recall, 50.0)
    np.testing.assert_allclose(res.precision, 50.0)


def test_posetrack_ignore_regions_remove_points():
    g = base_pose()
    far = g + 500
    region = np.array([[550.0, 550.0], [750.0, 550.0], [750.0, 750.0], [550.0, 750.0]])  # contains `far`
    assert point_in_polygon(far, region).all()
    preds = [person15(g, scores=np.full(15, 0.9)), person15(far, scores=np.full(15, 0.95), track=1)]
    res = evaluate_posetrack([video([[person15(g)]], regions={0: [region]})], [video([preds])])
    assert res.summary()["Total"] == 100.0  # the false positive is inside the ignore region


def test_posetrack_missing_frame_and_video_errors():
    g = base_pose()
    gt = video([[person15(g)], [], [person15(g)]])
    pred = video([[person15(g)], [person15(g)]])
    with pytest.raises(MissingPredictionError, match=r"lacks 1 of the 3 ground-truth frames .*000002.jpg"):
        evaluate_posetrack([gt], [pred])
    with pytest.raises(MissingPredictionError, match=r"lack 1 of the 1 ground-truth videos: 000001_mpii_val"):
        evaluate_posetrack([gt], [video([[person15(g)]], name="other")])
    bad = copy.deepcopy(gt)
    bad.frames[0].people[0].bbox_head = None
    with pytest.raises(ValueError, match=r"frame 0 .* has no 'bbox_head'"):
        evaluate_posetrack([bad], [gt])


def test_posetrack_unlabelled_frames_and_joints():
    """Predictions on GT frames without people are dropped (poseval cleanupData); a joint without
    predictions has AP 0, a joint without GT but with predictions NaN (excluded from Total)."""
    g = base_pose()
    gt_p = person15(g)
    gt_p.keypoints[POSETRACK18.index("nose")] = 0  # nose unlabelled in the GT
    pr = person15(g, scores=np.full(15, 0.9))
    pr.keypoints[POSETRACK18.index("left_wrist")] = 0  # left wrist not predicted
    res = evaluate_posetrack([video([[gt_p], []])], [video([[pr], [person15(g + 300)]])])
    assert math.isnan(res.ap[POSEVAL_JOINTS.index("nose")])
    assert res.ap[POSEVAL_JOINTS.index("left_wrist")] == 0.0
    s = res.summary()
    assert math.isnan(s["Head"])  # a group mean with NaN is NaN (poseval getCum)
    assert s["Total"] == pytest.approx(13 * 100 / 14, abs=EPS)
    assert res.as_dict()["Head"] is None


def _poseval_oracle(gt_docs: list[dict], pr_docs: list[dict], thr: float = 0.5) -> np.ndarray:
    """A plain-loop restatement of poseval's evaluateAP on annolist documents (frames paired by index), used as
    an independent oracle for the vectorised implementation. Returns the 15 joint APs (percent)."""

    def inside(x, y, poly):  # even-odd ray casting; points on an edge are outside (shapely ``contains``)
        n, res = len(poly), False
        for i in range(n):
            (ax, ay), (bx, by) = poly[i], poly[(i + 1) % n]
            if (bx - ax) * (y - ay) - (by - ay) * (x - ax) == 0 and min(ax, bx) <= x <= max(ax, bx) \
                    and min(ay, by) <= y <= max(ay, by):
                return False
            if (ay > y) != (by > y) and x < ax + (y - ay) * (bx - ax) / (by - ay):
                res = not res
        return res and n >= 3

    def points(rect):
        return {p["id"][0]: (p["x"][0], p["y"][0], p["score"][0] if "score" in p else MIN_SCORE)
                for p in rect["annopoints"][0]["point"]}

    gts, prs = [], []
    for g, p in zip(gt_docs, pr_docs, strict=True):
        assert len(g["annolist"]) == len(p["annolist"])
        for fg, fp in zip(g["annolist"], p["annolist"], strict=True):
            if not fg["annorect"]:
                continue
            polys = [[(q["x"][0], q["y"][0]) for q in r["point"]] for r in fg.get("ignore_regions", [])]
            frame = []
            for rects in (fg["annorect"], fp["annorect"]):
                people = []
                for r in rects:
                    pts = points(r)
                    if polys:
                        pts = {k: v for k, v in pts.items() if not any(inside(v[0], v[1], q) for q in polys)}
                        if not pts:
                            continue
                    head = 0.6 * math.hypot(r["x2"][0] - r["x1"][0], r["y2"][0] - r["y1"][0]) if "x1" in r else 0
                    people.append((pts, head))
                frame.append(people)
            gts.append(frame[0])
            prs.append(frame[1])
    scores = {j: [] for j in range(15)}
    labels = {j: [] for j in range(15)}
    ngt = np.zeros(15)
    for g_people, p_people in zip(gts, prs, strict=True):
        for pts, _ in g_people:
            for j in pts:
                ngt[j] += 1
        if not p_people:
            continue
        match = {}
        pck = np.zeros((len(p_people), len(g_people)))
        for a, (pp, _) in enumerate(p_people):
            for b, (gp, head) in enumerate(g_people):
                for j in range(15):
                    ok = j in pp and j in gp and math.dist(pp[j][:2], gp[j][:2]) / head <= thr
                    match[a, b, j] = ok
                    pck[a, b] += ok
                if gp:
                    pck[a, b] /= len(gp)
        owner = {}
        for a in range(len(p_people)):
            b = int(np.argmax(pck[a])) if len(g_people) else -1
            for b2 in range(len(g_people)):
                if b2 != b:
                    pck[a, b2] = 0
        for b in range(len(g_people)):
            a = int(np.argmax(pck[:, b]))
            if pck[a, b] > 0:
                owner[a] = b
        for a, (pp, _) in enumerate(p_people):
            for j, (_, _, sc) in pp.items():
                scores[j].append(sc)
                labels[j].append(a in owner and match[a, owner[a], j])
    ap = np.zeros(15)
    for j in range(15):
        if not scores[j]:
            continue
        order = poseval_ranking(scores[j])  # ties: poseval's order (hand-checked in the tie tests below)
        tp, rec, prec = 0, [], []
        for rank, i in enumerate(order):
            tp += labels[j][i]
            rec.append(tp / ngt[j] if ngt[j] else float("nan"))
            prec.append(tp / (rank + 1))
        if not ngt[j]:
            ap[j] = float("nan")
            continue
        mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
        for i in range(len(mpre) - 2, -1, -1):
            mpre[i] = max(mpre[i], mpre[i + 1])
        ap[j] = 100 * sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
    return ap


def _random_videos(seed: int):
    """Random GT / prediction videos: missing joints, unlabelled frames, ignore regions, extra, missing and
    noisy people, tied scores."""
    rng = np.random.default_rng(seed)
    gts, prs = [], []
    for vi in range(3):
        gf, pf = [], []
        for _ in range(int(rng.integers(2, 6))):
            g_people, p_people = [], []
            n = int(rng.integers(0, 4)) if rng.random() < 0.8 else 0
            for t in range(n):
                xy = rng.uniform(0, 300, 2) + rng.normal(0, 25, (15, 2))
                head = (*rng.uniform(0, 300, 2), *rng.uniform(15, 45, 2))
                p = person15(xy, head=head, track=t)
                p.keypoints[np.flatnonzero(rng.random(17) < 0.15)] = 0
                g_people.append(p)
                if rng.random() < 0.85:
                    noisy = xy + rng.normal(0, rng.uniform(1, 12), (15, 2))
                    sc = np.round(rng.uniform(0, 1, 15), 1)  # ties
                    q = person15(noisy, scores=sc, track=t)
                    q.keypoints[np.flatnonzero(rng.random(17) < 0.1)] = 0
                    p_people.append(q)
            for t in range(int(rng.integers(0, 2))):  # false positives
                p_people.append(person15(rng.uniform(0, 300, (15, 2)), scores=np.round(rng.uniform(0, 1, 15), 1),
                                         track=10 + t))
            regions = []  # a random (possibly self-intersecting) polygon
            if rng.random() < 0.4:  # centred on a GT joint when there is one
                c = g_people[0].keypoints[5, :2] if g_people else rng.uniform(0, 300, 2)
                regions.append(c + rng.uniform(-60, 60, (int(rng.integers(3, 7)), 2)))
            gf.append((g_people, regions))
            pf.append(p_people)
        name = f"{vi + 1:06d}_mpii_val"
        gts.append(video([g for g, _ in gf], name, regions={t: r for t, (_, r) in enumerate(gf)}))
        prs.append(video(pf, name))
    return gts, prs


@pytest.mark.parametrize("seed", range(6))
def test_posetrack_matches_loop_oracle_on_random_fixtures(seed):
    from glsmamba.vhpe.formats import annolist_to_dict

    gts, prs = _random_videos(seed)
    ours = evaluate_posetrack(gts, prs).ap
    oracle = _poseval_oracle([annolist_to_dict(v) for v in gts], [annolist_to_dict(v) for v in prs])
    np.testing.assert_allclose(ours, oracle, atol=1e-9, equal_nan=True)


def test_voc_ap_and_polygon_hand_values():
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(0.5 + 0.5 * 2 / 3)
    sq = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], dtype=float)
    pts = np.array([[5, 5], [10, 5], [0, 0], [11, 5], [5, 10], [9.99, 0.01]])
    np.testing.assert_array_equal(point_in_polygon(pts, sq), [True, False, False, False, False, True])
    assert not point_in_polygon(np.array([[1.0, 1.0]]), sq[:2]).any()  # degenerate polygon holds nothing


# ----------------------------------------------------------------------------------------------- COCO
def coco_gt(people: list[list[dict]]) -> dict:
    images, anns = [], []
    for i, ps in enumerate(people):
        images.append({"id": i + 1, "file_name": f"{i}.jpg"})
        for j, p in enumerate(ps):
            anns.append({"id": 100 * (i + 1) + j, "image_id": i + 1, "category_id": 1, "iscrowd": 0, **p})
    cats = [{"id": 1, "name": "person", "keypoints": ["nose", "left_eye", "right_eye", "left_ear", "right_ear",
             "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
             "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"]}]
    return {"images": images, "annotations": anns, "categories": cats}


def nose_only(x, y, area=10000.0):
    kp = [0.0] * 51
    kp[0:3] = [x, y, 2]
    return {"keypoints": kp, "num_keypoints": 1, "area": area, "bbox": [x - 50, y - 50, 100, 100]}


def det(image_id, x, y, score):
    kp = [0.0] * 51
    kp[0:3] = [x, y, 1]
    return {"image_id": image_id, "category_id": 1, "keypoints": kp, "score": score}


def test_coco_oks_threshold_hand_computed():
    """One labelled joint (nose, sigma .026), area 10000: OKS = exp(-d^2 / (2 * 10000 * (2 * .026)^2)).
    At OKS 0.76 the detection matches at thresholds .50 ... .75 (6 of 10): AP = AR = 60."""
    d = math.sqrt(-math.log(0.76) * 2 * 10000 * (2 * 0.026) ** 2)
    gt = coco_gt([[nose_only(100, 100)]])
    res = evaluate_coco(gt, [det(1, 100 + d, 100, 0.9)]).as_dict()
    assert res["AP"] == pytest.approx(60.0, abs=EPS) and res["AR"] == pytest.approx(60.0, abs=EPS)
    # precision is tp / (tp + fp + eps) as in pycocotools: "100" is 100 up to 1e-14
    assert res["AP50"] == pytest.approx(100.0, abs=EPS) and res["AP75"] == pytest.approx(100.0, abs=EPS)
    assert res["APl"] == pytest.approx(60.0, abs=EPS) and res["APm"] is None  # area 10000 > 96^2
    d = math.sqrt(-math.log(0.74) * 2 * 10000 * (2 * 0.026) ** 2)  # OKS 0.74: 5 thresholds, AP75 = 0
    res = evaluate_coco(gt, [det(1, 100, 100 + d, 0.9)]).as_dict()
    assert res["AP"] == pytest.approx(50.0, abs=EPS) and res["AP75"] == 0.0


def test_coco_extra_false_positive_and_ignored_gt():
    gt = coco_gt([[nose_only(100, 100)], [nose_only(300, 300)]])
    # image 1: a higher-scored false positive then the exact match: precision 1/2 at every recall point
    # image 2: perfect. Sorted: FP(0.95), TP(0.9), TP(0.8) -> recall [0, .5, 1], precision [0, .5, 2/3],
    # interpolated precision 2/3 everywhere -> AP 66.67
    dets = [det(1, 900, 900, 0.95), det(1, 100, 100, 0.9), det(2, 300, 300, 0.8)]
    res = evaluate_coco(gt, dets).as_dict()
    assert res["AP"] == pytest.approx(200 / 3, abs=1e-9) and res["AR"] == 100.0
    # a GT without labelled keypoints is ignored: a detection on it is neither TP nor FP
    gt2 = coco_gt([[nose_only(100, 100), {"keypoints": [0.0] * 51, "num_keypoints": 0, "area": 900.0,
                                          "bbox": [400, 400, 30, 30]}]])
    on_box = det(1, 415, 415, 0.95)
    on_box["keypoints"] = [415.0, 415.0, 1.0] * 17  # all joints inside the GT box enlarged by its size: OKS 1
    res = evaluate_coco(gt2, [det(1, 100, 100, 0.9), on_box]).as_dict()
    assert res["AP"] == pytest.approx(100.0, abs=EPS)
    on_box["keypoints"][3:] = [0.0] * 48  # 16 joints at (0, 0), far outside: OKS ~ 1/17 -> false positive
    res = evaluate_coco(gt2, [det(1, 100, 100, 0.9), on_box]).as_dict()
    assert res["AP"] == pytest.approx(50.0, abs=EPS)


def test_coco_rejects_unknown_images():
    with pytest.raises(ValueError, match=r"r.json: \[0\].image_id: 7 is not in the ground truth"):
        evaluate_coco(coco_gt([[nose_only(1, 1)]]), [det(7, 1, 1, 1.0)], path_pred="r.json")


def test_coco_matches_pycocotools_on_random_data():
    pytest.importorskip("pycocotools", reason="optional oracle (pip install pycocotools)")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    people, dets = [], []
    for i in range(12):
        ps = []
        for _ in range(rng.integers(0, 4)):
            xy = rng.uniform(0, 400, 2)
            kp = np.concatenate([xy + rng.normal(0, 30, (17, 2)), rng.choice([0, 1, 2], (17, 1), p=[.3, .2, .5])], 1)
            kp[kp[:, 2] == 0, :2] = 0
            w, h = rng.uniform(10, 200, 2)
            ps.append({"keypoints": kp.reshape(-1).tolist(), "num_keypoints": int((kp[:, 2] > 0).sum()),
                       "area": float(w * h * rng.uniform(0.4, 0.9)), "bbox": [float(xy[0]), float(xy[1]), w, h],
                       "iscrowd": int(rng.random() < 0.1)})
            for _ in range(rng.integers(0, 3)):
                noisy = kp.copy()
                noisy[:, :2] = np.where(kp[:, 2:] > 0, kp[:, :2], xy) + rng.normal(0, rng.uniform(1, 15), (17, 2))
                dets.append({"image_id": i + 1, "category_id": 1, "keypoints": noisy.reshape(-1).tolist(),
                             "score": float(rng.uniform())})
        people.append(ps)
        for _ in range(rng.integers(0, 2)):  # stray detections
            kp = np.concatenate([rng.uniform(0, 400, (17, 2)), np.ones((17, 1))], 1)
            dets.append({"image_id": i + 1, "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                         "score": float(rng.uniform())})
    gt = coco_gt(people)
    ours = evaluate_coco(gt, copy.deepcopy(dets)).stats
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "keypoints")
    ev.params.kpt_oks_sigmas = np.array(COCO_SIGMAS)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    np.testing.assert_allclose(ours, ev.stats, atol=1e-12)


def test_coco_on_posetrack_videos_perfect():
    g = base_pose()
    v = video([[person15(g, bbox=[90, 90, 100, 100])], [person15(g + 3, bbox=[93, 93, 100, 100])]])
    gt = coco_to_dict([v])
    assert gt["categories"][0]["keypoints"][1] == "head_bottom"
    res = [{"image_id": a["image_id"], "keypoints": a["keypoints"], "score": 1.0} for a in gt["annotations"]]
    assert evaluate_coco(gt, res).as_dict()["AP"] == pytest.approx(100.0, abs=EPS)


# ----------------------------------------------------------------------------------------------- PCK
def jhmdb_video(people_per_frame, name="clip"):
    frames = [Frame(file_name=f"{name}/{t + 1:05d}.png", id=t, is_labeled=True, people=ps)
              for t, ps in enumerate(people_per_frame)]
    return Video(name=name, frames=frames, skeleton="jhmdb")


def jperson(xy, bbox=(0.0, 0.0, 100.0, 50.0), track=0):
    kp = np.concatenate([np.asarray(xy, float), np.full((15, 1), 2.0)], 1)
    return Person(keypoints=kp, bbox=np.asarray(bbox, float), track_id=track)


@pytest.mark.parametrize("offset, wrist", [(19.99, 100.0), (20.0, 0.0)])
def test_pck_strict_threshold(offset, wrist):
    """Box 100 x 50 -> norm 100 -> thr 20 px, strict: 19.99 counts, 20.00 does not."""
    g = np.random.default_rng(0).uniform(0, 100, (15, 2))
    p = g.copy()
    p[JHMDB15.index("right_wrist"), 1] += offset
    res = evaluate_pck([jhmdb_video([[jperson(g)]])], [jhmdb_video([[jperson(p)]])])
    s = res.summary()
    assert s["Wri"] == pytest.approx((wrist + 100) / 2, abs=EPS)
    assert s["Mean"] == pytest.approx((14 * 100 + wrist) / 15, abs=EPS)
    assert s["Head"] == 100.0 and set(res.table().split("\n")[0].split()) == {"Head", "Sho", "Elb", "Wri", "Hip",
                                                                                "Knee", "Ank", "Mean"}


def test_pck_missing_prediction_and_frames():
    g = np.random.default_rng(1).uniform(0, 100, (15, 2))
    gt = jhmdb_video([[jperson(g)], [jperson(g)]])
    pred = jhmdb_video([[jperson(g)], [jperson(g, track=5)]])  # frame 1: no prediction for track 0
    res = evaluate_pck([gt], [pred])
    assert res.summary()["Mean"] == pytest.approx(50.0, abs=EPS)
    assert evaluate_pck([gt], [gt]).summary()["Mean"] == 100.0
    with pytest.raises(MissingPredictionError, match="lacks 1 of the 2 ground-truth frames .*clip/00002.png"):
        evaluate_pck([gt], [jhmdb_video([[jperson(g)]])])
    # torso normaliser: ||left_shoulder - right_hip||
    g2 = g.copy()
    g2[JHMDB15.index("left_shoulder")] = [0, 0]
    g2[JHMDB15.index("right_hip")] = [30, 40]  # torso 50 -> thr 10
    p2 = g2.copy()
    p2[JHMDB15.index("head")] += [0, 10.5]
    res = evaluate_pck([jhmdb_video([[jperson(g2)]])], [jhmdb_video([[jperson(p2)]])], norm="torso")
    assert res.summary()["Head"] == 0.0


def test_pck_pairs_people_without_track_ids_by_distance():
    """COCO results carry no track ids: predictions pair with GT people by joint distance, in any order."""
    g1, g2 = base_pose(), base_pose((300.0, 50.0))
    gt = video([[person15(g1, bbox=[90, 90, 100, 100]), person15(g2, track=1, bbox=[290, 40, 100, 100])]])
    p2, p1 = person15(g2), person15(g1)
    p1.track_id = p2.track_id = None
    res = evaluate_pck([gt], [video([[p2, p1]])])
    assert res.summary()["Mean"] == 100.0 and res.summary()["Head"] == 100.0
    p1.keypoints[5, 0] += 25.0  # left shoulder 25 px off, norm 100 -> thr 20: wrong on one of two instances
    assert evaluate_pck([gt], [video([[p2, p1]])]).summary()["Sho"] == pytest.approx(75.0, abs=EPS)


# ----------------------------------------------------------------------------------------------- bad input
def _pred_with_nan(g: np.ndarray) -> Person:
    p = person15(g, scores=np.full(15, 0.9))
    p.keypoints[POSETRACK18.index("right_wrist"), 0] = np.nan
    p.scores[POSETRACK18.index("left_knee")] = np.inf
    return p


def test_non_finite_keypoints_count_as_missing_with_a_warning():
    """A NaN x and an inf joint score: those two joints count as not predicted (AP 0 on them), the rest 100;
    the warning counts and names them; the caller's videos are not modified."""
    from glsmamba.vhpe.metrics import EvaluationWarning

    g = base_pose()
    pred = video([[_pred_with_nan(g)]])
    with pytest.warns(EvaluationWarning, match=r"2 predicted keypoints of 1 people are NaN or infinite.*"
                                               r"000001_mpii_val.*frame 0.*person 0"):
        res = evaluate_posetrack([video([[person15(g)]])], [pred])
    ap = dict(zip(POSEVAL_JOINTS, res.ap, strict=True))
    assert ap["right_wrist"] == 0.0 and ap["left_knee"] == 0.0
    assert all(v == 100.0 for k, v in ap.items() if k not in ("right_wrist", "left_knee"))
    assert np.isnan(pred.frames[0].people[0].keypoints).any()  # input untouched
    with pytest.warns(EvaluationWarning, match="NaN or infinite"):
        pck = evaluate_pck([video([[person15(g, bbox=(90, 90, 100, 100))]])], [pred])
    acc = pck.accuracy
    assert acc[POSETRACK18.index("right_wrist")] == 0.0 and acc[POSETRACK18.index("left_knee")] == 0.0
    assert acc[POSETRACK18.index("left_wrist")] == 100.0


@pytest.mark.parametrize("metric", ["posetrack", "pck", "coco"])
def test_non_finite_keypoints_rejected_when_strict(metric):
    from glsmamba.vhpe.metrics import NonFiniteKeypointError
    from glsmamba.vhpe.metrics.coco import results_from_videos

    g = base_pose()
    gt, pred = [video([[person15(g, bbox=(90, 90, 100, 100))]])], [video([[_pred_with_nan(g)]])]
    with pytest.raises(NonFiniteKeypointError, match="NaN or infinite.*joints"):
        if metric == "posetrack":
            evaluate_posetrack(gt, pred, strict=True)
        elif metric == "pck":
            evaluate_pck(gt, pred, strict=True)
        else:
            results_from_videos(gt, pred, strict=True)


def test_coco_results_with_non_finite_values():
    """COCO results lists: NaN/inf keypoints count as missing (x = y = 0), a NaN score drops the result, each
    with a warning; strict raises naming the entry."""
    from glsmamba.vhpe.metrics import EvaluationWarning, NonFiniteKeypointError

    g = base_pose()
    gt = coco_to_dict([video([[person15(g, bbox=(90, 90, 100, 100))]])], one_based=False)
    image_id = gt["images"][0]["id"]
    kp = np.asarray(gt["annotations"][0]["keypoints"], dtype=np.float64).reshape(-1, 3)
    good = {"image_id": image_id, "category_id": 1, "keypoints": kp.reshape(-1).tolist(), "score": 0.9}
    nan_kp = copy.deepcopy(good)
    nan_kp["keypoints"][0] = float("nan")
    nan_score = dict(good, score=float("nan"))
    with pytest.warns(EvaluationWarning) as rec:
        evaluate_coco(gt, [nan_kp, nan_score], path_pred="p.json")
    msgs = [str(w.message) for w in rec]
    assert any("1 predicted keypoints of 1 results" in m and "p.json: [0]" in m for m in msgs)
    assert any("1 results have a NaN/inf score" in m and "p.json: [1]" in m for m in msgs)
    with pytest.raises(NonFiniteKeypointError, match=r"p.json: \[0\]"):
        evaluate_coco(gt, [nan_kp], path_pred="p.json", strict=True)


def test_prediction_videos_without_ground_truth_are_named():
    from glsmamba.vhpe.metrics import EvaluationWarning

    g = base_pose()
    preds = [video([[person15(g)]]), video([[person15(g)]], name="000002_extra"), video([[]], name="000003_more")]
    with pytest.warns(EvaluationWarning, match="2 of the 3 prediction videos have no ground truth.*000002_extra, "
                                               "000003_more"):
        res = evaluate_posetrack([video([[person15(g)]])], preds)
    assert res.summary()["Total"] == 100.0


def test_eval_cli_warns_and_strict_fails(tmp_path, capsys):
    from glsmamba.cli import main
    from glsmamba.vhpe.formats import write_posetrack18

    g = base_pose()
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    write_posetrack18(video([[person15(g)]]), gt_dir / "000001_mpii_val.json")
    write_posetrack18(video([[_pred_with_nan(g)]]), pred_dir / "000001_mpii_val.json")
    write_posetrack18(video([[person15(g)]], name="000009_stray"), pred_dir / "000009_stray.json")
    args = ["eval", "--metric", "posetrack", "--gt", str(gt_dir), "--pred", str(pred_dir), "--format", "json"]
    assert main(args) == 0
    err = capsys.readouterr().err.splitlines()
    assert any(e.startswith("glsmamba eval: warning: 1 of the 2 prediction videos have no ground truth") and
               "000009_stray" in e for e in err)
    assert any(e.startswith("glsmamba eval: warning: 2 predicted keypoints") for e in err)
    assert main([*args, "--strict"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("glsmamba eval: error: 2 predicted keypoints")
