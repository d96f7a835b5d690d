"""PoseTrack multi-person pose mAP, as poseval's ``evaluateAP`` computes it (``docs/pose-formats.md`` 2.1).

Procedure, per video (paired by name) and frame (paired by image id, else file name):

1. Every GT frame must have a prediction frame (poseval's rule), else :class:`MissingPredictionError`
   names the missing frames.
2. GT frames without people are dropped with their predictions (poseval ``cleanupData``), so predictions on
   unlabelled frames do not count.
3. In a frame with ignore regions, GT and predicted points strictly inside a polygon are removed, then people
   without points are removed (poseval ``removeIgnoredPoints``; shapely's ``contains`` excludes the boundary).
4. Head size ``h = 0.6 * ||(x2, y2) - (x1, y1)||`` of the GT head box. For prediction p, GT g, joint j both
   annotate: ``match = ||p_j - g_j|| / h <= 0.5``; ``pck[p, g] = sum_j match / #annotated joints of g``.
5. Each prediction keeps only its best GT (first on ties); each GT then takes its best prediction; pck 0 means
   unmatched. Every predicted joint adds ``(score, match if its person is assigned else 0)``; a prediction
   without joint scores uses ``MIN_SCORE = -9999``.
6. Per joint: rank the detections as poseval does, ``numpy.argsort(scores)[::-1]`` over the scores in the order
   they were collected (video by video in the order of the GT videos, frame by frame, person by person in the
   prediction file's order), with NumPy's classic introsort (:mod:`._npsort`): tied scores are NOT kept in
   their order of appearance (two tied detections rank last-collected first; see ``_npsort`` for why the
   classic algorithm). recall = TP / #GT joints, precision = TP / rank, AP = VOC all-point AP x 100. A joint
   without predictions has AP 0; one without GT but with predictions has AP NaN (both as poseval). poseval
   reads its GT files in ``glob`` order; where tied scores span videos, give the videos in the order poseval
   saw them to reproduce its number.
7. Total = mean of the non-NaN joint APs; Head = mean(head_top, head_bottom (= neck), nose); Shou, Elb, Wri,
   Hip, Knee, Ankl = mean of right and left.

Joints use the 15 PoseTrack joints of the 17 slots (ears ignored). A joint counts as annotated / predicted
unless ``x = y = v = 0`` (what poseval's converter keeps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..formats import Person, Video
from ..skeleton import POSETRACK18, POSEVAL_JOINTS
from ._npsort import poseval_ranking
from .common import clean_number, finite_predictions, format_table, pair_frames, pair_videos

MIN_SCORE = -9999.0
COLUMNS = ("Head", "Shou", "Elb", "Wri", "Hip", "Knee", "Ankl", "Total")
# poseval id order -> PoseTrack18 slots
_SLOTS = np.array([POSETRACK18.index(n) for n in POSEVAL_JOINTS])
_GROUPS = {
    "Head": ("head_top", "head_bottom", "nose"),
    "Shou": ("right_shoulder", "left_shoulder"),
    "Elb": ("right_elbow", "left_elbow"),
    "Wri": ("right_wrist", "left_wrist"),
    "Hip": ("right_hip", "left_hip"),
    "Knee": ("right_knee", "left_knee"),
    "Ankl": ("right_ankle", "left_ankle"),
}


@dataclass
class PoseTrackAP:
    """Result: per-joint AP / precision / recall (poseval joint order, percent) and the summary columns."""

    ap: np.ndarray  # (15,)
    precision: np.ndarray  # (15,) precision at the last rank
    recall: np.ndarray  # (15,) recall at the last rank
    num_gt: np.ndarray  # (15,) annotated GT joints

    def summary(self) -> dict[str, float]:
        """``{Head, Shou, Elb, Wri, Hip, Knee, Ankl, Total}`` in percent (poseval ``getCum``)."""
        out = {}
        for key, names in _GROUPS.items():
            out[key] = float(np.mean([self.ap[POSEVAL_JOINTS.index(n)] for n in names]))
        valid = ~np.isnan(self.ap)
        out["Total"] = float(self.ap[valid].mean()) if valid.any() else float("nan")
        return out

    def as_dict(self) -> dict[str, float | None]:
        """Named numbers: the summary columns, total precision/recall and ``AP_<joint>`` per joint."""
        d: dict[str, float | None] = {k: clean_number(v) for k, v in self.summary().items()}
        for name, arr in (("Precision", self.precision), ("Recall", self.recall)):
            valid = ~np.isnan(arr)
            d[name] = clean_number(float(arr[valid].mean())) if valid.any() else None
        for i, n in enumerate(POSEVAL_JOINTS):
            d[f"AP_{n}"] = clean_number(float(self.ap[i]))
        return d

    def table(self) -> str:
        return format_table("PoseTrack mAP", list(COLUMNS), self.summary())


# ------------------------------------------------------------------------------------------------ geometry
def point_in_polygon(points: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Strict interior test (even-odd rule; points on an edge or vertex are outside, as shapely ``contains``).

    Args:
        points: ``(N, 2)``.
        poly: ``(P, 2)`` vertices (closing edge implied). Fewer than 3 vertices -> nothing is inside.

    Returns:
        ``(N,)`` bool.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    poly = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    n = len(pts)
    if len(poly) < 3:
        return np.zeros(n, dtype=bool)
    x, y = pts[:, 0:1], pts[:, 1:2]
    a, b = poly, np.roll(poly, -1, axis=0)
    ax, ay, bx, by = a[:, 0], a[:, 1], b[:, 0], b[:, 1]
    # on-edge: collinear and within the segment's bounding box
    cross = (bx - ax) * (y - ay) - (by - ay) * (x - ax)
    within = ((np.minimum(ax, bx) <= x) & (x <= np.maximum(ax, bx))
              & (np.minimum(ay, by) <= y) & (y <= np.maximum(ay, by)))
    on_edge = ((np.abs(cross) <= 1e-12 * (1 + np.abs(bx - ax) + np.abs(by - ay))) & within).any(axis=1)
    crosses = (ay > y) != (by > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xint = ax + (y - ay) * (bx - ax) / (by - ay)
    inside = (crosses & (x < xint)).sum(axis=1) % 2 == 1
    return inside & ~on_edge


# ------------------------------------------------------------------------------------------------ per frame
@dataclass
class _Pose:
    xy: np.ndarray  # (15, 2)
    has: np.ndarray  # (15,) bool
    score: np.ndarray  # (15,)
    head: float  # head size (GT only)


def _to_pose(p: Person, is_gt: bool, where: str) -> _Pose:
    kp = p.keypoints[_SLOTS]
    has = p.annotated()[_SLOTS]
    if p.scores is not None:
        score = p.scores[_SLOTS].astype(np.float64)
    else:
        score = np.full(15, MIN_SCORE)
    head = float("nan")
    if is_gt:
        if p.bbox_head is None:
            raise ValueError(f"{where}: ground-truth person (track_id {p.track_id}) has no 'bbox_head'; the "
                             f"PoseTrack metric needs the head box for its PCKh threshold")
        x, y, w, h = p.bbox_head
        head = 0.6 * float(np.hypot(w, h))
    return _Pose(xy=kp[:, :2].astype(np.float64), has=has, score=score, head=head)


def _apply_ignore(poses: list[_Pose], regions: list[np.ndarray]) -> list[_Pose]:
    out = []
    for p in poses:
        inside = np.zeros(15, dtype=bool)
        for r in regions:
            inside |= point_in_polygon(p.xy, r)
        has = p.has & ~inside
        if has.any():
            out.append(_Pose(p.xy, has, p.score, p.head))
    return out


def _assign_frame(gts: list[_Pose], prs: list[_Pose], thresh: float, scores: list[list], labels: list[list],
                  n_gt: np.ndarray) -> None:
    for g in gts:
        n_gt += g.has
    if not prs:
        return
    if not gts:  # all predictions are false positives
        for p in prs:
            for j in np.flatnonzero(p.has):
                scores[j].append(p.score[j])
                labels[j].append(False)
        return
    gxy = np.stack([g.xy for g in gts])  # (G, 15, 2)
    ghas = np.stack([g.has for g in gts])
    head = np.array([g.head for g in gts])
    pxy = np.stack([p.xy for p in prs])
    phas = np.stack([p.has for p in prs])
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.linalg.norm(pxy[:, None] - gxy[None], axis=-1) / head[None, :, None]  # (P, G, 15)
    dist = np.where(phas[:, None] & ghas[None], dist, np.inf)
    match = dist <= thresh
    n_ann = ghas.sum(axis=1)
    pck = match.sum(axis=2).astype(np.float64)
    pck = np.where(n_ann[None] > 0, pck / np.maximum(n_ann[None], 1), pck)
    best_g = pck.argmax(axis=1)
    keep = np.zeros_like(pck)
    keep[np.arange(len(prs)), best_g] = pck[np.arange(len(prs)), best_g]
    pr_to_gt = keep.argmax(axis=0)
    pr_to_gt[keep.max(axis=0) == 0] = -1
    for pi, p in enumerate(prs):
        gi = np.flatnonzero(pr_to_gt == pi)
        m = match[pi, gi[0]] if len(gi) else np.zeros(15, dtype=bool)
        for j in np.flatnonzero(p.has):
            scores[j].append(p.score[j])
            labels[j].append(bool(m[j]))


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point AP: area under the monotone precision envelope (poseval ``VOCap``)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def _joint_metrics(scores: list[float], labels: list[bool], n_gt: float) -> tuple[float, float, float]:
    if not scores:
        return 0.0, 0.0, 0.0
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels, dtype=bool)
    order = poseval_ranking(s)
    tp = np.cumsum(lab[order]).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = tp / n_gt
    precision = tp / np.arange(1, len(s) + 1)
    if n_gt == 0:
        return float("nan"), float(precision[-1] * 100), float("nan")
    return voc_ap(recall, precision) * 100, float(precision[-1] * 100), float(recall[-1] * 100)


def evaluate_posetrack(gt: list[Video], pred: list[Video], thresh: float = 0.5, strict: bool = False) -> PoseTrackAP:
    """PoseTrack mAP (poseval ``evaluateAP``) of predicted videos against GT videos.

    Args:
        gt: ground-truth videos (skeleton ``posetrack18``; people need ``bbox_head``).
        pred: predicted videos, paired by name; people carry ``scores`` (else ``MIN_SCORE``).
        thresh: PCKh threshold (0.5).
        strict: raise on NaN/inf predicted keypoints instead of counting them as missing (with a warning).

    Returns:
        :class:`PoseTrackAP`.

    Raises:
        MissingPredictionError: a GT video or frame has no prediction (names them).
        NonFiniteKeypointError: ``strict`` and a predicted keypoint is NaN/inf.
        ValueError: wrong skeleton, GT person without head box.

    Warns:
        EvaluationWarning: prediction videos without ground truth (not scored); NaN/inf keypoints (missing).
    """
    for v in list(gt) + list(pred):
        if v.skeleton != "posetrack18":
            raise ValueError(f"video {v.name!r} has skeleton {v.skeleton!r}; the PoseTrack metric needs "
                             f"'posetrack18'")
    pred = finite_predictions(pred, strict)
    scores: list[list] = [[] for _ in range(15)]
    labels: list[list] = [[] for _ in range(15)]
    n_gt = np.zeros(15)
    for gv, pv in pair_videos(gt, pred):
        pframes = pair_frames(gv, pv)
        for fi, (gf, pf) in enumerate(zip(gv.frames, pframes, strict=True)):
            if not gf.people:
                continue
            where = f"video {gv.name!r} frame {fi} ({gf.file_name})"
            gts = [_to_pose(p, True, where) for p in gf.people]
            prs = [_to_pose(p, False, where) for p in pf.people]
            if gf.ignore_regions:
                gts = _apply_ignore(gts, gf.ignore_regions)
                prs = _apply_ignore(prs, gf.ignore_regions)
            _assign_frame(gts, prs, thresh, scores, labels, n_gt)
    res = np.array([_joint_metrics(scores[j], labels[j], n_gt[j]) for j in range(15)])
    return PoseTrackAP(ap=res[:, 0], precision=res[:, 1], recall=res[:, 2], num_gt=n_gt)

