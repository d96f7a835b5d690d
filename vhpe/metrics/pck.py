"""PCK for single-person video pose (Sub-JHMDB), mmpose ``JhmdbPCKAccuracy`` semantics (``docs/pose-formats.md`` 2.4).

* Normaliser per GT person: ``max(w, h)`` of its GT box (``norm="bbox"``; a person without a box uses its
  labelled keypoints' extent), or the torso ``||left_shoulder - right_hip||`` (``norm="torso"``, tPCK).
* A labelled GT joint (``v > 0``) is correct when ``||pred - gt|| / norm < thr`` (strict, thr = 0.2).
* Predictions are paired with GT people of the same frame by ``track_id`` (when every person has one), else
  greedily by mean joint distance; a GT person without a prediction scores 0 on its joints. Extra
  predictions are ignored.
* Per-joint accuracy over all labelled instances; Mean = mean of the per-joint accuracies of joints with at
  least one labelled instance (Sub-JHMDB: all 15, neck and belly included). The PoseTrack17-style table:
  Head (JHMDB: the ``head`` joint; PoseTrack: mean of nose, head_bottom, head_top), Sho, Elb, Wri, Hip, Knee,
  Ank (mean of left and right), Mean. Percent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..formats import Person, Video
from ..skeleton import get_skeleton
from .common import clean_number, finite_predictions, format_table, pair_frames, pair_videos

COLUMNS = ("Head", "Sho", "Elb", "Wri", "Hip", "Knee", "Ank", "Mean")
_HEAD = {"jhmdb": ("head",), "posetrack18": ("nose", "head_bottom", "head_top"),
         "coco": ("nose", "left_eye", "right_eye", "left_ear", "right_ear")}
_PAIRS = {"Sho": "shoulder", "Elb": "elbow", "Wri": "wrist", "Hip": "hip", "Knee": "knee", "Ank": "ankle"}


@dataclass
class PCKResult:
    """Per-joint accuracy (percent, NaN where a joint has no labelled instance) and counts."""

    skeleton: str
    accuracy: np.ndarray  # (K,)
    count: np.ndarray  # (K,) labelled GT instances per joint

    def summary(self) -> dict[str, float]:
        sk = get_skeleton(self.skeleton)
        acc = self.accuracy

        def mean(names):
            return float(np.mean([acc[sk.index(n)] for n in names]))

        out = {"Head": mean(_HEAD[self.skeleton])}
        for key, part in _PAIRS.items():
            out[key] = mean((f"left_{part}", f"right_{part}"))
        valid = ~np.isnan(acc)
        out["Mean"] = float(acc[valid].mean()) if valid.any() else float("nan")
        return out

    def as_dict(self) -> dict[str, float | None]:
        d: dict[str, float | None] = {k: clean_number(v) for k, v in self.summary().items()}
        for n, a in zip(get_skeleton(self.skeleton).joints, self.accuracy, strict=True):
            d[f"PCK_{n}"] = clean_number(float(a))
        return d

    def table(self, title: str = "PCK@0.2") -> str:
        return format_table(title, list(COLUMNS), self.summary())


def _norm(p: Person, skeleton: str, norm: str, where: str) -> float:
    if norm == "bbox":
        if p.bbox is not None:
            return float(max(p.bbox[2], p.bbox[3]))
        lab = p.keypoints[:, 2] > 0
        if not lab.any():
            return 0.0
        ext = p.keypoints[lab, :2].max(axis=0) - p.keypoints[lab, :2].min(axis=0)
        return float(ext.max())
    if norm == "torso":
        sk = get_skeleton(skeleton)
        a, b = p.keypoints[sk.index("left_shoulder"), :2], p.keypoints[sk.index("right_hip"), :2]
        return float(np.linalg.norm(a - b))
    raise ValueError(f"norm must be 'bbox' or 'torso', got {norm!r}")


def _pair_people(gts: list[Person], prs: list[Person], where: str) -> list[Person | None]:
    """By ``track_id`` when every person on both sides has one; else greedily by mean distance over the GT's
    labelled joints (closest pair first) - e.g. for COCO results lists, which carry no track ids."""
    if all(p.track_id is not None for p in gts + prs) and prs:
        by_track: dict[int, Person] = {}
        for p in prs:
            if p.track_id in by_track:
                raise ValueError(f"{where}: track_id {p.track_id} appears twice among the predictions")
            by_track[p.track_id] = p
        return [by_track.get(g.track_id) for g in gts]
    out: list[Person | None] = [None] * len(gts)
    if not prs:
        return out
    cost = np.full((len(gts), len(prs)), np.inf)
    for i, g in enumerate(gts):
        lab = g.keypoints[:, 2] > 0
        if lab.any():
            for j, p in enumerate(prs):
                cost[i, j] = np.linalg.norm(p.keypoints[lab, :2] - g.keypoints[lab, :2], axis=1).mean()
    for flat in np.argsort(cost, axis=None, kind="stable"):
        i, j = divmod(int(flat), len(prs))
        if not np.isfinite(cost[i, j]):
            break
        if out[i] is None and all(q is not prs[j] for q in out):
            out[i] = prs[j]
    return out


def evaluate_pck(gt: list[Video], pred: list[Video], thr: float = 0.2, norm: str = "bbox",
                 strict: bool = False) -> PCKResult:
    """PCK@thr of predicted videos against GT videos (see module docstring).

    Args:
        gt, pred: videos paired by name, frames by image id / file name (frames with GT people are required).
        thr: threshold on the normalised distance (strict ``<``).
        norm: ``"bbox"`` or ``"torso"``.
        strict: raise on NaN/inf predicted keypoints instead of counting them as missing (with a warning).

    Returns:
        :class:`PCKResult`.
    """
    if not gt:
        raise ValueError("gt must hold at least one video")
    skel = gt[0].skeleton
    for v in list(gt) + list(pred):
        if v.skeleton != skel:
            raise ValueError(f"video {v.name!r} has skeleton {v.skeleton!r}, expected {skel!r} like the GT")
    if skel not in _HEAD:
        raise ValueError(f"PCK table is defined for skeletons {sorted(_HEAD)}, got {skel!r}")
    pred = finite_predictions(pred, strict)
    k = get_skeleton(skel).num_joints
    hits = np.zeros(k)
    count = np.zeros(k)
    for gv, pv in pair_videos(gt, pred):
        required = [i for i, f in enumerate(gv.frames) if f.people]
        pframes = pair_frames(gv, pv, required)
        for i in required:
            gf, pf = gv.frames[i], pframes[i]
            where = f"video {gv.name!r} frame {i} ({gf.file_name})"
            for g, p in zip(gf.people, _pair_people(gf.people, pf.people, where), strict=True):
                lab = g.keypoints[:, 2] > 0
                count += lab
                if p is None:
                    continue
                n = _norm(g, skel, norm, where)
                if n <= 0:  # mmpose: a zero normaliser masks the instance
                    count -= lab
                    continue
                d = np.linalg.norm(p.keypoints[:, :2] - g.keypoints[:, :2], axis=1) / n
                hits += lab & (d < thr)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(count > 0, hits / np.maximum(count, 1) * 100, np.nan)
    return PCKResult(skeleton=skel, accuracy=acc, count=count)
