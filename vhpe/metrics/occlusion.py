"""Accuracy on occluded joints: PoseTrack-style AP and PCKh on occluded / visible / all labelled joints.

For data whose ground truth marks occluded joints (``glsmamba synth`` writes a per-person ``occluded`` list in the
17 PoseTrack18 slots), evaluated with GT boxes: each clip's prediction belongs to the GT person whose box produced
it, so no matching is needed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..skeleton import POSETRACK15, SLOTS_15
from .posetrack import voc_ap


def _subset_ap(scores: np.ndarray, correct: np.ndarray) -> float:
    """VOC all-point AP (percent) of joint detections ranked by score, recall over all of them (every GT joint
    of the subset has exactly one prediction)."""
    if len(scores) == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(correct[order]).astype(np.float64)
    return voc_ap(tp / len(scores), tp / np.arange(1, len(scores) + 1)) * 100


def occlusion_metrics(dataset, preds, thresh: float = 0.5) -> dict[str, Any] | None:
    """PoseTrack-style AP and PCKh on occluded / visible / all labelled joints (GT boxes only).

    Each clip's prediction belongs to the GT person whose box produced it. A joint is correct when its distance to
    the GT is at most ``thresh`` x the head size (0.6 x head-box diagonal, as the PoseTrack metric); per joint
    type, the detections are ranked by score (joint confidence x box score) into a VOC AP (recall over the subset's
    GT joints); ``AP`` = mean over joint types present, ``PCKh`` = fraction correct.

    Args:
        dataset: the clips (a :class:`~vhpe.dataset.PoseTrackClipDataset`; ``samples[i].person`` is the GT person
            of clip ``i``).
        preds: the decoded predictions in dataset order (a :class:`~vhpe.infer.Predictions`: ``keypoints``
            ``(N, 15, 2)``, ``scores`` ``(N, 15)``, ``box_scores`` ``(N,)``).
        thresh: the PCKh threshold (fraction of the head size).

    Returns:
        ``{"occluded": {...}, "visible": {...}, "all": {...}}`` with ``AP``, ``PCKh``, ``joints`` (count) and
        ``AP_<joint>``; ``None`` when the dataset has no GT people (detection boxes) or no occlusion flags.
    """
    samples = dataset.samples
    if len(samples) != len(preds.keypoints) or any(s.person is None for s in samples):
        return None
    if not any("occluded" in s.person.extra for s in samples):
        return None
    occ_rows, lab_rows, correct_rows = [], [], []
    for s, kp in zip(samples, preds.keypoints, strict=True):
        p = s.person
        gt = p.keypoints[list(SLOTS_15), :2]
        lab = p.annotated()[list(SLOTS_15)]
        occ = np.asarray(p.extra.get("occluded", [0] * 17), dtype=bool)[list(SLOTS_15)] & lab
        if p.bbox_head is None:
            raise ValueError("occlusion metrics need the GT head boxes (bbox_head) for the PCKh threshold")
        head = 0.6 * float(np.hypot(p.bbox_head[2], p.bbox_head[3]))
        correct_rows.append(np.linalg.norm(kp - gt, axis=1) <= thresh * head)
        occ_rows.append(occ)
        lab_rows.append(lab)
    occ, lab, correct = np.stack(occ_rows), np.stack(lab_rows), np.stack(correct_rows)
    scores = preds.scores * preds.box_scores[:, None]
    out: dict[str, Any] = {}
    for name, mask in (("occluded", occ), ("visible", lab & ~occ), ("all", lab)):
        aps = {}
        for j, joint in enumerate(POSETRACK15.joints):
            sel = mask[:, j]
            if sel.any():
                aps[joint] = _subset_ap(scores[sel, j], correct[sel, j])
        n = int(mask.sum())
        out[name] = {
            "AP": float(np.mean(list(aps.values()))) if aps else None,
            "PCKh": float(correct[mask].mean() * 100) if n else None,
            "joints": n,
            **{f"AP_{k}": v for k, v in aps.items()},
        }
    return out
