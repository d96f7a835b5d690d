"""Pose annotation formats, read into one in-memory model and written back (``docs/pose-formats.md`` section 1).

One module per format: :mod:`.posetrack18` (PoseTrack18/21 per-video JSON), :mod:`.annolist` (PoseTrack17),
:mod:`.coco` (COCO keypoints ground truth and results lists), :mod:`.jhmdb` (Sub-JHMDB ``.mat`` and mmpose JSON);
:mod:`.core` holds the in-memory model (:class:`Video` / :class:`Frame` / :class:`Person`) and :class:`FormatError`,
:mod:`.records` the COCO-like records PoseTrack18 and COCO share, :mod:`.detect` the format detection and the
any-format :func:`read_videos` / :func:`write_videos`.

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

from .annolist import annolist_from_dict, annolist_to_dict, read_annolist, write_annolist
from .coco import (
    coco_from_dict,
    coco_result,
    coco_results_from_list,
    coco_results_to_list,
    coco_to_dict,
    read_coco,
    write_coco,
)
from .core import FormatError, Frame, Person, Video, load_json, person_score, save_json
from .detect import FORMATS, detect_format, read_videos, write_videos
from .jhmdb import jhmdb_from_pos_img, read_jhmdb_json, read_jhmdb_mat
from .posetrack18 import posetrack18_from_dict, posetrack18_to_dict, read_posetrack18, write_posetrack18
from .records import default_categories

__all__ = [
    "FORMATS",
    "FormatError",
    "Frame",
    "Person",
    "Video",
    "annolist_from_dict",
    "annolist_to_dict",
    "coco_from_dict",
    "coco_result",
    "coco_results_from_list",
    "coco_results_to_list",
    "coco_to_dict",
    "default_categories",
    "detect_format",
    "jhmdb_from_pos_img",
    "load_json",
    "person_score",
    "posetrack18_from_dict",
    "posetrack18_to_dict",
    "read_annolist",
    "read_coco",
    "read_jhmdb_json",
    "read_jhmdb_mat",
    "read_posetrack18",
    "read_videos",
    "save_json",
    "write_annolist",
    "write_coco",
    "write_posetrack18",
    "write_videos",
]
