"""COCO keypoint AP/AR (OKS), a NumPy re-implementation of pycocotools' ``COCOeval(iouType="keypoints")``.

Written here so that evaluation needs no compiled extra; ``tests/test_vhpe_metrics.py`` checks it against
hand-computed cases and, when ``pycocotools`` is installed, against it. Semantics (``docs/pose-formats.md`` 2.3):

* OKS between a detection and a GT: ``mean over labelled GT joints (v > 0) of exp(-d^2 / (2 s^2 k^2))`` with
  ``s^2 = GT area``, ``k = 2 sigma``; a GT without labelled joints uses the distance to its box enlarged by one
  box size on each side, over all joints. GTs with ``iscrowd`` or ``num_keypoints == 0`` are ignored (may be
  matched, never counted).
* Per image, detections sorted by score (stable), at most ``maxDets = 20``; greedy matching at each of the ten
  OKS thresholds 0.50:0.05:0.95, preferring unmatched non-ignored GTs.
* Area ranges all / medium (32^2..96^2) / large (> 96^2) on GT ``area`` (missing = box w*h) and, for unmatched
  detections, on the detection's keypoint-extent area.
* Precision interpolated at 101 recall points; AP = mean over thresholds and recall points (entries with no
  GT excluded); AR = mean recall over thresholds.

Numbers are returned in percent (x100): ``AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ..formats import FormatError, Video, coco_result
from ..skeleton import get_skeleton, skeleton_from_names
from .common import (
    EvaluationWarning,
    NonFiniteKeypointError,
    clean_number,
    finite_predictions,
    format_table,
    pair_frames,
    pair_videos,
)

COLUMNS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
IOU_THRS = np.linspace(0.5, 0.95, 10)
REC_THRS = np.linspace(0.0, 1.0, 101)
AREA_RANGES = {"all": (0.0, 1e5**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e5**2)}
MAX_DETS = 20
_EPS = np.spacing(1)


@dataclass
class CocoResult:
    """``stats`` in pycocotools order (fractions, -1 where undefined) plus the raw precision / recall arrays."""

    stats: np.ndarray  # (10,)
    precision: np.ndarray  # (T, R, A) -1 = undefined
    recall: np.ndarray  # (T, A)

    def as_dict(self) -> dict[str, float | None]:
        """Named numbers in percent; an undefined entry (-1) becomes ``None``."""
        return {k: (None if v < 0 else clean_number(float(v) * 100)) for k, v in zip(COLUMNS, self.stats, strict=True)}

    def table(self) -> str:
        return format_table("COCO OKS", list(COLUMNS), self.as_dict())


def compute_oks(gt_kpts: np.ndarray, gt_area: float, gt_bbox: np.ndarray, det_kpts: np.ndarray,
                sigmas: np.ndarray) -> np.ndarray:
    """OKS of several detections against one GT (pycocotools ``computeOks``).

    Args:
        gt_kpts: ``(K, 3)`` x, y, v.
        gt_area: GT area (scale squared).
        gt_bbox: ``(4,)`` x, y, w, h (used only when no joint is labelled).
        det_kpts: ``(D, K, >=2)``.
        sigmas: ``(K,)``.

    Returns:
        ``(D,)`` OKS.
    """
    var = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    xg, yg, vg = gt_kpts[:, 0], gt_kpts[:, 1], gt_kpts[:, 2]
    labelled = vg > 0
    xd, yd = det_kpts[..., 0], det_kpts[..., 1]
    if labelled.any():
        dx, dy = xd - xg, yd - yg
    else:
        x0, x1 = gt_bbox[0] - gt_bbox[2], gt_bbox[0] + 2 * gt_bbox[2]
        y0, y1 = gt_bbox[1] - gt_bbox[3], gt_bbox[1] + 2 * gt_bbox[3]
        dx = np.maximum(0, x0 - xd) + np.maximum(0, xd - x1)
        dy = np.maximum(0, y0 - yd) + np.maximum(0, yd - y1)
    e = (dx**2 + dy**2) / var / (gt_area + _EPS) / 2
    if labelled.any():
        e = e[:, labelled]
    return np.exp(-e).sum(axis=1) / e.shape[1]


def _image_eval(gts: list[dict], dts: list[dict], sigmas: np.ndarray, area_rng: tuple[float, float]) -> dict | None:
    if not gts and not dts:
        return None
    g_ign = np.array([bool(g["_ignore"]) or not (area_rng[0] <= g["_area"] <= area_rng[1]) for g in gts],
                     dtype=bool)
    g_order = np.argsort(g_ign, kind="stable")
    gts = [gts[i] for i in g_order]
    g_ign = g_ign[g_order]
    d_order = np.argsort([-d["score"] for d in dts], kind="stable")[:MAX_DETS]
    dts = [dts[i] for i in d_order]
    crowd = np.array([bool(g["_crowd"]) for g in gts], dtype=bool)
    if gts and dts:
        dk = np.stack([d["_kpts"] for d in dts])
        ious = np.stack([compute_oks(g["_kpts"], g["_area"], g["_bbox"], dk, sigmas) for g in gts], axis=1)
    else:
        ious = np.zeros((len(dts), len(gts)))
    t_n, g_n, d_n = len(IOU_THRS), len(gts), len(dts)
    gtm = np.zeros((t_n, g_n), dtype=bool)
    dtm = np.zeros((t_n, d_n), dtype=bool)
    dt_ig = np.zeros((t_n, d_n), dtype=bool)
    for ti, t in enumerate(IOU_THRS):
        for di in range(d_n):
            iou = min(t, 1 - 1e-10)
            m = -1
            for gi in range(g_n):
                if gtm[ti, gi] and not crowd[gi]:
                    continue
                if m > -1 and not g_ign[m] and g_ign[gi]:
                    break
                if ious[di, gi] < iou:
                    continue
                iou = ious[di, gi]
                m = gi
            if m == -1:
                continue
            dt_ig[ti, di] = g_ign[m]
            dtm[ti, di] = True
            gtm[ti, m] = True
    d_out = np.array([not (area_rng[0] <= d["_area"] <= area_rng[1]) for d in dts], dtype=bool)
    dt_ig = dt_ig | (~dtm & d_out[None])
    return {"scores": np.array([d["score"] for d in dts], dtype=np.float64), "dtm": dtm, "dt_ig": dt_ig,
            "g_ign": g_ign}


def _accumulate(evals: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    t_n, r_n = len(IOU_THRS), len(REC_THRS)
    precision = -np.ones((t_n, r_n))
    recall = -np.ones(t_n)
    if not evals:
        return precision, recall
    scores = np.concatenate([e["scores"] for e in evals])
    order = np.argsort(-scores, kind="mergesort")
    dtm = np.concatenate([e["dtm"] for e in evals], axis=1)[:, order]
    dt_ig = np.concatenate([e["dt_ig"] for e in evals], axis=1)[:, order]
    npig = int(sum((~e["g_ign"]).sum() for e in evals))
    if npig == 0:
        return precision, recall
    tps = np.cumsum(dtm & ~dt_ig, axis=1).astype(np.float64)
    fps = np.cumsum(~dtm & ~dt_ig, axis=1).astype(np.float64)
    for t in range(t_n):
        tp, fp = tps[t], fps[t]
        nd = len(tp)
        rc = tp / npig
        pr = tp / (fp + tp + _EPS)
        recall[t] = rc[-1] if nd else 0
        pr = np.maximum.accumulate(pr[::-1])[::-1] if nd else pr
        q = np.zeros(r_n)
        inds = np.searchsorted(rc, REC_THRS, side="left")
        valid = inds < nd
        q[valid] = pr[inds[valid]]
        precision[t] = q
    return precision, recall


def _prepare(gt: dict, results: list[dict], path_gt: str, path_pred: str, strict: bool = False):
    if not isinstance(gt, dict) or "images" not in gt or "annotations" not in gt:
        raise FormatError(f"{path_gt}: top level: expected a COCO dict with 'images' and 'annotations'")
    cats = gt.get("categories") or []
    sk = skeleton_from_names(cats[0]["keypoints"]) if cats and "keypoints" in cats[0] else get_skeleton("coco")
    k = sk.num_joints
    img_ids = [img["id"] for img in gt["images"]]
    img_set = set(img_ids)
    gts: dict[int, list[dict]] = {i: [] for i in img_ids}
    for j, a in enumerate(gt["annotations"]):
        kp = np.asarray(a["keypoints"], dtype=np.float64)
        if kp.shape != (3 * k,):
            raise FormatError(f"{path_gt}: annotations[{j}].keypoints: expected {3 * k} values, got {kp.size}")
        kp = kp.reshape(k, 3)
        bbox = np.asarray(a.get("bbox", [0, 0, 0, 0]), dtype=np.float64)
        area = float(a["area"]) if a.get("area") is not None else float(bbox[2] * bbox[3])
        nk = a.get("num_keypoints", int((kp[:, 2] > 0).sum()))
        crowd = bool(a.get("iscrowd", 0))
        if a["image_id"] not in gts:
            raise FormatError(f"{path_gt}: annotations[{j}].image_id: {a['image_id']} is not in 'images'")
        gts[a["image_id"]].append({"_kpts": kp, "_area": area, "_bbox": bbox, "_crowd": crowd,
                                   "_ignore": crowd or nk == 0})
    dts: dict[int, list[dict]] = {i: [] for i in img_ids}
    cleared: list[tuple[str, int]] = []
    dropped: list[str] = []
    if not isinstance(results, list):
        raise FormatError(f"{path_pred}: top level: expected a list of results")
    for j, r in enumerate(results):
        for key in ("image_id", "keypoints", "score"):
            if key not in r:
                raise FormatError(f"{path_pred}: [{j}]: missing key {key!r}")
        if r["image_id"] not in img_set:
            raise FormatError(f"{path_pred}: [{j}].image_id: {r['image_id']} is not in the ground truth "
                              f"(results do not correspond to the GT set)")
        kp = np.asarray(r["keypoints"], dtype=np.float64)
        if kp.shape != (3 * k,):
            raise FormatError(f"{path_pred}: [{j}].keypoints: expected {3 * k} values, got {kp.size}")
        kp = kp.reshape(k, 3)
        score = float(r["score"])
        bad = ~np.isfinite(kp).all(axis=1)
        if bad.any() or not math.isfinite(score):
            place = f"{path_pred}: [{j}] (image {r['image_id']})"
            if strict:
                raise NonFiniteKeypointError(f"{place}: NaN/inf in " + ("keypoints" if bad.any() else "score"))
            if not math.isfinite(score):
                dropped.append(place)
                continue
            kp = kp.copy()
            kp[bad] = 0.0  # x = y = score = 0: a missing joint
            cleared.append((place, int(bad.sum())))
        if r.get("bbox"):  # pycocotools' loadRes takes the box area when results carry boxes
            area = float(r["bbox"][2] * r["bbox"][3])
        else:  # else the keypoint extent
            area = float((kp[:, 0].max() - kp[:, 0].min()) * (kp[:, 1].max() - kp[:, 1].min()))
        dts[r["image_id"]].append({"_kpts": kp, "_area": area, "score": score})
    _warn_non_finite(cleared, dropped)
    return sorted(img_ids), gts, dts, np.asarray(sk.sigmas, dtype=np.float64)


def _warn_non_finite(cleared: list[tuple[str, int]], dropped: list[str]) -> None:
    if cleared:
        where = "; ".join(f"{p} {n} joints" for p, n in cleared[:5]) + (" ..." if len(cleared) > 5 else "")
        warnings.warn(f"{sum(n for _, n in cleared)} predicted keypoints of {len(cleared)} results are NaN or "
                      f"infinite and count as missing joints: {where}", EvaluationWarning, stacklevel=4)
    if dropped:
        warnings.warn(f"{len(dropped)} results have a NaN/inf score and are not scored: {'; '.join(dropped[:5])}"
                      + (" ..." if len(dropped) > 5 else ""), EvaluationWarning, stacklevel=4)


def results_from_videos(gt: list[Video], pred: list[Video], labeled_only: bool = True,
                        strict: bool = False) -> list[dict]:
    """COCO results list from prediction videos, with image ids taken from the paired GT frames (videos by name,
    frames by id or file name; every labelled GT frame must have a prediction frame).

    Each person is one :func:`vhpe.formats.coco_result` entry: ``keypoints`` = ``x, y, joint score`` (the stored
    ``v`` when a person has no joint scores), ``score`` = :func:`vhpe.formats.person_score`. NaN/inf joints count
    as missing (``strict``: raise), see :func:`.common.finite_predictions`.
    """
    out = []
    for gv, pv in pair_videos(gt, finite_predictions(pred, strict)):
        need = [i for i, f in enumerate(gv.frames) if f.is_labeled or not labeled_only]
        pframes = pair_frames(gv, pv, need)
        for i in need:
            image_id = gv.frames[i].id if gv.frames[i].id is not None else i
            out += [coco_result(p, image_id) for p in pframes[i].people]
    return out


def evaluate_coco(gt: dict, results: list[dict], sigmas=None, path_gt: str = "<gt>",
                  path_pred: str = "<pred>", strict: bool = False) -> CocoResult:
    """COCO keypoint AP/AR.

    Args:
        gt: a COCO keypoints ground-truth dict (``images``, ``annotations``, ``categories``; the category's
            keypoint names pick the default sigmas).
        results: a COCO results list ``[{image_id, keypoints, score}]``.
        sigmas: override the per-joint OKS sigmas ``(K,)``.
        path_gt, path_pred: names used in error messages.
        strict: raise :class:`.common.NonFiniteKeypointError` on a NaN/inf keypoint or score; else such
            keypoints count as missing (x = y = score = 0) and results with a NaN/inf score are not scored,
            each with an :class:`.common.EvaluationWarning`.

    Returns:
        :class:`CocoResult`.
    """
    img_ids, gts, dts, default_sigmas = _prepare(gt, results, path_gt, path_pred, strict)
    sig = default_sigmas if sigmas is None else np.asarray(sigmas, dtype=np.float64)
    precision = -np.ones((len(IOU_THRS), len(REC_THRS), len(AREA_RANGES)))
    recall = -np.ones((len(IOU_THRS), len(AREA_RANGES)))
    for ai, rng in enumerate(AREA_RANGES.values()):
        evals = [e for i in img_ids if (e := _image_eval(gts[i], dts[i], sig, rng)) is not None]
        precision[:, :, ai], recall[:, ai] = _accumulate(evals)

    def summarize(ap: bool, thr: float | None = None, area: int = 0) -> float:
        s = precision[:, :, area] if ap else recall[:, area]
        if thr is not None:
            s = s[int(np.argmin(np.abs(IOU_THRS - thr)))]
        s = s[s > -1]
        return float(s.mean()) if s.size else -1.0

    stats = np.array([summarize(True), summarize(True, 0.5), summarize(True, 0.75), summarize(True, area=1),
                      summarize(True, area=2), summarize(False), summarize(False, 0.5), summarize(False, 0.75),
                      summarize(False, area=1), summarize(False, area=2)])
    return CocoResult(stats=stats, precision=precision, recall=recall)
