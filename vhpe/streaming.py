"""Streaming pose estimation: video frames in, one result per frame out, in order, with bounded memory.

For every frame ``t`` the model sees the ``T``-frame window around it (edges clamped to the video, as in training:
:func:`vhpe.dataset.clip_indices`) cropped with each person box of frame ``t``. A frame's window is complete once
``T - 1 - T // 2`` later frames have arrived (or the stream ends); person clips are batched across frames, and a
frame is released once it is predicted and no pending window needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import infer
from .codec import keypoints_from_heatmaps
from .dataset import clip_indices


@dataclass
class FramePoses:
    """The result of one frame: its index, its image and the people found in it."""

    index: int
    image: np.ndarray
    instances: list[dict[str, Any]]  # {"bbox", "bbox_score", "keypoints" (15 x [x, y]), "keypoint_scores" (15)}


class StreamingPoseEstimator:
    """Per-frame poses for a stream of frames: :meth:`push` each frame, then :meth:`finish`; both return the
    frames completed by then, in frame order.

    Args:
        net: a GLSMamba in eval mode (its ``config`` gives the clip length and the crop size).
        device: where the crops are sent.
        boxes: person boxes per frame index (``{t: [(box (4,) x, y, w, h, score), ...]}``, as
            :func:`vhpe.demo.load_boxes` reads them); ``None`` = the whole frame is one person box.
        batch_size: person clips per forward pass.
        flip: flip test.
    """

    def __init__(self, net, device: torch.device, boxes: dict[int, list[tuple[np.ndarray, float]]] | None = None,
                 batch_size: int = 16, flip: bool = False):
        cfg = net.config
        self.net, self.device, self.boxes, self.batch_size, self.flip = net, device, boxes, batch_size, flip
        self.clip_len, self.half = cfg.num_frames, cfg.num_frames // 2
        self.after = self.clip_len - 1 - self.half  # frames needed after the key frame
        self.input_size = (cfg.image_size[1], cfg.image_size[0])  # (W, H)
        self.frames_seen = 0
        self._buffer: dict[int, np.ndarray] = {}
        self._pending: list[int] = []  # received key frames whose people are not predicted yet
        self._jobs: list[tuple[int, np.ndarray, float, np.ndarray, np.ndarray, np.ndarray]] = []
        self._results: dict[int, list[dict[str, Any]]] = {}
        self._next_out = 0

    def push(self, frame: np.ndarray) -> list[FramePoses]:
        """Add the next frame ``(H, W, 3)`` uint8; returns the frames completed now (possibly none)."""
        self._buffer[self.frames_seen] = frame
        self._pending.append(self.frames_seen)
        self.frames_seen += 1
        while self._pending and self._pending[0] + self.after < self.frames_seen:
            self._crop_people(self._pending.pop(0), None)
        if self._jobs:  # a partial batch: those frames complete with a later flush
            return []
        return self._emit_ready(min(self._pending, default=self.frames_seen))

    def finish(self) -> list[FramePoses]:
        """End of the stream: predict what is left (windows clamped to the last frame); returns the rest."""
        n = self.frames_seen
        while self._pending:
            self._crop_people(self._pending.pop(0), n)
        self._flush()
        return self._emit_ready(n)

    def _people(self, t: int, shape: tuple[int, ...]) -> list[tuple[np.ndarray, float]]:
        if self.boxes is None:
            return [(np.array([0.0, 0.0, shape[1], shape[0]]), 1.0)]
        return self.boxes.get(t, [])

    def _crop_people(self, t: int, length: int | None) -> None:
        """Queue a crop of the window around ``t`` per person of frame ``t`` (``length``: the stream's, once known);
        predict when a batch is full."""
        n = length if length is not None else t + self.after + 1
        images = [self._buffer[i] for i in clip_indices(t, self.clip_len, n)]
        for box, score in self._people(t, images[self.half].shape):
            clip, center, scale = infer.crop_clip(images, box, self.input_size)
            self._jobs.append((t, box, score, clip, center, scale))
        if len(self._jobs) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        """Predict the queued crops and file the decoded people under their frames."""
        if not self._jobs:
            return
        jobs = self._jobs
        crops = torch.from_numpy(np.stack([j[3] for j in jobs])).to(self.device)
        heat = infer.predict_heatmaps(self.net, crops, flip=self.flip).cpu().numpy()
        kp, sc = keypoints_from_heatmaps(heat, np.stack([j[4] for j in jobs]), np.stack([j[5] for j in jobs]))
        for (t, box, score, *_), k, s in zip(jobs, kp, sc, strict=True):
            self._results.setdefault(t, []).append({
                "bbox": [round(float(v), 2) for v in box], "bbox_score": round(score, 4),
                "keypoints": [[round(float(x), 2), round(float(y), 2)] for x, y in k],
                "keypoint_scores": [round(float(v), 4) for v in s]})
        self._jobs = []

    def _emit_ready(self, upto: int) -> list[FramePoses]:
        """The frames before ``upto`` not returned yet; then release the frames no pending window needs."""
        out = []
        while self._next_out < upto:
            t = self._next_out
            out.append(FramePoses(t, self._buffer[t], self._results.pop(t, [])))
            self._next_out += 1
        keep = min(self._next_out, min(self._pending, default=self._next_out) - self.half)
        for old in [i for i in self._buffer if i < keep]:
            del self._buffer[old]
        return out
