"""Streaming pose estimation: frames in, one result per frame out, in order, with bounded memory and the frozen
encoder run once per (frame, crop box).

For every frame ``t`` the model sees the ``T``-frame window around it (edges clamped to the video, as in training:
:func:`vhpe.dataset.clip_indices`), one clip per person box of frame ``t``. The encoder is per frame
(:meth:`model.GLSMamba.encode`), so its features are cached per (frame, crop box): a crop that several clips share
is encoded once, and the trunk runs on the cached features (:meth:`model.GLSMamba.forward_features`).

Box modes (what box crops frame ``i`` of the clip of a person of key frame ``t``):

* ``"key"`` (default, the DCPose convention the model was trained with): the person's box in frame ``t`` crops every
  frame of its window: the crops of :func:`vhpe.infer.crop_clip`, so the results of clip-by-clip prediction. The
  cache pays where boxes repeat: the whole frame (no boxes) or fixed boxes: each frame is then encoded once instead
  of ``T`` times.
* ``"tube"``: each track's box is held fixed over segments of ``segment`` frames (default ``T``): the union of its
  boxes over the segment (re-anchored at every segment start). Frame ``i`` is cropped with the tube box of the
  segment holding ``i`` (the key frame's segment where the track has no box there), so every frame of a track is
  encoded about once whatever the detector does. Tracks are the ``track_id`` of the person entries where given,
  else boxes are linked to the previous frame's by greedy IoU (>= ``link_iou``).

A frame's results are ready once its window is complete (``T - 1 - T // 2`` later frames; in tube mode the boxes of
the segments the window touches too) or the stream ends; person clips are batched across frames; frames and features
are released once no pending window needs them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .codec import flip_back, keypoints_from_heatmaps
from .dataset import IMAGENET_MEAN, IMAGENET_STD, clip_indices
from .skeleton import POSETRACK15
from .tracking import box_iou
from .transforms import box_to_center_scale, get_affine_transform, warp_affine

BOX_MODES = ("key", "tube")
Frame = np.ndarray | Callable[[], np.ndarray]


@dataclass
class FramePoses:
    """The result of one frame: its index, its image and the people found in it."""

    index: int
    image: np.ndarray | None
    instances: list[dict[str, Any]]  # {"bbox", "bbox_score", "keypoints" (15 x [x, y]), "keypoint_scores" (15)}


@dataclass
class _Person:
    box: np.ndarray
    score: float
    track: Any


@dataclass
class _Job:
    frame: int
    person: _Person
    crops: list[tuple[int, tuple[float, ...]]]  # (frame index, crop box) per clip position
    center: np.ndarray = field(default_factory=lambda: np.zeros(2))
    scale: np.ndarray = field(default_factory=lambda: np.zeros(2))


def box_union(boxes: Sequence[np.ndarray]) -> np.ndarray:
    """The smallest ``x, y, w, h`` box holding every box of ``boxes``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    lo, hi = b[:, :2].min(0), (b[:, :2] + b[:, 2:]).max(0)
    return np.concatenate([lo, hi - lo])


class StreamingPredictor:
    """Per-frame poses for a stream of frames: :meth:`push` each frame with its person boxes, then :meth:`finish`;
    both return the frames completed by then (:class:`FramePoses`, in frame order; instances in the order of the
    boxes pushed, with numpy ``keypoints (15, 2)`` and ``keypoint_scores (15,)``).

    Args:
        net: a GLSMamba in eval mode (its ``config`` gives the clip length and the crop size).
        device: where the crops are sent (default: the model's).
        batch_size: person clips per trunk pass (the encoder runs on the new crops of those clips).
        flip: flip test (the flipped crops' features are cached too).
        box_mode: ``"key"`` or ``"tube"`` (module docstring).
        segment: tube segment length in frames (default ``T``).
        amp_dtype: autocast dtype (``None`` = float32).
        link_iou: tube mode without track ids: the IoU that links a box to the previous frame's.
        decode: heatmap decoding, ``msra`` or ``dark``.
        feature_cache: ``False`` encodes every crop of every clip (``T`` per clip, nothing shared: the computation
            before the cache, kept to measure it; same results).
    """

    def __init__(self, net, device: torch.device | str | None = None, batch_size: int = 16, flip: bool = False,
                 box_mode: str = "key", segment: int | None = None, amp_dtype: torch.dtype | None = None,
                 link_iou: float = 0.3, decode: str = "msra", feature_cache: bool = True):
        if box_mode not in BOX_MODES:
            raise ValueError(f"box_mode must be one of {BOX_MODES}, got {box_mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        cfg = net.config
        self.net, self.batch_size, self.flip, self.box_mode = net, batch_size, flip, box_mode
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        self.amp_dtype, self.link_iou, self.decode = amp_dtype, link_iou, decode
        self.feature_cache = feature_cache
        self.clip_len, self.half = cfg.num_frames, cfg.num_frames // 2
        self.after = self.clip_len - 1 - self.half  # frames needed after the key frame
        self.segment = int(segment) if segment is not None else self.clip_len
        if self.segment < 1:
            raise ValueError(f"segment must be >= 1, got {segment}")
        self.input_size = (cfg.image_size[1], cfg.image_size[0])  # (W, H)
        self.frames_seen = 0
        self.encoded = 0  # crops run through the encoder (flipped crops not counted)
        self._frames: dict[int, Frame] = {}
        self._people: dict[int, list[_Person]] = {}
        self._pending: list[int] = []  # received key frames whose people are not queued yet
        self._jobs: list[_Job] = []
        self._feats: dict[tuple[int, tuple[float, ...]], torch.Tensor] = {}
        self._results: dict[int, list[dict[str, Any]]] = {}
        self._next_out = 0
        self._next_track = 0

    # ------------------------------------------------------------------------------------------ stream
    def push(self, frame: Frame, boxes: Sequence[tuple] | None = None) -> list[FramePoses]:
        """Add the next frame (``(H, W, 3)`` uint8 RGB, or a callable returning it: read only when a crop needs it)
        with its person boxes: ``(box (4,) x, y, w, h, score)`` or ``(box, score, track_id)`` entries; ``None`` =
        the whole frame is one person. Returns the frames completed now (possibly none)."""
        t = self.frames_seen
        self._frames[t] = frame
        self._people[t] = self._parse(t, boxes)
        self._pending.append(t)
        self.frames_seen += 1
        while self._pending and self._ready(self._pending[0]):
            self._queue(self._pending.pop(0), None)
        if self._jobs:  # a partial batch: those frames complete with a later flush
            return []
        return self._emit_ready(min(self._pending, default=self.frames_seen))

    def finish(self) -> list[FramePoses]:
        """End of the stream: predict what is left (windows clamped to the last frame); returns the rest."""
        n = self.frames_seen
        while self._pending:
            self._queue(self._pending.pop(0), n)
        self._flush()
        return self._emit_ready(n)

    def _ready(self, t: int) -> bool:
        last = t + self.after  # the last frame of t's window
        if self.box_mode == "tube":  # the boxes of the whole segment holding it
            last = (last // self.segment + 1) * self.segment - 1
        return last < self.frames_seen

    # ------------------------------------------------------------------------------------------ boxes
    def _image(self, i: int) -> np.ndarray:
        f = self._frames[i]
        if callable(f):
            f = self._frames[i] = f()
        return f

    def _parse(self, t: int, boxes: Sequence[tuple] | None) -> list[_Person]:
        if boxes is None:
            img = self._image(t)
            return [_Person(np.array([0.0, 0.0, img.shape[1], img.shape[0]]), 1.0, "frame")]
        people = []
        for k, entry in enumerate(boxes):
            if len(entry) not in (2, 3):
                raise ValueError(f"boxes[{k}] of frame {t}: expected (box, score) or (box, score, track_id), got "
                                 f"{len(entry)} items")
            box = np.asarray(entry[0], dtype=np.float64)
            if box.shape != (4,):
                raise ValueError(f"boxes[{k}] of frame {t}: box must be (4,) x, y, w, h, got shape {box.shape}")
            people.append(_Person(box, float(entry[1]), entry[2] if len(entry) == 3 else None))
        if self.box_mode == "tube":
            self._link(t, people)
        return people

    def _link(self, t: int, people: list[_Person]) -> None:
        """Give the people without a track id one: the previous frame's best IoU match (greedy), else a new one."""
        prev = [p for p in self._people.get(t - 1, []) if p.track is not None]
        taken = {p.track for p in people if p.track is not None}
        pairs = sorted(((box_iou(p.box, q.box), i, j) for i, p in enumerate(people) if p.track is None
                        for j, q in enumerate(prev)), reverse=True)
        for iou, i, j in pairs:
            if iou < self.link_iou:
                break
            if people[i].track is None and prev[j].track not in taken:
                people[i].track = prev[j].track
                taken.add(prev[j].track)
        for p in people:
            if p.track is None:
                p.track = ("new", self._next_track)
                self._next_track += 1

    def _tube_box(self, track: Any, i: int, n: int) -> np.ndarray | None:
        """The union of ``track``'s boxes over the segment holding frame ``i`` (``n`` frames known)."""
        s = i // self.segment * self.segment
        boxes = [p.box for f in range(s, min(s + self.segment, n)) for p in self._people.get(f, []) if p.track == track]
        return box_union(boxes) if boxes else None

    def _queue(self, t: int, length: int | None) -> None:
        """Queue a clip per person of frame ``t`` (``length``: the stream's, once known); predict when a batch is
        full."""
        n = length if length is not None else self.frames_seen
        window = clip_indices(t, self.clip_len, length if length is not None else t + self.after + 1)
        aspect = self.input_size[0] / self.input_size[1]
        for p in self._people[t]:
            key_box = p.box if self.box_mode == "key" else self._tube_box(p.track, t, n)
            crops = []
            for i in window:
                box = key_box
                if self.box_mode == "tube":
                    own = self._tube_box(p.track, i, n)
                    box = own if own is not None else key_box
                crops.append((i, tuple(float(v) for v in box)))
            center, scale = box_to_center_scale(key_box, aspect_ratio=aspect)
            self._jobs.append(_Job(t, p, crops, center, scale))
        if len(self._jobs) >= self.batch_size:
            self._flush()

    # ------------------------------------------------------------------------------------------ model
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _crop(self, i: int, box: tuple[float, ...]) -> np.ndarray:
        """Frame ``i`` cropped with ``box`` as :func:`vhpe.infer.crop_clip` crops it: ``(3, H, W)`` float32."""
        center, scale = box_to_center_scale(np.asarray(box), aspect_ratio=self.input_size[0] / self.input_size[1])
        mat = get_affine_transform(center, scale, 0.0, self.input_size)
        crop = (warp_affine(self._image(i), mat, self.input_size)[None] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return np.ascontiguousarray(crop[0].transpose(2, 0, 1), dtype=np.float32)

    def _encode(self, keys: list[tuple[int, tuple[float, ...]]]) -> torch.Tensor:
        """Features of the crops ``keys``: ``(n, C, h, w)``, or ``(n, 2, C, h, w)`` with the flipped crops' (flip
        test); encoded in chunks of ``batch_size * T`` crops."""
        out = []
        for s in range(0, len(keys), self.batch_size * self.clip_len):
            chunk = keys[s:s + self.batch_size * self.clip_len]
            x = torch.from_numpy(np.stack([self._crop(*k) for k in chunk])).to(self.device)
            with self._autocast():
                feats = self.net.encode(x)
                out.append(torch.stack([feats, self.net.encode(x.flip(-1))], 1) if self.flip else feats)
            self.encoded += len(chunk)
        return torch.cat(out)

    def _features(self, jobs: list[_Job]) -> torch.Tensor:
        """The clips' features ``(N, T, [2,] C, h, w)``: cached crops reused, new ones encoded (and cached)."""
        keys = [k for j in jobs for k in j.crops]
        if not self.feature_cache:
            return self._encode(keys).unflatten(0, (len(jobs), self.clip_len))
        new = [k for k in dict.fromkeys(keys) if k not in self._feats]
        if new:
            self._feats.update(zip(new, self._encode(new), strict=True))
        return torch.stack([torch.stack([self._feats[k] for k in j.crops]) for j in jobs])

    @torch.inference_mode()
    def _flush(self) -> None:
        """Predict the queued clips and file the decoded people under their frames."""
        if not self._jobs:
            return
        jobs = self._jobs
        feats = self._features(jobs)
        with self._autocast():
            if self.flip:  # (N, T, 2, C, h, w): [:, :, 0] the crops, [:, :, 1] the flipped crops
                heat = self.net.forward_features(feats[:, :, 0]).float()
                back = flip_back(self.net.forward_features(feats[:, :, 1]).float(), POSETRACK15.flip_indices, True)
                heat = 0.5 * (heat + back)
            else:
                heat = self.net.forward_features(feats).float()
        kp, sc = keypoints_from_heatmaps(heat.cpu().numpy(), np.stack([j.center for j in jobs]),
                                         np.stack([j.scale for j in jobs]), method=self.decode)
        for j, k, s in zip(jobs, kp, sc, strict=True):
            self._results.setdefault(j.frame, []).append({"bbox": j.person.box, "bbox_score": j.person.score,
                                                          "keypoints": k, "keypoint_scores": s})
        self._jobs = []

    def _emit_ready(self, upto: int) -> list[FramePoses]:
        """The frames before ``upto`` not returned yet; then release the frames and features no pending window
        needs."""
        out = []
        while self._next_out < upto:
            t = self._next_out
            f = self._frames[t]
            out.append(FramePoses(t, None if callable(f) else f, self._results.pop(t, [])))
            self._next_out += 1
        keep = min(self._next_out, min(self._pending, default=self._next_out) - self.half)
        if self.box_mode == "tube":  # tube boxes read the boxes of the segment holding the oldest window frame
            keep = min(keep, max(0, keep) // self.segment * self.segment)
        for old in [i for i in self._frames if i < keep]:
            del self._frames[old]
            self._people.pop(old, None)
        for k in [k for k in self._feats if k[0] < keep]:
            del self._feats[k]
        return out


class StreamingPoseEstimator:
    """The demo's stream: :class:`StreamingPredictor` with person boxes per frame index looked up here and JSON-ready
    instances (rounded lists). :meth:`push` each frame, then :meth:`finish`; both return the completed frames.

    Args:
        net: a GLSMamba in eval mode.
        device: where the crops are sent.
        boxes: person boxes per frame index (``{t: [(box (4,) x, y, w, h, score), ...]}``, as
            :func:`vhpe.demo.load_boxes` reads them); ``None`` = the whole frame is one person box.
        batch_size: person clips per forward pass.
        flip: flip test.
        **kwargs: :class:`StreamingPredictor` options (``box_mode``, ``amp_dtype``, ``feature_cache``, ...).
    """

    def __init__(self, net, device: torch.device, boxes: dict[int, list[tuple[np.ndarray, float]]] | None = None,
                 batch_size: int = 16, flip: bool = False, **kwargs: Any):
        self.boxes = boxes
        self.predictor = StreamingPredictor(net, device, batch_size=batch_size, flip=flip, **kwargs)
        self.clip_len = self.predictor.clip_len

    @property
    def frames_seen(self) -> int:
        return self.predictor.frames_seen

    def push(self, frame: np.ndarray) -> list[FramePoses]:
        """Add the next frame ``(H, W, 3)`` uint8; returns the frames completed now (possibly none)."""
        t = self.predictor.frames_seen
        people = None if self.boxes is None else self.boxes.get(t, [])
        return [self._json(r) for r in self.predictor.push(frame, people)]

    def finish(self) -> list[FramePoses]:
        """End of the stream: predict what is left; returns the rest."""
        return [self._json(r) for r in self.predictor.finish()]

    @staticmethod
    def _json(r: FramePoses) -> FramePoses:
        r.instances = [{"bbox": [round(float(v), 2) for v in inst["bbox"]],
                        "bbox_score": round(inst["bbox_score"], 4),
                        "keypoints": [[round(float(x), 2), round(float(y), 2)] for x, y in inst["keypoints"]],
                        "keypoint_scores": [round(float(v), 4) for v in inst["keypoint_scores"]]}
                       for inst in r.instances]
        return r
