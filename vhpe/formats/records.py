"""COCO-like ``images`` / ``annotations`` / ``categories`` records, shared by PoseTrack18/21 per-video files and
COCO keypoints files (``docs/pose-formats.md`` section 1).

Readers: :func:`frames_with_people` turns the records into :class:`~.core.Frame` s with their people (keypoints in
the skeleton's slots, ``one_based`` coordinates shifted to 0-based), :func:`parse_categories` tells the skeleton
from the joint names. Writers: :func:`image_record` and :func:`annotation_record` are their inverses.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..skeleton import POSETRACK18, get_skeleton, skeleton_from_names
from .core import Frame, ParseContext, Person, canonical_extra, derived_area, json_number

# the keys a record's fields are read from; every other key is kept in ``extra``
_PT18_IMAGE_KEYS = ("file_name", "id", "frame_id", "vid_id", "nframes", "is_labeled", "ignore_regions_x",
                    "ignore_regions_y", "width", "height")
_PT18_ANN_KEYS = ("id", "image_id", "track_id", "bbox", "bbox_head", "keypoints", "scores", "score")


def default_categories(skeleton: str = "posetrack18") -> list[dict]:
    """The ``categories`` list written for a skeleton (1-based ``skeleton`` edges as in the official files)."""
    sk = get_skeleton(skeleton)
    return [{"supercategory": "person", "id": 1, "name": "person", "keypoints": list(sk.joints),
             "skeleton": [[a + 1, b + 1] for a, b in sk.edges]}]


def _parse_regions(ctx: ParseContext, img: dict, where: str) -> list[np.ndarray]:
    rx, ry = img.get("ignore_regions_x"), img.get("ignore_regions_y")
    if rx is None and ry is None:
        return []
    if rx is None or ry is None:
        raise ctx.err(where, "ignore_regions_x and ignore_regions_y must be given together")
    if not isinstance(rx, list) or not isinstance(ry, list) or len(rx) != len(ry):
        raise ctx.err(where, "ignore_regions_x / ignore_regions_y must be lists of equal length")
    regions = []
    for i, (xs, ys) in enumerate(zip(rx, ry, strict=True)):
        xs_a = ctx.num_list(xs, f"{where}.ignore_regions_x[{i}]")
        ys_a = ctx.num_list(ys, f"{where}.ignore_regions_y[{i}]", len(xs_a))
        regions.append(np.stack([xs_a, ys_a], axis=1))
    return regions


def _person_from_coco(ctx: ParseContext, a: dict, where: str, k: int, slot_map: list[int] | None,
                      one_based: bool = False) -> Person:
    kp = ctx.num_list(ctx.req(a, "keypoints", where), f"{where}.keypoints",
                      3 * (len(slot_map) if slot_map is not None else k)).reshape(-1, 3)
    scores_raw = a.get("scores")
    scores = None
    if scores_raw is not None and len(scores_raw) > 0:
        scores = ctx.num_list(scores_raw, f"{where}.scores", len(kp))
    if slot_map is not None:  # file joint order -> skeleton slots
        full = np.zeros((k, 3))
        full[slot_map] = kp
        kp = full
        if scores is not None:
            s = np.zeros(k)
            s[slot_map] = scores
            scores = s
    bbox = ctx.num_list(a["bbox"], f"{where}.bbox", 4) if a.get("bbox") is not None else None
    head = ctx.num_list(a["bbox_head"], f"{where}.bbox_head", 4) if a.get("bbox_head") is not None else None
    if one_based:
        lab = ~((kp[:, 0] == 0) & (kp[:, 1] == 0) & (kp[:, 2] == 0))
        kp[lab, :2] -= 1.0
        if bbox is not None:
            bbox[:2] -= 1.0
        if head is not None:
            head[:2] -= 1.0
    track = a.get("track_id")
    p = Person(
        keypoints=kp,
        track_id=None if track is None else ctx.integer(track, f"{where}.track_id"),
        bbox=bbox, bbox_head=head, scores=scores,
        score=None if a.get("score") is None else float(a["score"]),
        id=None if a.get("id") is None else ctx.integer(a["id"], f"{where}.id"),
        extra={key: copy.deepcopy(v) for key, v in a.items() if key not in _PT18_ANN_KEYS},
    )
    canonical_extra(p)
    return p


def _frame_from_coco(ctx: ParseContext, img: dict, where: str) -> Frame:
    name = ctx.req(img, "file_name", where)
    if not isinstance(name, str):
        raise ctx.err(f"{where}.file_name", f"expected a string, got {name!r}")
    img_id = img.get("id")
    return Frame(
        file_name=name,
        id=None if img_id is None else ctx.integer(img_id, f"{where}.id"),
        frame_id=None if img.get("frame_id") is None else ctx.integer(img["frame_id"], f"{where}.frame_id"),
        is_labeled=bool(img["is_labeled"]) if "is_labeled" in img else None,  # resolved by _resolve_labeled
        ignore_regions=_parse_regions(ctx, img, where),
        vid_id=None if img.get("vid_id") is None else str(img["vid_id"]),
        nframes=None if img.get("nframes") is None else ctx.integer(img["nframes"], f"{where}.nframes"),
        width=None if img.get("width") is None else ctx.integer(img["width"], f"{where}.width"),
        height=None if img.get("height") is None else ctx.integer(img["height"], f"{where}.height"),
        extra={key: copy.deepcopy(v) for key, v in img.items() if key not in _PT18_IMAGE_KEYS},
    )


def _resolve_labeled(frames: list[Frame]) -> None:
    """A frame whose record lacks ``is_labeled`` (plain COCO) is labelled when it has people."""
    for f in frames:
        if f.is_labeled is None:
            f.is_labeled = bool(f.people)


def parse_categories(ctx: ParseContext, data: dict, default: str | None) -> tuple[str, list[int] | None, Any]:
    """-> (skeleton name, slot map from file order or None, categories to keep or None)."""
    cats = data.get("categories")
    if not cats:
        if default is None:
            raise ctx.err("categories", "missing; cannot tell the keypoint order")
        return default, None, None
    if not isinstance(cats, list) or not isinstance(cats[0], dict):
        raise ctx.err("categories", "expected a list of category objects")
    person = [c for c in cats if isinstance(c, dict) and c.get("id", 1) == 1] or cats[:1]
    names = ctx.req(person[0], "keypoints", "categories[0]")
    if not isinstance(names, list):
        raise ctx.err("categories[0].keypoints", "expected a list of joint names")
    try:
        sk = skeleton_from_names(names)
        keep = None if cats == default_categories(sk.name) else copy.deepcopy(cats)
        return sk.name, None, keep
    except ValueError:
        pass
    # PoseTrack files may list a subset (poseval accepts 15 names): map by name onto the 17 slots
    if all(n in POSETRACK18.joints for n in names):
        return "posetrack18", [POSETRACK18.index(n) for n in names], None
    raise ctx.err("categories[0].keypoints", f"names {names} match no known skeleton")


def frames_with_people(ctx: ParseContext, images: list, anns: list, skel: str, slot_map: list[int] | None,
                        one_based: bool = False) -> list[Frame]:
    """COCO-like ``images`` + ``annotations`` -> frames (unique ids) with their people attached, labels resolved."""
    k = get_skeleton(skel).num_joints
    frames = [_frame_from_coco(ctx, img, f"images[{i}]") for i, img in enumerate(images)]
    by_id: dict[int, Frame] = {}
    for i, f in enumerate(frames):
        if f.id is None:
            raise ctx.err(f"images[{i}]", "missing key 'id'")
        if f.id in by_id:
            raise ctx.err(f"images[{i}].id", f"duplicate image id {f.id}")
        by_id[f.id] = f
    for j, a in enumerate(anns):
        where = f"annotations[{j}]"
        image_id = ctx.integer(ctx.req(a, "image_id", where), f"{where}.image_id")
        if image_id not in by_id:
            raise ctx.err(f"{where}.image_id", f"image id {image_id} is not in 'images'")
        by_id[image_id].people.append(_person_from_coco(ctx, a, where, k, slot_map, one_based))
    _resolve_labeled(frames)
    return frames


def _flat_keypoints(k: np.ndarray) -> list[float | int]:
    out: list[float | int] = []
    for x, y, v in k:
        out += [float(x), float(y), json_number(v)]
    return out


def image_record(f: Frame, nframes: int) -> dict:
    """The ``images`` record of a frame (``nframes``: the video's length, where the frame does not store one)."""
    d: dict[str, Any] = {"file_name": f.file_name, "id": f.id, "frame_id": f.frame_id, "vid_id": f.vid_id,
                         "nframes": f.nframes if f.nframes is not None else nframes, "is_labeled": bool(f.is_labeled)}
    if f.ignore_regions:
        d["ignore_regions_x"] = [[float(v) for v in r[:, 0]] for r in f.ignore_regions]
        d["ignore_regions_y"] = [[float(v) for v in r[:, 1]] for r in f.ignore_regions]
    if f.width is not None:
        d["width"] = f.width
    if f.height is not None:
        d["height"] = f.height
    d.update(copy.deepcopy(f.extra))
    return d


def annotation_record(p: Person, image_id: int | None, ann_id: int | None, one_based: bool = False,
                      coco_fields: bool = False) -> dict:
    """The ``annotations`` record of a person (``one_based``: keypoints and box corners + 1; ``coco_fields``: add
    ``iscrowd``, ``num_keypoints`` and ``area``)."""
    kp = p.keypoints.copy()
    bbox = None if p.bbox is None else p.bbox.copy()
    head = None if p.bbox_head is None else p.bbox_head.copy()
    if one_based:
        lab = p.annotated()
        kp[lab, :2] += 1.0
        for b in (bbox, head):
            if b is not None:
                b[:2] += 1.0
    d: dict[str, Any] = {"id": ann_id, "image_id": image_id, "category_id": 1, "track_id": p.track_id,
                         "keypoints": _flat_keypoints(kp),
                         "scores": [] if p.scores is None else [float(s) for s in p.scores]}
    if bbox is not None:
        d["bbox"] = [float(v) for v in bbox]
    if head is not None:
        d["bbox_head"] = [float(v) for v in head]
    if p.score is not None:
        d["score"] = float(p.score)
    if coco_fields:
        d["iscrowd"] = 0
        d["num_keypoints"] = int((p.keypoints[:, 2] > 0).sum())
        if bbox is not None:
            d["area"] = derived_area(p.bbox)
    d.update(copy.deepcopy(p.extra))
    return d
