"""Pose tracking: a ``track_id`` for every person, linking one person's poses over the frames of a video.

Greedy frame-to-frame matching in the style of PoseFlow / LightTrack (simplified: no learned pose similarity):

* a track keeps the last matched pose, joint scores and box, the step it was last matched at and a velocity (the
  box centre's displacement per frame, smoothed); at a new frame each live track is *predicted* forward by that
  velocity over the frames since its last match (``motion=True``), so a moving person lost for a few frames is
  looked for where it went, not where it was;
* a (track, pose) pair is compared by **OKS** (:func:`vhpe.metrics.coco.compute_oks`, the metric's formula and
  per-joint sigmas, :data:`vhpe.skeleton.POSETRACK15` by default) over the joints confident on both sides
  (score >= ``kpt_thr``), with the track's box area as the scale, when at least ``min_keypoints`` such joints
  exist; otherwise by **box IoU**. A pair is a candidate when its OKS >= ``oks_threshold`` (resp. its IoU >=
  ``iou_threshold``);
* candidates are matched greedily, best first: all OKS candidates, then the IoU candidates among what is left
  (the pose is the stronger cue); ties go to the lower track id, then the lower pose index;
* a track unmatched for up to ``max_age`` consecutive frames stays live (it can be re-matched after a short
  occlusion); one more and it is dropped for good. Every unmatched pose starts a new track with the next id
  (0, 1, 2, ... in order of appearance; ids are never reused).

The result is a pure function of the inputs (no randomness, stable sorts).

:class:`PoseTracker` tracks one stream (the demo, a live camera); :func:`track_clips` tracks the per-clip
predictions of an evaluation run video by video, and :func:`track_dataset` those of a clip dataset
(``glsmamba eval --checkpoint`` with detection boxes).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .metrics.coco import compute_oks
from .skeleton import POSETRACK15


@dataclass
class Track:
    """One tracked person: the state after its last match."""

    track_id: int
    keypoints: np.ndarray  # (J, 2)
    scores: np.ndarray  # (J,)
    box: np.ndarray  # (4,) x, y, w, h
    last_step: int  # the update step of the last match
    velocity: np.ndarray  # (2,) box-centre displacement per step
    hits: int = 1  # matches so far

    def predicted(self, step: int, motion: bool) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints ``(J, 2)`` and box ``(4,)`` moved to ``step`` by the velocity (unchanged without motion)."""
        if not motion:
            return self.keypoints, self.box
        shift = self.velocity * (step - self.last_step)
        return self.keypoints + shift, np.concatenate([self.box[:2] + shift, self.box[2:]])


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``[x, y, w, h]`` boxes (0 when both are empty)."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def _centre(box: np.ndarray) -> np.ndarray:
    return box[:2] + box[2:] / 2


class PoseTracker:
    """Assigns track ids to the poses of consecutive frames (see the module docstring).

    Args:
        max_age: frames a track may go unmatched and still be re-matched (0 = only the previous frame's).
        oks_threshold: minimum OKS of a pose match.
        iou_threshold: minimum box IoU of a match when the poses have too few confident joints in common.
        kpt_thr: joint score from which a joint counts as confident.
        min_keypoints: confident joints (on both sides) needed to compare two poses by OKS.
        motion: predict each track forward by its box-centre velocity before comparing.
        sigmas: per-joint OKS sigmas (default :data:`vhpe.skeleton.POSETRACK15`'s, i.e. COCO's).
        smoothing: weight of the previous velocity when a track is matched again (0 = the last displacement).
    """

    def __init__(self, max_age: int = 5, oks_threshold: float = 0.5, iou_threshold: float = 0.3,
                 kpt_thr: float = 0.3, min_keypoints: int = 4, motion: bool = True,
                 sigmas: Sequence[float] | None = None, smoothing: float = 0.5):
        if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0:
            raise ValueError(f"max_age must be an integer >= 0, got {max_age!r}")
        for name, v in (("oks_threshold", oks_threshold), ("iou_threshold", iou_threshold),
                        ("smoothing", smoothing)):
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if isinstance(min_keypoints, bool) or not isinstance(min_keypoints, int) or min_keypoints < 1:
            raise ValueError(f"min_keypoints must be an integer >= 1, got {min_keypoints!r}")
        self.sigmas = np.asarray(POSETRACK15.sigmas if sigmas is None else sigmas, dtype=np.float64)
        if self.sigmas.ndim != 1 or len(self.sigmas) == 0 or not (self.sigmas > 0).all():
            raise ValueError(f"sigmas must be a non-empty list of positive numbers, got shape {self.sigmas.shape}")
        self.max_age, self.oks_threshold, self.iou_threshold = max_age, float(oks_threshold), float(iou_threshold)
        self.kpt_thr, self.min_keypoints, self.motion = float(kpt_thr), min_keypoints, bool(motion)
        self.smoothing = float(smoothing)
        self.tracks: list[Track] = []  # live tracks, in id order
        self.step = -1  # index of the last update (frames seen - 1)
        self.next_id = 0

    def settings(self) -> dict[str, Any]:
        """The matching parameters (recorded next to the results)."""
        return {"max_age": self.max_age, "oks_threshold": self.oks_threshold, "iou_threshold": self.iou_threshold,
                "kpt_thr": self.kpt_thr, "min_keypoints": self.min_keypoints, "motion": self.motion}

    # ------------------------------------------------------------------------------------------ input checks
    def _inputs(self, poses, boxes, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        j = len(self.sigmas)
        kp = np.asarray(poses, dtype=np.float64)
        if kp.size == 0 and kp.ndim < 3:
            kp = kp.reshape(0, j, 2)
        if kp.ndim != 3 or kp.shape[1:] != (j, 2):
            raise ValueError(f"poses must have shape (N, {j}, 2), got {kp.shape}")
        n = kp.shape[0]
        sc = np.ones((n, j)) if scores is None else np.asarray(scores, dtype=np.float64)
        if sc.size == 0 and n == 0:
            sc = sc.reshape(0, j)
        if sc.shape != (n, j):
            raise ValueError(f"scores must have shape ({n}, {j}) (one per joint of each pose), got {sc.shape}")
        if boxes is None:
            bx = np.zeros((n, 4))
            for i in range(n):  # the extent of the confident joints (all joints when none is)
                pts = kp[i][sc[i] >= self.kpt_thr] if (sc[i] >= self.kpt_thr).any() else kp[i]
                lo, hi = pts.min(axis=0), pts.max(axis=0)
                bx[i] = [lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]]
        else:
            bx = np.asarray(boxes, dtype=np.float64)
            if bx.size == 0 and n == 0:
                bx = bx.reshape(0, 4)
            if bx.shape != (n, 4):
                raise ValueError(f"boxes must have shape ({n}, 4) ([x, y, w, h] per pose), got {bx.shape}")
        if not (np.isfinite(kp).all() and np.isfinite(bx).all()):
            raise ValueError("poses and boxes must be finite (NaN or inf found)")
        return kp, sc, bx

    # ------------------------------------------------------------------------------------------ matching
    def _similarity(self, track: Track, kp: np.ndarray, sc: np.ndarray, box: np.ndarray,
                    step: int) -> tuple[str, float]:
        """``("oks", value)`` when enough joints are confident on both sides, else ``("iou", value)``."""
        t_kp, t_box = track.predicted(step, self.motion)
        common = (track.scores >= self.kpt_thr) & (sc >= self.kpt_thr)
        if int(common.sum()) >= self.min_keypoints:
            gt = np.concatenate([t_kp, common[:, None].astype(np.float64)], axis=1)
            area = max(float(t_box[2] * t_box[3]), 1.0)
            return "oks", float(compute_oks(gt, area, t_box, kp[None], self.sigmas)[0])
        return "iou", box_iou(t_box, box)

    def update(self, poses, boxes=None, scores=None) -> list[int]:
        """Track the people of the next frame.

        Args:
            poses: ``(N, J, 2)`` keypoints in image pixels (``N`` may be 0: a frame with nobody still ages the
                tracks).
            boxes: ``(N, 4)`` person boxes ``[x, y, w, h]``; ``None`` = the extent of each pose's confident joints.
            scores: ``(N, J)`` joint scores; ``None`` = every joint confident.

        Returns:
            the track id of each pose, in input order.

        Raises:
            ValueError: an argument of the wrong shape, or non-finite coordinates.
        """
        kp, sc, bx = self._inputs(poses, boxes, scores)
        self.step += 1
        step = self.step
        self.tracks = [t for t in self.tracks if step - t.last_step - 1 <= self.max_age]
        cands: dict[str, list[tuple[float, int, int, int]]] = {"oks": [], "iou": []}
        for ti, t in enumerate(self.tracks):
            for di in range(len(kp)):
                kind, sim = self._similarity(t, kp[di], sc[di], bx[di], step)
                if sim >= (self.oks_threshold if kind == "oks" else self.iou_threshold):
                    cands[kind].append((-sim, t.track_id, di, ti))
        ids = [-1] * len(kp)
        used: set[int] = set()
        for kind in ("oks", "iou"):
            for _, _, di, ti in sorted(cands[kind]):
                if ids[di] < 0 and ti not in used:
                    ids[di] = self.tracks[ti].track_id
                    used.add(ti)
                    self._refresh(self.tracks[ti], kp[di], sc[di], bx[di], step)
        for di in range(len(kp)):
            if ids[di] < 0:
                ids[di] = self.next_id
                self.tracks.append(Track(self.next_id, kp[di].copy(), sc[di].copy(), bx[di].copy(), step,
                                         np.zeros(2)))
                self.next_id += 1
        return ids

    def _refresh(self, t: Track, kp: np.ndarray, sc: np.ndarray, box: np.ndarray, step: int) -> None:
        """A match: the new pose replaces the old, the velocity follows the box centre."""
        moved = (_centre(box) - _centre(t.box)) / (step - t.last_step)
        t.velocity = moved if t.hits == 1 else self.smoothing * t.velocity + (1 - self.smoothing) * moved
        t.keypoints, t.scores, t.box, t.last_step = kp.copy(), sc.copy(), box.copy(), step
        t.hits += 1

    def assign(self, instances: list[dict[str, Any]]) -> list[int]:
        """:meth:`update` on one frame of the demo's instance dicts (``keypoints``, ``keypoint_scores``,
        ``bbox``); sets each instance's ``track_id`` and returns the ids."""
        j = len(self.sigmas)
        kp = np.asarray([inst["keypoints"] for inst in instances], dtype=np.float64).reshape(-1, j, 2)
        sc = np.asarray([inst["keypoint_scores"] for inst in instances], dtype=np.float64).reshape(-1, j)
        bx = np.asarray([inst["bbox"] for inst in instances], dtype=np.float64).reshape(-1, 4)
        ids = self.update(kp, bx, sc)
        for inst, tid in zip(instances, ids, strict=True):
            inst["track_id"] = tid
        return ids


def track_clips(video_index, frame_index, keypoints, scores, boxes, frames: dict[int, Sequence[int]] | None = None,
                **tracker_args) -> np.ndarray:
    """Track the people of per-clip predictions (one row per person and frame, any order), video by video.

    Args:
        video_index, frame_index: ``(N,)`` the video and the frame of each row.
        keypoints: ``(N, J, 2)``; scores: ``(N, J)``; boxes: ``(N, 4)`` ``[x, y, w, h]``.
        frames: per video, the frame indices the tracker steps through in order (e.g. every labelled frame, so
            that a frame where nobody was detected still ages the tracks); default = the frames with rows.
        tracker_args: :class:`PoseTracker` parameters.

    Returns:
        ``(N,)`` int64 track ids (unique within a video's frame; ids restart at 0 in each video).
    """
    vid = np.asarray(video_index, dtype=np.int64).reshape(-1)
    fr = np.asarray(frame_index, dtype=np.int64).reshape(-1)
    n = len(vid)
    kp, sc, bx = np.asarray(keypoints, np.float64), np.asarray(scores, np.float64), np.asarray(boxes, np.float64)
    if fr.shape != (n,) or len(kp) != n or len(sc) != n or bx.shape != (n, 4):
        raise ValueError(f"track_clips: video_index {vid.shape}, frame_index {fr.shape}, keypoints {kp.shape}, "
                         f"scores {sc.shape} and boxes {bx.shape} must describe the same N = {n} rows")
    out = np.full(n, -1, dtype=np.int64)
    for v in sorted(set(vid.tolist())):
        rows = np.flatnonzero(vid == v)
        by_frame: dict[int, list[int]] = {}
        for r in rows:
            by_frame.setdefault(int(fr[r]), []).append(int(r))
        steps = sorted(set(frames[v]) | set(by_frame)) if frames is not None and v in frames else sorted(by_frame)
        tracker = PoseTracker(**tracker_args)
        for f in steps:
            r = by_frame.get(f, [])
            out[r] = tracker.update(kp[r], bx[r], sc[r])
    return out


def track_dataset(dataset, keypoints, scores, **tracker_args) -> np.ndarray:
    """Track ids for the predictions of a :class:`~vhpe.dataset.PoseTrackClipDataset` (one row per clip, dataset
    order): :func:`track_clips` over each video's labelled frames, with the clips' person boxes."""
    samples = dataset.samples
    if len(samples) != len(keypoints):
        raise ValueError(f"track_dataset: {len(keypoints)} predictions for {len(samples)} clips")
    frames = {vi: [fi for fi, f in enumerate(v.frames) if f.is_labeled] for vi, v in enumerate(dataset.videos)}
    boxes = np.asarray([s.box for s in samples], dtype=np.float64).reshape(-1, 4)
    return track_clips([s.video for s in samples], [s.frame for s in samples], keypoints, scores, boxes, frames,
                       **tracker_args)


def track_color(track_id: int) -> tuple[int, int, int]:
    """The drawing colour of a track: a 24-colour palette indexed by ``track_id`` (hues spread by the golden
    ratio, so consecutive ids differ strongly); -1 or ``None`` (no track) -> green."""
    if track_id is None or track_id < 0:
        return (0, 255, 0)
    return TRACK_PALETTE[int(track_id) % len(TRACK_PALETTE)]


TRACK_PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb((0.61803398875 * k) % 1.0, 0.85 if k % 2 else 1.0,
                                                            1.0 if k % 3 else 0.8))
    for k in range(24))
