"""Pose annotation formats, read into one in-memory model and written back.

Formats (details in ``docs/pose-formats.md`` section 1):

* **PoseTrack18/21** - one COCO-like JSON per video (``images``, ``annotations``, ``categories``); 17 keypoint
  slots, ears empty, ``bbox_head`` per person, ignore regions per image, ``is_labeled`` per frame.
* **PoseTrack17 annolist** - MPII-style, every scalar wrapped in a one-element list, 15 joint ids (poseval's),
  ``x1..y2`` of an ``annorect`` is the head box.
* **COCO keypoints** - ground truth (``images``/``annotations``/``categories``, several videos in one file) and
  results lists (``[{image_id, category_id, keypoints, score}]``).
* **Sub-JHMDB** - ``joint_positions.mat`` (``pos_img`` 2 x 15 x T, MATLAB 1-based; needs scipy) and mmpose-style
  COCO JSON (1-based keypoints and box corner). Both are read into 0-based coordinates.

In-memory model: :class:`Video` (a list of :class:`Frame`, each with :class:`Person` s). A person's
``keypoints`` is a ``(K, 3)`` float array ``x, y, v`` in the video's skeleton (``posetrack18``: 17 slots,
``coco``, ``jhmdb``). A joint counts as *annotated* unless ``x = y = v = 0`` (poseval's rule); ``v`` is kept as
stored (PoseTrack GT uses 0/1, COCO 0/1/2, predictions may store a score there).

Round trips: every reader keeps unknown keys (``extra``) and every writer writes them back, so
PoseTrack18 -> annolist -> PoseTrack18, annolist -> PoseTrack18 -> annolist and PoseTrack18 -> COCO ->
PoseTrack18 reproduce the same :class:`Video`. Fields a format cannot hold travel under extra keys that the
official tools ignore (an annolist written here carries the PoseTrack18 ``id``, ``frame_id``, ``vid_id``,
``nframes``, the person ``bbox`` and ``id``; data that had none gains the ids the PoseTrack18 writer assigns:
the frame index and ``frame_id * 100 + person index``). The one exception is by definition of the formats: the two ear
slots have no annolist id, so non-empty ears are dropped when writing annolist. Fields that are pure functions
of others (COCO ``area = w*h``, ``iscrowd = 0``, ``num_keypoints = #(v>0)``) are written by the COCO writer
and dropped by every reader when they equal that derivation.

Errors: malformed input raises :class:`FormatError` (a ``ValueError``) naming the file and the field.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .skeleton import (
    POSETRACK18,
    get_skeleton,
    poseval_id_to_slot,
    skeleton_from_names,
    slot_to_poseval_id,
)


class FormatError(ValueError):
    """Malformed annotation input; the message names the file and the field."""


# ----------------------------------------------------------------------------------------------- model
@dataclass
class Person:
    """One annotated or predicted person.

    Attributes:
        keypoints: ``(K, 3)`` float64 ``x, y, v`` in the video's skeleton order (0-based pixel coordinates).
        track_id: track id (unique within a frame), or ``None``.
        bbox: ``(4,)`` person box ``x, y, w, h`` or ``None``.
        bbox_head: ``(4,)`` head box ``x, y, w, h`` or ``None`` (PoseTrack's PCKh reference).
        scores: ``(K,)`` per-joint scores (predictions) or ``None`` (ground truth).
        score: person score or ``None``.
        id: annotation id or ``None``.
        extra: other keys of the source record, written back verbatim (e.g. ``occluded``, ``person_id``).
    """

    keypoints: np.ndarray
    track_id: int | None = None
    bbox: np.ndarray | None = None
    bbox_head: np.ndarray | None = None
    scores: np.ndarray | None = None
    score: float | None = None
    id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def annotated(self) -> np.ndarray:
        """``(K,)`` bool: the joint is annotated / predicted (not ``x = y = v = 0``)."""
        k = self.keypoints
        return ~((k[:, 0] == 0) & (k[:, 1] == 0) & (k[:, 2] == 0))

    def __eq__(self, other: object) -> bool:  # arrays compare element-wise
        if not isinstance(other, Person):
            return NotImplemented
        return (
            _arr_eq(self.keypoints, other.keypoints) and self.track_id == other.track_id
            and _arr_eq(self.bbox, other.bbox) and _arr_eq(self.bbox_head, other.bbox_head)
            and _arr_eq(self.scores, other.scores) and self.score == other.score and self.id == other.id
            and self.extra == other.extra
        )


@dataclass
class Frame:
    """One image of a video.

    Attributes:
        file_name: image path relative to the dataset root (e.g. ``images/val/000342_mpii_test/000000.jpg``).
        id: image id (PoseTrack18: ``TSSSSSSFFFF``) or ``None``.
        frame_id: PoseTrack ``frame_id`` (equal to ``id`` in PoseTrack18) or ``None``.
        is_labeled: the frame carries pose labels.
        people: the annotated / predicted people.
        ignore_regions: polygons, each ``(P, 2)`` float ``x, y``, inside which points are not evaluated.
        vid_id: the video id string (``"000342"``) or ``None``.
        nframes: number of frames of the video as stored in the file, or ``None``.
        width, height: image size when the file gives it.
        extra: other keys of the source record, written back verbatim.
    """

    file_name: str
    id: int | None = None
    frame_id: int | None = None
    is_labeled: bool = False
    people: list[Person] = field(default_factory=list)
    ignore_regions: list[np.ndarray] = field(default_factory=list)
    vid_id: str | None = None
    nframes: int | None = None
    width: int | None = None
    height: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (
            self.file_name == other.file_name and self.id == other.id and self.frame_id == other.frame_id
            and self.is_labeled == other.is_labeled and self.people == other.people
            and len(self.ignore_regions) == len(other.ignore_regions)
            and all(_arr_eq(a, b) for a, b in zip(self.ignore_regions, other.ignore_regions, strict=True))
            and self.vid_id == other.vid_id and self.nframes == other.nframes and self.width == other.width
            and self.height == other.height and self.extra == other.extra
        )


@dataclass
class Video:
    """A video: its name (the per-video file stem, e.g. ``000342_mpii_test``), frames and joint set.

    Attributes:
        name: video name.
        frames: frames in temporal order.
        skeleton: ``posetrack18`` | ``coco`` | ``jhmdb``.
        extra: other top-level keys of a per-video file (written back verbatim).
    """

    name: str
    frames: list[Frame] = field(default_factory=list)
    skeleton: str = "posetrack18"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_joints(self) -> int:
        return get_skeleton(self.skeleton).num_joints


def _arr_eq(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(np.array_equal(a, b))


# ----------------------------------------------------------------------------------------------- helpers
def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing file or malformed JSON raises :class:`FormatError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: file does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def save_json(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


class _Ctx:
    """Where we are in a file, for error messages."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = str(path) if path is not None else "<memory>"

    def err(self, where: str, msg: str) -> FormatError:
        return FormatError(f"{self.path}: {where}: {msg}")

    def req(self, d: Any, key: str, where: str) -> Any:
        if not isinstance(d, dict):
            raise self.err(where, f"expected an object, got {type(d).__name__}")
        if key not in d:
            raise self.err(where, f"missing key {key!r}")
        return d[key]

    def num_list(self, v: Any, where: str, length: int | tuple[int, ...] | None = None) -> np.ndarray:
        if not isinstance(v, list | tuple):
            raise self.err(where, f"expected a list of numbers, got {type(v).__name__}")
        try:
            arr = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            raise self.err(where, "expected a flat list of numbers") from None
        if arr.ndim != 1:
            raise self.err(where, f"expected a flat list of numbers, got shape {arr.shape}")
        lengths = (length,) if isinstance(length, int) else length
        if lengths is not None and len(arr) not in lengths:
            want = " or ".join(str(n) for n in lengths)
            raise self.err(where, f"expected {want} values, got {len(arr)}")
        return arr

    def integer(self, v: Any, where: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int | float) or (isinstance(v, float) and not v.is_integer()):
            raise self.err(where, f"expected an integer, got {v!r}")
        return int(v)

    def one(self, v: Any, where: str) -> Any:
        """Unwrap an annolist one-element list."""
        if not isinstance(v, list) or len(v) != 1:
            raise self.err(where, f"expected a one-element list, got {v!r}")
        return v[0]


def _num(x: float) -> int | float:
    x = float(x)
    return int(x) if x.is_integer() and abs(x) < 2**53 else x


def _flat_keypoints(k: np.ndarray) -> list[float | int]:
    out: list[float | int] = []
    for x, y, v in k:
        out += [float(x), float(y), _num(v)]
    return out


def _derived_area(bbox: np.ndarray | None) -> float | None:
    return None if bbox is None else float(bbox[2] * bbox[3])


def _canonical_extra(p: Person) -> None:
    """Drop COCO fields that equal their derivation (they carry no information)."""
    e = p.extra
    if "iscrowd" in e and e["iscrowd"] in (0, False):
        del e["iscrowd"]
    if "num_keypoints" in e and e["num_keypoints"] == int((p.keypoints[:, 2] > 0).sum()):
        del e["num_keypoints"]
    if "area" in e and p.bbox is not None and isinstance(e["area"], int | float) and math.isclose(
            e["area"], _derived_area(p.bbox), rel_tol=1e-12, abs_tol=1e-9):
        del e["area"]
    if e.get("category_id", 1) == 1:
        e.pop("category_id", None)


def _to_int_or_none(v: Any) -> int | None:
    return None if v is None else int(v)


# ----------------------------------------------------------------------------------------------- PoseTrack18
_PT18_IMAGE_KEYS = ("file_name", "id", "frame_id", "vid_id", "nframes", "is_labeled", "ignore_regions_x",
                    "ignore_regions_y", "width", "height")
_PT18_ANN_KEYS = ("id", "image_id", "track_id", "bbox", "bbox_head", "keypoints", "scores", "score")


def default_categories(skeleton: str = "posetrack18") -> list[dict]:
    """The ``categories`` list written for a skeleton (1-based ``skeleton`` edges as in the official files)."""
    sk = get_skeleton(skeleton)
    return [{"supercategory": "person", "id": 1, "name": "person", "keypoints": list(sk.joints),
             "skeleton": [[a + 1, b + 1] for a, b in sk.edges]}]


def _parse_regions(ctx: _Ctx, img: dict, where: str) -> list[np.ndarray]:
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


def _person_from_coco(ctx: _Ctx, a: dict, where: str, k: int, slot_map: list[int] | None,
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
    _canonical_extra(p)
    return p


def _frame_from_coco(ctx: _Ctx, img: dict, where: str) -> Frame:
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


def _categories(ctx: _Ctx, data: dict, default: str | None) -> tuple[str, list[int] | None, Any]:
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


def _frames_with_people(ctx: _Ctx, images: list, anns: list, skel: str, slot_map: list[int] | None,
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


def posetrack18_from_dict(data: Any, name: str, path: str | os.PathLike | None = None) -> Video:
    """Parse a PoseTrack18/21 per-video dict (see :func:`read_posetrack18`)."""
    ctx = _Ctx(path)
    if not isinstance(data, dict):
        raise ctx.err("top level", f"expected an object with 'images' and 'annotations', got {type(data).__name__}")
    images = ctx.req(data, "images", "top level")
    anns = ctx.req(data, "annotations", "top level")
    if not isinstance(images, list):
        raise ctx.err("images", "expected a list")
    if not isinstance(anns, list):
        raise ctx.err("annotations", "expected a list")
    skel, slot_map, cats = _categories(ctx, data, "posetrack18")
    frames = _frames_with_people(ctx, images, anns, skel, slot_map)
    extra = {key: copy.deepcopy(v) for key, v in data.items() if key not in ("images", "annotations", "categories")}
    if cats is not None:
        extra["categories"] = cats
    return Video(name=name, frames=frames, skeleton=skel, extra=extra)


def read_posetrack18(path: str | os.PathLike) -> Video:
    """Read one PoseTrack18/21 per-video JSON file; the video is named after the file stem.

    Args:
        path: the ``.json`` file.

    Returns:
        the :class:`Video` (skeleton ``posetrack18``, 17 slots).

    Raises:
        FormatError: malformed JSON, missing keys, keypoint lists of the wrong length, unknown image ids.
    """
    return posetrack18_from_dict(load_json(path), Path(path).stem, path)


def _image_dict(f: Frame, nframes: int) -> dict:
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


def _ann_dict(p: Person, image_id: int | None, ann_id: int | None, one_based: bool = False,
              coco_fields: bool = False) -> dict:
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
            d["area"] = _derived_area(p.bbox)
    d.update(copy.deepcopy(p.extra))
    return d


def _frame_ids(video: Video) -> list[int]:
    """Image ids of the frames; missing ids fall back to the frame index."""
    return [f.id if f.id is not None else i for i, f in enumerate(video.frames)]


def posetrack18_to_dict(video: Video) -> dict:
    """The PoseTrack18 per-video dict of a :class:`Video` (inverse of :func:`posetrack18_from_dict`)."""
    ids = _frame_ids(video)
    images, anns = [], []
    for f, fid in zip(video.frames, ids, strict=True):
        img = _image_dict(f, len(video.frames))
        img["id"] = fid
        if img["frame_id"] is None:
            img["frame_id"] = fid
        images.append(img)
        for pi, p in enumerate(f.people):
            anns.append(_ann_dict(p, fid, p.id if p.id is not None else fid * 100 + pi))
    extra = copy.deepcopy(video.extra)
    cats = extra.pop("categories", None) or default_categories(video.skeleton)
    return {"images": images, "annotations": anns, "categories": cats, **extra}


def write_posetrack18(video: Video, path: str | os.PathLike) -> None:
    """Write one PoseTrack18 per-video JSON file."""
    save_json(posetrack18_to_dict(video), path)


# ----------------------------------------------------------------------------------------------- annolist
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
    ctx = _Ctx(path)
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


def _person_from_rect(ctx: _Ctx, rect: dict, w: str) -> Person:
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
    _canonical_extra(p)
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
        pt: dict[str, Any] = {"id": [pid], "x": [float(x)], "y": [float(y)], "is_visible": [_num(v)]}
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


# ----------------------------------------------------------------------------------------------- COCO
def _video_key(f: Frame) -> str:
    return f.vid_id if f.vid_id is not None else os.path.dirname(f.file_name)


def coco_from_dict(data: Any, path: str | os.PathLike | None = None, one_based: bool | None = None,
                   default_skeleton: str | None = None) -> list[Video]:
    """Parse a COCO keypoints ground-truth dict into videos (see :func:`read_coco`); ``default_skeleton`` is
    used when the file has no ``categories``."""
    ctx = _Ctx(path)
    if not isinstance(data, dict):
        raise ctx.err("top level", f"expected an object with 'images' and 'annotations', got {type(data).__name__}")
    images = ctx.req(data, "images", "top level")
    anns = ctx.req(data, "annotations", "top level")
    if not isinstance(images, list) or not isinstance(anns, list):
        raise ctx.err("top level", "'images' and 'annotations' must be lists")
    skel, slot_map, cats = _categories(ctx, data, default_skeleton)
    if one_based is None:
        one_based = skel == "jhmdb"
    frames = _frames_with_people(ctx, images, anns, skel, slot_map, one_based)
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
            img = _image_dict(f, len(v.frames))
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
                anns.append(_ann_dict(p, fid, aid, one_based=one_based, coco_fields=True))
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
            for p in f.people:
                k = p.keypoints.copy()
                if p.scores is not None:
                    k[:, 2] = p.scores
                out.append({"image_id": fid, "category_id": 1, "keypoints": [float(x) for x in k.reshape(-1)],
                            "score": person_score(p)})
    return out


def person_score(p: Person) -> float:
    """The person score used for ranking: ``p.score``, else mean joint score over annotated joints, else 1."""
    if p.score is not None:
        return float(p.score)
    if p.scores is not None:
        lab = p.annotated()
        return float(p.scores[lab].mean()) if lab.any() else 0.0
    return 1.0


def coco_results_from_list(results: Any, gt: list[Video], path: str | os.PathLike | None = None) -> list[Video]:
    """Place a COCO results list onto the frames of ground-truth videos (same names, files and ids).

    Raises:
        FormatError: an entry's ``image_id`` is not a GT image, or keypoints have the wrong length.
    """
    ctx = _Ctx(path)
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


# ----------------------------------------------------------------------------------------------- Sub-JHMDB
def jhmdb_from_pos_img(pos_img: Any, name: str, image_dir: str, path: str | os.PathLike | None = None) -> Video:
    """Build a JHMDB :class:`Video` from a ``pos_img`` array (2 x 15 x T, MATLAB 1-based).

    Coordinates become 0-based (``-1``), every joint gets ``v = 2``; the box is the keypoint extent (the
    ``.mat`` has none). Frames are ``<image_dir>/00001.png`` ... (1-based, 5 digits, as ``Rename_Images``).
    """
    ctx = _Ctx(path)
    arr = np.asarray(pos_img, dtype=np.float64)
    if arr.ndim == 2 and arr.shape == (2, 15):
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[0] != 2 or arr.shape[1] != 15:
        raise ctx.err("pos_img", f"expected shape (2, 15, T), got {arr.shape}")
    frames = []
    for t in range(arr.shape[2]):
        xy = arr[:, :, t].T - 1.0
        kp = np.concatenate([xy, np.full((15, 1), 2.0)], axis=1)
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        p = Person(keypoints=kp, track_id=0, bbox=np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]]))
        frames.append(Frame(file_name=f"{image_dir}/{t + 1:05d}.png", frame_id=t, id=t, is_labeled=True,
                            people=[p], nframes=arr.shape[2]))
    return Video(name=name, frames=frames, skeleton="jhmdb")


def read_jhmdb_mat(path: str | os.PathLike, image_root: str = "Rename_Images") -> Video:
    """Read a Sub-JHMDB ``joint_positions/<action>/<clip>/joint_positions.mat`` (needs scipy).

    Args:
        path: the ``.mat`` file.
        image_root: folder that holds ``<action>/<clip>/00001.png``; file names are
            ``<image_root>/<action>/<clip>/NNNNN.png``.

    Returns:
        a :class:`Video` named ``<clip>`` (skeleton ``jhmdb``, 0-based coordinates).
    """
    try:
        import scipy.io
    except ImportError as e:  # pragma: no cover - scipy is a test dependency
        raise ImportError("reading Sub-JHMDB .mat files needs scipy: pip install 'glsmamba[jhmdb]'") from e
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: file does not exist")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as e:
        raise FormatError(f"{path}: not a readable .mat file ({type(e).__name__}: {e})") from None
    if "pos_img" not in mat:
        raise FormatError(f"{path}: missing key 'pos_img'")
    clip, action = path.parent.name, path.parent.parent.name
    return jhmdb_from_pos_img(mat["pos_img"], clip, f"{image_root}/{action}/{clip}", path)


def read_jhmdb_json(path: str | os.PathLike) -> list[Video]:
    """Read an mmpose-style Sub-JHMDB COCO JSON (1-based keypoints and box corner) into 0-based videos."""
    videos = read_coco(path, one_based=True)
    if videos and videos[0].skeleton != "jhmdb":
        raise FormatError(f"{path}: categories[0].keypoints: expected the 15 JHMDB joints, got skeleton "
                          f"{videos[0].skeleton!r}")
    return videos


# ----------------------------------------------------------------------------------------------- detection
FORMATS = ("posetrack18", "annolist", "coco", "jhmdb-mat", "jhmdb-json")


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format of a file or folder: one of :data:`FORMATS`.

    A folder is per-video files (``posetrack18`` or ``annolist``, told by its first JSON) or a JHMDB
    ``joint_positions`` tree. A file with ``annolist`` is annolist; a COCO-like file with one video folder is
    ``posetrack18``, with several ``coco``; JHMDB joint names give ``jhmdb-json``. (A single COCO-like file is
    read the same way either way: its videos are named after their image folders.)
    """
    path = Path(path)
    if path.is_dir():
        jsons = sorted(path.glob("*.json"))
        if jsons:
            return "annolist" if "annolist" in load_json(jsons[0]) else "posetrack18"
        if next(path.rglob("*.mat"), None) is not None:
            return "jhmdb-mat"
        raise FormatError(f"{path}: folder holds no .json or .mat files")
    if path.suffix == ".mat":
        return "jhmdb-mat"
    data = load_json(path)
    if isinstance(data, dict) and "annolist" in data:
        return "annolist"
    if isinstance(data, list):
        raise FormatError(f"{path}: a COCO results list needs its ground truth; it is not a dataset by itself")
    if isinstance(data, dict) and "images" in data:
        cats = data.get("categories") or []
        names = cats[0].get("keypoints") if cats and isinstance(cats[0], dict) else None
        if names is not None and list(names) == list(get_skeleton("jhmdb").joints):
            return "jhmdb-json"
        folders = {os.path.dirname(str(i.get("file_name", ""))) if isinstance(i, dict) else ""
                   for i in data["images"]}
        return "posetrack18" if len(folders) <= 1 else "coco"
    raise FormatError(f"{path}: top level: not a known pose format (expected 'annolist' or 'images')")


def _sorted_jsons(path: Path) -> list[Path]:
    files = sorted(path.glob("*.json"))
    if not files:
        raise FormatError(f"{path}: folder holds no .json files")
    return files


def read_videos(path: str | os.PathLike, fmt: str | None = None) -> list[Video]:
    """Read a dataset in any supported format: a file or a folder of per-video files.

    Args:
        path: file or folder.
        fmt: one of :data:`FORMATS`, or ``None`` to detect.

    Returns:
        the videos. Per-video files in a folder are read in sorted order and named after the file stems; the
        videos of a single COCO-like file are named after their image folders.
    """
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: file does not exist")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if fmt == "jhmdb-mat":
        mats = [path] if path.is_file() else sorted(path.rglob("*.mat"))
        return [read_jhmdb_mat(m) for m in mats]
    if fmt == "jhmdb-json":
        return read_jhmdb_json(path)
    if fmt == "coco" or (fmt == "posetrack18" and path.is_file()):
        # a single file: videos named after their image folders (PoseTrack: equal to the per-video file stem)
        return coco_from_dict(load_json(path), path, default_skeleton="posetrack18")
    reader = read_posetrack18 if fmt == "posetrack18" else read_annolist
    if path.is_dir():
        return [reader(p) for p in _sorted_jsons(path)]
    return [reader(path)]


def write_videos(videos: list[Video], path: str | os.PathLike, fmt: str) -> list[Path]:
    """Write videos: ``posetrack18`` / ``annolist`` -> one ``<name>.json`` per video in folder ``path``;
    ``coco`` / ``jhmdb-json`` -> one file ``path``. Returns the written files."""
    path = Path(path)
    if fmt in ("posetrack18", "annolist"):
        writer = write_posetrack18 if fmt == "posetrack18" else write_annolist
        out = []
        names = [v.name for v in videos]
        if len(set(names)) != len(names):
            raise ValueError(f"video names must be unique to write one file per video, got {names}")
        for v in videos:
            _check_name(v.name)
            writer(v, path / f"{v.name}.json")
            out.append(path / f"{v.name}.json")
        return out
    if fmt in ("coco", "jhmdb-json"):
        write_coco(videos, path, one_based=(fmt == "jhmdb-json"))
        return [path]
    raise ValueError(f"fmt must be one of posetrack18, annolist, coco, jhmdb-json; got {fmt!r}")


def _check_name(name: str) -> None:
    if not name or not re.fullmatch(r"[^/\\]+", name) or name in (".", ".."):
        raise ValueError(f"video name {name!r} cannot be used as a file name")
