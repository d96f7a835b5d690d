"""PoseTrack18/21: one COCO-like JSON per video (``images``, ``annotations``, ``categories``).

17 keypoint slots (the ears empty), ``bbox_head`` per person, ignore regions per image, ``is_labeled`` per frame
(``docs/pose-formats.md`` section 1). The records are read and written by :mod:`.records`; a file may list a subset
of the joint names (poseval accepts 15), mapped by name onto the 17 slots.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from .core import ParseContext, Video, load_json, save_json
from .records import annotation_record, default_categories, frames_with_people, image_record, parse_categories


def posetrack18_from_dict(data: Any, name: str, path: str | os.PathLike | None = None) -> Video:
    """Parse a PoseTrack18/21 per-video dict (see :func:`read_posetrack18`)."""
    ctx = ParseContext(path)
    if not isinstance(data, dict):
        raise ctx.err("top level", f"expected an object with 'images' and 'annotations', got {type(data).__name__}")
    images = ctx.req(data, "images", "top level")
    anns = ctx.req(data, "annotations", "top level")
    if not isinstance(images, list):
        raise ctx.err("images", "expected a list")
    if not isinstance(anns, list):
        raise ctx.err("annotations", "expected a list")
    skel, slot_map, cats = parse_categories(ctx, data, "posetrack18")
    frames = frames_with_people(ctx, images, anns, skel, slot_map)
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



def _frame_ids(video: Video) -> list[int]:
    """Image ids of the frames; missing ids fall back to the frame index."""
    return [f.id if f.id is not None else i for i, f in enumerate(video.frames)]


def posetrack18_to_dict(video: Video) -> dict:
    """The PoseTrack18 per-video dict of a :class:`Video` (inverse of :func:`posetrack18_from_dict`)."""
    ids = _frame_ids(video)
    images, anns = [], []
    for f, fid in zip(video.frames, ids, strict=True):
        img = image_record(f, len(video.frames))
        img["id"] = fid
        if img["frame_id"] is None:
            img["frame_id"] = fid
        images.append(img)
        for pi, p in enumerate(f.people):
            anns.append(annotation_record(p, fid, p.id if p.id is not None else fid * 100 + pi))
    extra = copy.deepcopy(video.extra)
    cats = extra.pop("categories", None) or default_categories(video.skeleton)
    return {"images": images, "annotations": anns, "categories": cats, **extra}


def write_posetrack18(video: Video, path: str | os.PathLike) -> None:
    """Write one PoseTrack18 per-video JSON file."""
    save_json(posetrack18_to_dict(video), path)
