"""COCO keypoints: ground truth (``images`` / ``annotations`` / ``categories``, several videos in one file) and
results lists (``[{image_id, category_id, keypoints, score}]``), ``docs/pose-formats.md`` section 1.

Images are grouped into videos by ``vid_id`` (else by their folder). The writer adds the fields that are pure
functions of others (``area = w*h``, ``iscrowd = 0``, ``num_keypoints = #(v>0)``); readers drop them again where
they equal that derivation.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np

from .core import Frame, ParseContext, Person, Video, load_json, person_score, save_json
from .records import annotation_record, default_categories, frames_with_people, image_record, parse_categories


def _video_key(f: Frame) -> str:
    return f.vid_id if f.vid_id is not None else os.path.dirname(f.file_name)


def coco_from_dict(data: Any, path: str | os.PathLike | None = None, one_based: bool | None = None,
                   default_skeleton: str | None = None) -> list[Video]:
    """Parse a COCO keypoints ground-truth dict into videos (see :func:`read_coco`); ``default_skeleton`` is
    used when the file has no ``categories``."""
    ctx = ParseContext(path)
    if not isinstance(data, dict):
        raise ctx.err("top level", f"expected an object with 'images' and 'annotations', got {type(data).__name__}")
    images = ctx.req(data, "images", "top level")
    anns = ctx.req(data, "annotations", "top level")
    if not isinstance(images, list) or not isinstance(anns, list):
        raise ctx.err("top level", "'images' and 'annotations' must be lists")
    skel, slot_map, cats = parse_categories(ctx, data, default_skeleton)
    if one_based is None:
        one_based = skel == "jhmdb"
    frames = frames_with_people(ctx, images, anns, skel, slot_map, one_based)
    groups: dict[str, list[Frame]] = {}
    for f in frames:
        groups.setdefault(_video_key(f), []).append(f)
    videos = []
    for key, fs in groups.items():
        name = fs[0].extra.pop("video_name", None) or os.path.basename(os.path.dirname(fs[0].file_name)) or key
        for f in fs[1:]:
            f.extra.pop("video_name", None)
        extra = {"categories": cats} if cats is not None else {}
        videos.append(Video(name=str(name), frames=fs, skeleton=skel, extra=extra))
    return videos


def read_coco(path: str | os.PathLike, one_based: bool | None = None) -> list[Video]:
    """Read a COCO keypoints ground-truth file; images are grouped into videos.

    Images are grouped by ``vid_id`` (else by their folder); a video is named after the folder of its first
    image (PoseTrack: ``images/val/<video>/000000.jpg``). ``one_based`` subtracts 1 from labelled keypoints and
    box corners; ``None`` = true for the JHMDB skeleton (mmpose's Sub-JHMDB JSONs are 1-based).
    """
    return coco_from_dict(load_json(path), path, one_based)


def coco_to_dict(videos: list[Video], one_based: bool | None = None, labeled_only: bool = False) -> dict:
    """One COCO keypoints dict for several videos (same skeleton).

    Adds the COCO fields ``area`` (box w*h), ``iscrowd`` (0) and ``num_keypoints`` where the person lacks them.
    ``labeled_only`` keeps only frames with ``is_labeled``. Missing image ids are numbered 1, 2, ...
    """
    if not videos:
        raise ValueError("videos must not be empty")
    skels = {v.skeleton for v in videos}
    if len(skels) != 1:
        raise ValueError(f"all videos must share one skeleton, got {sorted(skels)}")
    skel = skels.pop()
    if one_based is None:
        one_based = skel == "jhmdb"
    images, anns = [], []
    next_id = 1
    used = {f.id for v in videos for f in v.frames if f.id is not None}
    ann_ids = set()
    for v in videos:
        for fi, f in enumerate(v.frames):
            if labeled_only and not f.is_labeled:
                continue
            fid = f.id
            if fid is None:
                while next_id in used:
                    next_id += 1
                fid = next_id
                used.add(fid)
            img = image_record(f, len(v.frames))
            img["id"] = fid
            if img["frame_id"] is None:
                img["frame_id"] = fid
            if fi == 0 and v.name != os.path.basename(os.path.dirname(f.file_name)):
                img["video_name"] = v.name
            images.append(img)
            for pi, p in enumerate(f.people):
                aid = p.id if p.id is not None else fid * 100 + pi
                while aid in ann_ids:
                    aid += 1
                ann_ids.add(aid)
                anns.append(annotation_record(p, fid, aid, one_based=one_based, coco_fields=True))
    cats = videos[0].extra.get("categories") or default_categories(skel)
    return {"images": images, "annotations": anns, "categories": copy.deepcopy(cats)}


def write_coco(videos: list[Video], path: str | os.PathLike, one_based: bool | None = None,
               labeled_only: bool = False) -> None:
    """Write one COCO keypoints ground-truth file for several videos (see :func:`coco_to_dict`)."""
    save_json(coco_to_dict(videos, one_based, labeled_only), path)


def coco_results_to_list(videos: list[Video]) -> list[dict]:
    """COCO results list (``[{image_id, category_id, keypoints, score}]``) of predicted videos.

    ``keypoints`` holds ``x, y, joint score`` (the stored ``v`` where the person has no joint scores);
    ``score`` is the person score, else the mean joint score over annotated joints, else 1.
    """
    out = []
    for v in videos:
        for fi, f in enumerate(v.frames):
            fid = f.id if f.id is not None else fi
            out += [coco_result(p, fid) for p in f.people]
    return out


def coco_result(p: Person, image_id: int) -> dict:
    """One COCO results entry: ``keypoints`` = ``x, y, joint score`` (the stored ``v`` where the person has no
    joint scores), ``score`` = :func:`person_score`."""
    k = p.keypoints.copy()
    if p.scores is not None:
        k[:, 2] = p.scores
    return {"image_id": image_id, "category_id": 1, "keypoints": [float(x) for x in k.reshape(-1)],
            "score": person_score(p)}


def coco_results_from_list(results: Any, gt: list[Video], path: str | os.PathLike | None = None) -> list[Video]:
    """Place a COCO results list onto the frames of ground-truth videos (same names, files and ids).

    Raises:
        FormatError: an entry's ``image_id`` is not a GT image, or keypoints have the wrong length.
    """
    ctx = ParseContext(path)
    if not isinstance(results, list):
        raise ctx.err("top level", f"expected a list of results, got {type(results).__name__}")
    out = []
    where_frame: dict[int, Frame] = {}
    k = None
    for v in gt:
        nv = Video(name=v.name, skeleton=v.skeleton, extra={})
        k = v.num_joints
        for fi, f in enumerate(v.frames):
            nf = Frame(file_name=f.file_name, id=f.id, frame_id=f.frame_id, is_labeled=f.is_labeled,
                       vid_id=f.vid_id, nframes=f.nframes, width=f.width, height=f.height)
            nv.frames.append(nf)
            where_frame[f.id if f.id is not None else fi] = nf
        out.append(nv)
    for j, r in enumerate(results):
        w = f"[{j}]"
        image_id = ctx.integer(ctx.req(r, "image_id", w), f"{w}.image_id")
        if image_id not in where_frame:
            raise ctx.err(f"{w}.image_id", f"image id {image_id} is not in the ground truth")
        kp = ctx.num_list(ctx.req(r, "keypoints", w), f"{w}.keypoints", 3 * k).reshape(-1, 3)
        p = Person(keypoints=np.concatenate([kp[:, :2], np.ones((len(kp), 1))], axis=1), scores=kp[:, 2].copy(),
                   score=float(ctx.req(r, "score", w)),
                   track_id=None if r.get("track_id") is None else ctx.integer(r["track_id"], f"{w}.track_id"))
        where_frame[image_id].people.append(p)
    return out
