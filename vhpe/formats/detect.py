"""Any supported format, told from the file: :func:`detect_format`, :func:`read_videos`, :func:`write_videos`."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..skeleton import get_skeleton
from .annolist import read_annolist, write_annolist
from .coco import coco_from_dict, write_coco
from .core import FormatError, Video, load_json
from .jhmdb import read_jhmdb_json, read_jhmdb_mat
from .posetrack18 import read_posetrack18, write_posetrack18

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
