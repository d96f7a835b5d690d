"""Shared pieces of the metrics: pairing prediction videos and frames with the ground truth, table output."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np

from ..formats import Frame, Video


class MissingPredictionError(ValueError):
    """Predictions lack a ground-truth video or frame; the message names them."""


class EvaluationWarning(UserWarning):
    """The metric accepted input it had to drop or change; the message says what and how much."""


class NonFiniteKeypointError(ValueError):
    """With ``strict=True``: a prediction holds a NaN or infinite keypoint; the message names where."""


def finite_predictions(pred: list[Video], strict: bool = False) -> list[Video]:
    """``pred`` with every NaN/inf joint treated as missing (``x = y = v = 0``, joint score 0).

    A joint is non-finite when its x, y or joint score is NaN or infinite. Such joints are dropped with one
    :class:`EvaluationWarning` that counts them and names the first places (video, frame, person, joint); with
    ``strict`` they raise :class:`NonFiniteKeypointError` instead. Videos without such joints are returned
    as they are; the others are copied (the input is never modified).
    """
    out, places, joints, people = [], [], 0, 0
    for v in pred:
        bad_frames = {}
        for fi, f in enumerate(v.frames):
            for pi, p in enumerate(f.people):
                bad = ~np.isfinite(p.keypoints[:, :2]).all(axis=1)
                if p.scores is not None:
                    bad |= ~np.isfinite(p.scores)
                if bad.any():
                    bad_frames.setdefault(fi, []).append((pi, np.flatnonzero(bad)))
                    joints += int(bad.sum())
                    people += 1
                    places.append(f"video {v.name!r} frame {fi} ({f.file_name}) person {pi} joints "
                                  f"{np.flatnonzero(bad).tolist()}")
        if not bad_frames:
            out.append(v)
            continue
        v = copy.deepcopy(v)
        for fi, items in bad_frames.items():
            for pi, js in items:
                p = v.frames[fi].people[pi]
                p.keypoints[js] = 0.0
                if p.scores is not None:
                    p.scores[js] = 0.0
        out.append(v)
    if joints:
        where = "; ".join(places[:5]) + (f"; ... ({len(places) - 5} more people)" if len(places) > 5 else "")
        msg = f"{joints} predicted keypoints of {people} people are NaN or infinite: {where}"
        if strict:
            raise NonFiniteKeypointError(msg)
        warnings.warn(f"{msg}; they count as missing joints", EvaluationWarning, stacklevel=3)
    return out


def pair_videos(gt: list[Video], pred: list[Video]) -> list[tuple[Video, Video]]:
    """Pair ground-truth and prediction videos by name; prediction videos without ground truth are not scored
    (an :class:`EvaluationWarning` names them).

    Raises:
        MissingPredictionError: naming the GT videos that have no prediction.
    """
    by_name = {}
    for v in pred:
        if v.name in by_name:
            raise ValueError(f"prediction video {v.name!r} is given twice")
        by_name[v.name] = v
    missing = [v.name for v in gt if v.name not in by_name]
    if missing:
        raise MissingPredictionError(
            f"predictions lack {len(missing)} of the {len(gt)} ground-truth videos: {_names(missing)} "
            f"(predictions have: {_names(sorted(by_name))})")
    gt_names = {v.name for v in gt}
    extra = [v.name for v in pred if v.name not in gt_names]
    if extra:
        warnings.warn(f"{len(extra)} of the {len(pred)} prediction videos have no ground truth and are not scored: "
                      f"{_names(extra)}", EvaluationWarning, stacklevel=3)
    return [(v, by_name[v.name]) for v in gt]


def _names(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def pair_frames(gt: Video, pred: Video, required: list[int] | None = None) -> list[Frame | None]:
    """For each GT frame, the prediction frame of the same image (by id when both sides have ids, else by
    ``file_name``).

    Args:
        gt, pred: a paired video.
        required: indices of the GT frames that must be present (default: every GT frame, as poseval).

    Returns:
        one entry per GT frame: the prediction frame or ``None`` (only for frames not required).

    Raises:
        MissingPredictionError: naming the required GT frames that the prediction lacks.
    """
    use_ids = all(f.id is not None for f in gt.frames) and all(f.id is not None for f in pred.frames)
    keyed = {}
    for f in pred.frames:
        keyed.setdefault(f.id if use_ids else f.file_name, f)
    out = [keyed.get(f.id if use_ids else f.file_name) for f in gt.frames]
    need = range(len(gt.frames)) if required is None else required
    missing = [gt.frames[i].file_name for i in need if out[i] is None]
    if missing:
        raise MissingPredictionError(
            f"prediction video {pred.name!r} lacks {len(missing)} of the {len(gt.frames)} ground-truth frames "
            f"(matched by {'image id' if use_ids else 'file_name'}); missing: {_names(missing)}")
    return out


def clean_number(x: float) -> float | None:
    """NaN -> None (JSON null); other values rounded to 10 decimals (drops 1e-14 noise such as pycocotools'
    ``tp / (tp + fp + eps)``, so a perfect score reads 100.0)."""
    if x is None or math.isnan(float(x)):
        return None
    return round(float(x), 10)


def format_table(title: str, columns: list[str], values: dict[str, float | None], width: int = 7) -> str:
    """A two-line plain-text table: header and one row of values (``-`` for NaN/None)."""
    cells = []
    for c in columns:
        v = values.get(c)
        cells.append("-".rjust(width) if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:{width}.1f}")
    head = " " * len(title) + " " + "".join(c.rjust(width) for c in columns)
    return head + "\n" + title + " " + "".join(cells)
