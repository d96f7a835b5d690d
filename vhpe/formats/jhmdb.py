"""Sub-JHMDB: ``joint_positions.mat`` (``pos_img`` 2 x 15 x T, MATLAB 1-based; needs scipy) and mmpose-style COCO
JSON (1-based keypoints and box corner). Both are read into 0-based coordinates (``docs/pose-formats.md`` section 1).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .coco import read_coco
from .core import FormatError, Frame, ParseContext, Person, Video


def jhmdb_from_pos_img(pos_img: Any, name: str, image_dir: str, path: str | os.PathLike | None = None) -> Video:
    """Build a JHMDB :class:`Video` from a ``pos_img`` array (2 x 15 x T, MATLAB 1-based).

    Coordinates become 0-based (``-1``), every joint gets ``v = 2``; the box is the keypoint extent (the
    ``.mat`` has none). Frames are ``<image_dir>/00001.png`` ... (1-based, 5 digits, as ``Rename_Images``).
    """
    ctx = ParseContext(path)
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
