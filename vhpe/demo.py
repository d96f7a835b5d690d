"""Video demo: a video in, an overlay video (same frame count and fps) and per-frame JSON out.

For every frame ``t`` the model sees the ``T``-frame window around it (edges clamped to the video, as in training)
cropped with each person box of frame ``t``. Boxes come from a file (:func:`load_boxes`) or, without one, the whole
frame is one person box. Frames stream through :class:`~vhpe.streaming.StreamingPoseEstimator` (a small buffer),
so memory does not grow with the video length.

JSON output::

    {"video", "checkpoint", "fps", "fps_fraction", "width", "height", "num_frames", "boxes", "clip_frames",
     "keypoint_names": [15 names], "skeleton": [[a, b], ...],
     "frames": [{"frame_id": t, "time_s": t / fps,
                 "instances": [{"bbox": [x, y, w, h], "bbox_score": s,
                                "keypoints": [[x, y] x 15], "keypoint_scores": [15]}]}]}
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .skeleton import POSETRACK15

if TYPE_CHECKING:
    from .streaming import FramePoses


def load_boxes(path: str | os.PathLike) -> dict[int, list[tuple[np.ndarray, float]]]:
    """Person boxes per frame index (0-based) from a JSON file in one of three layouts:

    * a COCO detection results list ``[{"image_id": frame_index, "bbox": [x, y, w, h], "score": s}, ...]``;
    * a mapping ``{"<frame_index>": [[x, y, w, h(, score)], ...]}``;
    * this demo's own JSON output (``{"frames": [{"frame_id", "instances": [{"bbox", "bbox_score"}]}]}``).

    Raises:
        ValueError: malformed file (names the entry).
    """
    from .dataset import read_detections
    from .formats import load_json

    data = load_json(path)
    if isinstance(data, dict) and isinstance(data.get("frames"), list):
        out: dict[int, list[tuple[np.ndarray, float]]] = {}
        for i, f in enumerate(data["frames"]):
            if not isinstance(f, dict) or "frame_id" not in f:
                raise ValueError(f"{path}: frames[{i}]: missing 'frame_id'")
            for k, inst in enumerate(f.get("instances", [])):
                box = np.asarray(inst.get("bbox", ()), dtype=np.float64)
                if box.shape != (4,):
                    raise ValueError(f"{path}: frames[{i}].instances[{k}].bbox: expected [x, y, w, h]")
                out.setdefault(int(f["frame_id"]), []).append((box, float(inst.get("bbox_score", 1.0))))
        return out
    raw = read_detections(path)
    out = {}
    for key, boxes in raw.items():
        try:
            idx = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: box key {key!r} is not a frame index (0-based integer)") from None
        if idx < 0:
            raise ValueError(f"{path}: frame index {idx} is negative")
        out[idx] = [(np.asarray(b, dtype=np.float64), float(s)) for b, s in boxes]
    return out


def draw_poses(frame: np.ndarray, instances: Iterable[dict[str, Any]], kpt_thr: float = 0.3) -> np.ndarray:
    """Draw boxes and skeletons on a copy of ``frame`` ``(H, W, 3)`` uint8.

    Args:
        frame: the image.
        instances: dicts with ``bbox`` ``[x, y, w, h]``, ``keypoints`` ``(15, 2)``, ``keypoint_scores`` ``(15,)``.
        kpt_thr: joints (and limbs) below this score are not drawn.

    Returns:
        the annotated image.
    """
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(frame))
    d = ImageDraw.Draw(img)
    h, w = frame.shape[:2]
    lw = max(2, round(min(h, w) / 160))
    colors = POSETRACK15.joint_colors()
    for inst in instances:
        x, y, bw, bh = (float(v) for v in inst["bbox"])
        d.rectangle([x, y, x + bw, y + bh], outline=(0, 255, 0), width=max(1, lw // 2))
        kp = np.asarray(inst["keypoints"], dtype=np.float64)
        sc = np.asarray(inst["keypoint_scores"], dtype=np.float64)
        for (a, b), c in zip(POSETRACK15.edges, POSETRACK15.edge_colors, strict=True):
            if sc[a] >= kpt_thr and sc[b] >= kpt_thr:
                d.line([tuple(kp[a]), tuple(kp[b])], fill=tuple(c), width=lw)
        r = lw + 1
        for j in range(len(kp)):
            if sc[j] >= kpt_thr:
                d.ellipse([kp[j, 0] - r, kp[j, 1] - r, kp[j, 0] + r, kp[j, 1] + r], fill=tuple(colors[j]),
                          outline=(0, 0, 0))
    return np.asarray(img)


def run_demo(video: str | os.PathLike, checkpoint: str | os.PathLike, out_video: str | os.PathLike | None,
             out_json: str | os.PathLike | None, boxes: str | os.PathLike | None = None, device: str | None = None,
             backend: str = "auto", batch_size: int = 16, flip: bool = False, kpt_thr: float = 0.3,
             backbone: str | None = None, progress: bool = False, trust_backbone: bool = False) -> dict[str, Any]:
    """Run a checkpoint on a video (see the module docstring).

    Args:
        video: input video file.
        checkpoint: model file.
        out_video: overlay video to write (same fps and frame count), or None.
        out_json: per-frame JSON to write, or None.
        boxes: person boxes file (:func:`load_boxes`); None = the whole frame is one person.
        device, backend: where and how the model runs.
        batch_size: person clips per forward pass.
        flip: flip test.
        kpt_thr: drawing threshold on joint scores.
        backbone: ViTPose weights for checkpoints saved without their frozen encoder.
        trust_backbone: allow full unpickling of ``backbone`` (mmpose files with non-tensor metadata).
        progress: print a progress line to stderr.

    Returns:
        the JSON document (also written to ``out_json``).
    """
    from .infer import load_model
    from .progress import Progress
    from .streaming import StreamingPoseEstimator
    from .video import VideoReader, VideoWriter

    box_map = load_boxes(boxes) if boxes is not None else None
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    reader = VideoReader(video)  # opens and checks the video before the model is loaded
    writer = None
    try:
        net = load_model(checkpoint, dev, backend, backbone, trust_backbone)
        stream = StreamingPoseEstimator(net, dev, boxes=box_map, batch_size=batch_size, flip=flip)
        writer = VideoWriter(out_video, reader.fps, reader.width, reader.height) if out_video else None
        frames_out: list[dict[str, Any]] = []
        prog = Progress(reader.num_frames or 0, "demo", every=25, enabled=progress, unit="frames")
        for frame in reader:
            if frame.shape[:2] != (reader.height, reader.width):
                raise ValueError(f"{video}: frame {stream.frames_seen} has size {frame.shape[1]} x {frame.shape[0]}, "
                                 f"the stream announced {reader.width} x {reader.height}")
            _emit(stream.push(frame), frames_out, reader.fps, writer, kpt_thr, prog)
        if stream.frames_seen == 0:
            raise ValueError(f"{video}: the video has no frames")
        _emit(stream.finish(), frames_out, reader.fps, writer, kpt_thr, prog)
        if writer is not None:
            writer.close()
            writer = None
    finally:
        reader.close()
        if writer is not None:  # an error midway: close what was written
            writer.close()
    doc = {
        "video": str(video), "checkpoint": str(checkpoint), "fps": float(reader.fps),
        "fps_fraction": f"{reader.fps.numerator}/{reader.fps.denominator}", "width": reader.width,
        "height": reader.height, "num_frames": stream.frames_seen,
        "boxes": str(boxes) if boxes is not None else "whole frame", "clip_frames": stream.clip_len,
        "flip": bool(flip),
        "keypoint_names": list(POSETRACK15.joints), "skeleton": [list(e) for e in POSETRACK15.edges],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "frames": frames_out,
    }
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(doc) + "\n")
    return doc


def _emit(done: list[FramePoses], frames_out: list[dict[str, Any]], fps, writer, kpt_thr: float, prog) -> None:
    """Record the completed frames (:class:`~vhpe.streaming.FramePoses`, in order): a JSON entry each, the overlay
    frame when a video is written, the progress line."""
    for r in done:
        frames_out.append({"frame_id": r.index, "time_s": round(float(r.index / fps), 4), "instances": r.instances})
        if writer is not None:
            writer.write(draw_poses(r.image, r.instances, kpt_thr))
        prog.update(r.index + 1, r.index + 1)
