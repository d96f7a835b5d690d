"""The in-memory pose model every format reads into and writes from, and what the format modules share.

:class:`Video` is a list of :class:`Frame`, each with :class:`Person` s. A person's ``keypoints`` is a ``(K, 3)``
float array ``x, y, v`` in the video's skeleton (``posetrack18``: 17 slots, ``coco``, ``jhmdb``). A joint counts as
*annotated* unless ``x = y = v = 0`` (poseval's rule); ``v`` is kept as stored (PoseTrack GT uses 0/1, COCO 0/1/2,
predictions may store a score there). Readers keep unknown keys of a record in ``extra``; writers write them back.

Also here: :class:`FormatError` (malformed input, naming the file and the field), :class:`ParseContext` (where a
parser is in a file, for those messages), the JSON file helpers and the COCO field derivations every reader drops.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..skeleton import get_skeleton


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
    """Write ``obj`` as JSON to ``path`` (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


class ParseContext:
    """Where a parser is in a file (``path``), for error messages; its checks raise :class:`FormatError`."""

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


def json_number(x: float) -> int | float:
    """``x`` as a JSON number: an int when it is integer-valued (and exact), else a float."""
    x = float(x)
    return int(x) if x.is_integer() and abs(x) < 2**53 else x


def derived_area(bbox: np.ndarray | None) -> float | None:
    """COCO ``area`` of a person: box ``w * h`` (``None`` without a box)."""
    return None if bbox is None else float(bbox[2] * bbox[3])


def canonical_extra(p: Person) -> None:
    """Drop COCO fields that equal their derivation (they carry no information)."""
    e = p.extra
    if "iscrowd" in e and e["iscrowd"] in (0, False):
        del e["iscrowd"]
    if "num_keypoints" in e and e["num_keypoints"] == int((p.keypoints[:, 2] > 0).sum()):
        del e["num_keypoints"]
    if "area" in e and p.bbox is not None and isinstance(e["area"], int | float) and math.isclose(
            e["area"], derived_area(p.bbox), rel_tol=1e-12, abs_tol=1e-9):
        del e["area"]
    if e.get("category_id", 1) == 1:
        e.pop("category_id", None)


def person_score(p: Person) -> float:
    """The person score used for ranking: ``p.score``, else mean joint score over annotated joints, else 1."""
    if p.score is not None:
        return float(p.score)
    if p.scores is not None:
        lab = p.annotated()
        return float(p.scores[lab].mean()) if lab.any() else 0.0
    return 1.0
