"""PoseTrack17 ``annolist``: MPII-style, every scalar wrapped in a one-element list.

15 joint ids (poseval's), placed into the 17 PoseTrack18 slots (``neck`` -> ``head_bottom``); ``x1..y2`` of an
``annorect`` is the head box (``docs/pose-formats.md`` section 1). Fields annolist cannot hold travel under extra
keys the official tools ignore (the PoseTrack18 ``id``, ``frame_id``, ``vid_id``, ``nframes``, the person ``bbox``
and ``id``); the two ear slots have no annolist id, so non-empty ears are dropped when writing annolist.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..skeleton import poseval_id_to_slot, slot_to_poseval_id
from .core import Frame, ParseContext, Person, Video, canonical_extra, json_number, load_json, save_json

# keys of an annolist element / annorect that this module writes beyond the PoseTrack17 ones (official tools
# ignore them); they carry what PoseTrack18 holds and annolist cannot
_AL_FRAME_EXT = ("id", "frame_id", "vid_id", "nframes", "width", "height")
_AL_FRAME_KEYS = ("image", "imgnum", "is_labeled", "ignore_regions", "annorect") + _AL_FRAME_EXT
_AL_RECT_EXT = ("bbox", "id")
_AL_RECT_KEYS = ("x1", "y1", "x2", "y2", "score", "track_id", "annopoints") + _AL_RECT_EXT


def _derived_imgnum(file_name: str, index: int) -> int:
    stem = os.path.basename(file_name).split(".")[0].split("_")[0]
    return int(stem) + 1 if stem.isdigit() else index + 1


def annolist_from_dict(data: Any, name: str, path: str | os.PathLike | None = None) -> Video:
    """Parse a PoseTrack17 ``annolist`` dict (see :func:`read_annolist`)."""
    ctx = ParseContext(path)
    al = ctx.req(data, "annolist", "top level")
    if not isinstance(al, list):
        raise ctx.err("annolist", "expected a list")
    frames = []
    for i, el in enumerate(al):
        w = f"annolist[{i}]"
        image = ctx.one(ctx.req(el, "image", w), f"{w}.image")
        fname = ctx.req(image, "name", f"{w}.image[0]")
        f = Frame(file_name=str(fname))
        f.is_labeled = bool(ctx.one(el["is_labeled"], f"{w}.is_labeled")) if "is_labeled" in el else bool(
            el.get("annorect"))
        if "imgnum" in el:
            imgnum = ctx.integer(ctx.one(el["imgnum"], f"{w}.imgnum"), f"{w}.imgnum")
            if imgnum != _derived_imgnum(f.file_name, i):
                f.extra["imgnum"] = [imgnum]
        for key in _AL_FRAME_EXT:
            if key in el:
                setattr(f, key, str(el[key]) if key == "vid_id" else ctx.integer(el[key], f"{w}.{key}"))
        for r, region in enumerate(el.get("ignore_regions") or []):
            pts = ctx.req(region, "point", f"{w}.ignore_regions[{r}]")
            xy = [(ctx.one(ctx.req(p, "x", f"{w}.ignore_regions[{r}].point[{q}]"), f"{w}.ignore_regions[{r}].x"),
                   ctx.one(ctx.req(p, "y", f"{w}.ignore_regions[{r}].point[{q}]"), f"{w}.ignore_regions[{r}].y"))
                  for q, p in enumerate(pts)]
            f.ignore_regions.append(np.asarray(xy, dtype=np.float64).reshape(-1, 2))
        rects = el.get("annorect") or []
        if not isinstance(rects, list):
            raise ctx.err(f"{w}.annorect", "expected a list")
        for j, rect in enumerate(rects):
            f.people.append(_person_from_rect(ctx, rect, f"{w}.annorect[{j}]"))
        f.extra.update({k: copy.deepcopy(v) for k, v in el.items() if k not in _AL_FRAME_KEYS})
        frames.append(f)
    extra = {k: copy.deepcopy(v) for k, v in data.items() if k != "annolist"}
    return Video(name=name, frames=frames, skeleton="posetrack18", extra=extra)


def _person_from_rect(ctx: ParseContext, rect: dict, w: str) -> Person:
    kp = np.zeros((17, 3))
    scores = np.zeros(17)
    has_score = False
    aps = rect.get("annopoints")
    points = []
    if aps:
        ap = aps[0] if isinstance(aps, list) else aps
        points = ap.get("point", []) if isinstance(ap, dict) else []
    for q, pt in enumerate(points):
        pw = f"{w}.annopoints[0].point[{q}]"
        pid = ctx.integer(ctx.one(ctx.req(pt, "id", pw), f"{pw}.id"), f"{pw}.id")
        try:
            slot = poseval_id_to_slot(pid)
        except ValueError as e:
            raise ctx.err(f"{pw}.id", str(e)) from None
        x = float(ctx.one(ctx.req(pt, "x", pw), f"{pw}.x"))
        y = float(ctx.one(ctx.req(pt, "y", pw), f"{pw}.y"))
        v = float(ctx.one(pt["is_visible"], f"{pw}.is_visible")) if "is_visible" in pt else 1.0
        kp[slot] = (x, y, v)
        if "score" in pt:
            scores[slot] = float(ctx.one(pt["score"], f"{pw}.score"))
            has_score = True
    head = None
    if all(k in rect for k in ("x1", "y1", "x2", "y2")):
        x1, y1, x2, y2 = (float(ctx.one(rect[k], f"{w}.{k}")) for k in ("x1", "y1", "x2", "y2"))
        head = np.array([x1, y1, x2 - x1, y2 - y1])
    track = rect.get("track_id")
    p = Person(
        keypoints=kp,
        track_id=None if track is None else ctx.integer(ctx.one(track, f"{w}.track_id"), f"{w}.track_id"),
        bbox=None if rect.get("bbox") is None else ctx.num_list(rect["bbox"], f"{w}.bbox", 4),
        bbox_head=head,
        scores=scores if has_score else None,
        score=None if "score" not in rect else float(ctx.one(rect["score"], f"{w}.score")),
        id=None if rect.get("id") is None else ctx.integer(rect["id"], f"{w}.id"),
        extra={k: copy.deepcopy(v) for k, v in rect.items() if k not in _AL_RECT_KEYS},
    )
    canonical_extra(p)
    return p


def read_annolist(path: str | os.PathLike) -> Video:
    """Read one PoseTrack17 ``annolist`` JSON file (one video, named after the file stem).

    Joints are placed into the 17 PoseTrack18 slots via poseval's ids (``neck`` -> ``head_bottom``); a point
    without ``is_visible`` gets ``v = 1`` (as poseval's converter does).
    """
    return annolist_from_dict(load_json(path), Path(path).stem, path)


def annolist_to_dict(video: Video) -> dict:
    """The PoseTrack17 ``annolist`` dict of a :class:`Video` (PoseTrack18 skeleton only)."""
    if video.skeleton != "posetrack18":
        raise ValueError(f"video.skeleton must be 'posetrack18' to write annolist, got {video.skeleton!r}")
    out = []
    for i, f in enumerate(video.frames):
        extra = copy.deepcopy(f.extra)
        el: dict[str, Any] = {"image": [{"name": f.file_name}],
                              "imgnum": extra.pop("imgnum", [_derived_imgnum(f.file_name, i)]),
                              "is_labeled": [int(bool(f.is_labeled))]}
        if f.ignore_regions:
            el["ignore_regions"] = [{"point": [{"x": [float(x)], "y": [float(y)]} for x, y in r]}
                                    for r in f.ignore_regions]
        el["annorect"] = [_rect_dict(p) for p in f.people]
        for key in _AL_FRAME_EXT:
            if getattr(f, key) is not None:
                el[key] = getattr(f, key)
        el.update(extra)
        out.append(el)
    return {"annolist": out, **copy.deepcopy(video.extra)}


def _rect_dict(p: Person) -> dict:
    lab = p.annotated()
    points = []
    for slot in range(17):
        pid = slot_to_poseval_id(slot)
        if pid is None or not lab[slot]:
            continue
        x, y, v = p.keypoints[slot]
        pt: dict[str, Any] = {"id": [pid], "x": [float(x)], "y": [float(y)], "is_visible": [json_number(v)]}
        if p.scores is not None:
            pt["score"] = [float(p.scores[slot])]
        points.append(pt)
    r: dict[str, Any] = {}
    if p.bbox_head is not None:
        x, y, w, h = (float(v) for v in p.bbox_head)
        r.update(x1=[x], y1=[y], x2=[x + w], y2=[y + h])
    if p.score is not None:
        r["score"] = [float(p.score)]
    if p.track_id is not None:
        r["track_id"] = [p.track_id]
    r["annopoints"] = [{"point": points}]
    if p.bbox is not None:
        r["bbox"] = [float(v) for v in p.bbox]
    if p.id is not None:
        r["id"] = p.id
    r.update(copy.deepcopy(p.extra))
    return r


def write_annolist(video: Video, path: str | os.PathLike) -> None:
    """Write one PoseTrack17 ``annolist`` JSON file."""
    save_json(annolist_to_dict(video), path)
