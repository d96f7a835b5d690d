"""Top-down video-pose clips for training and evaluation, and the writer of PoseTrack18 predictions.

:class:`PoseTrackClipDataset` yields, for every person of every labelled frame (GT boxes, or boxes from a
detections file), a clip of ``T`` frames (default 5) centred on the key frame (edges clamped to the video,
as DCPose does), all cropped with the key person's box:

* ``frames``: ``(T, 3, 256, 192)`` float32, RGB, ImageNet-normalised (key frame at index ``T // 2``); the size is
  ``input_size`` (default ``(192, 256)`` = W x H);
* ``target``: ``(J, 64, 48)`` float32 Gaussian heatmaps (``heatmap_size``, default ``input_size / 4``) of the key frame
  (``J = 15`` PoseTrack joints, order of :data:`vhpe.skeleton.POSETRACK15`); zeros for detection boxes;
* ``target_weight``: ``(J,)`` float32 (0 for unlabelled joints; times the joint loss weights by default);
* ``meta``: ``image_id``, ``video_index``, ``frame_index``, ``center`` (2,), ``scale`` (2,), ``box`` (4,),
  ``box_score``, ``track_id`` (-1 when unknown), ``rotation``, ``flipped``, ``joints`` (J, 3) image-space GT
  (``x, y, labelled``), ``occluded`` (J,) - everything needed to map decoded heatmaps back to the image
  (:func:`vhpe.codec.keypoints_from_heatmaps`) and to write them with :func:`write_posetrack_predictions`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .codec import encode_heatmaps
from .formats import FormatError, Frame, Person, Video, load_json, read_videos, write_posetrack18
from .skeleton import POSETRACK15, SLOTS_15, slots15_to_17
from .transforms import (
    INPUT_SIZE,
    Augment,
    affine_points,
    box_to_center_scale,
    flip_joints,
    get_affine_transform,
    half_body_center_scale,
    warp_affine,
)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_UPPER = tuple(range(0, 9))  # nose, head, shoulders, elbows, wrists (15-joint order)
_LOWER = tuple(range(9, 15))


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as ``(H, W, 3)`` uint8 RGB (Pillow)."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is a dependency
        raise ImportError("reading images needs Pillow: pip install pillow") from e
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def clip_indices(key: int, num_frames: int, length: int, stride: int = 1) -> list[int]:
    """Frame indices of a ``num_frames`` clip around ``key`` (key at position ``num_frames // 2``), clamped to
    ``[0, length - 1]``; e.g. key 0, T 5, length 10 -> ``[0, 0, 0, 1, 2]``."""
    if num_frames < 1 or length < 1 or not 0 <= key < length:
        raise ValueError(f"need num_frames >= 1, length >= 1 and 0 <= key < length; got {num_frames}, {length}, {key}")
    half = num_frames // 2
    return [min(max(key + (i - half) * stride, 0), length - 1) for i in range(num_frames)]


def read_detections(path: str | os.PathLike, score_thr: float = 0.0) -> dict[object, list[tuple[np.ndarray, float]]]:
    """Read person boxes: a COCO detection results list ``[{image_id, category_id, bbox, score}]`` (keyed by
    image id) or a mapping ``{file_name: [[x, y, w, h, score], ...]}`` (keyed by file name).

    Boxes below ``score_thr`` and non-person categories are dropped.
    """
    data = load_json(path)
    out: dict[object, list[tuple[np.ndarray, float]]] = {}
    if isinstance(data, list):
        for i, d in enumerate(data):
            for key in ("image_id", "bbox"):
                if not isinstance(d, dict) or key not in d:
                    raise FormatError(f"{path}: [{i}]: missing key {key!r}")
            if d.get("category_id", 1) != 1:
                continue
            box = np.asarray(d["bbox"], dtype=np.float64)
            if box.shape != (4,):
                raise FormatError(f"{path}: [{i}].bbox: expected 4 values x, y, w, h, got {box.size}")
            score = float(d.get("score", 1.0))
            if score >= score_thr:
                out.setdefault(d["image_id"], []).append((box, score))
        return out
    if isinstance(data, dict):
        for name, boxes in data.items():
            for i, b in enumerate(boxes):
                b = np.asarray(b, dtype=np.float64)
                if b.shape not in ((4,), (5,)):
                    raise FormatError(f"{path}: {name}[{i}]: expected [x, y, w, h(, score)], got {b.size} values")
                score = float(b[4]) if b.size == 5 else 1.0
                if score >= score_thr:
                    out.setdefault(name, []).append((b[:4], score))
        return out
    raise FormatError(f"{path}: top level: expected a list of detections or a mapping file_name -> boxes")


@dataclass
class _Sample:
    video: int
    frame: int
    box: np.ndarray
    box_score: float
    person: Person | None


class PoseTrackClipDataset:
    """PyTorch-style dataset of T-frame person clips from PoseTrack18-layout data (see module docstring).

    Args:
        root: dataset root; image paths are ``root / frame.file_name``.
        annotations: a path readable by :func:`vhpe.formats.read_videos` (PoseTrack18 folder or file,
            annolist, COCO) or a list of :class:`~vhpe.formats.Video`; default ``root/annotations/<split>``.
        split: used for the default annotation folder.
        num_frames: clip length ``T`` (key frame at ``T // 2``).
        frame_stride: spacing between clip frames.
        boxes: ``"gt"`` or the path of a detections file (:func:`read_detections`).
        det_score_thr: minimum detection score.
        train: sample augmentations (:class:`~vhpe.transforms.Augment`).
        augment: augmentation parameters (``Augment()`` when ``train``).
        sigma: target Gaussian sigma (heatmap pixels).
        unbiased: DARK-style float-centred targets.
        use_joint_weights: multiply target weights by the joint loss weights (1.2 elbows/knees, 1.5 wrists/ankles).
        min_joints: GT persons with fewer labelled joints are skipped (GT boxes).
        check_images: verify at construction that every image a clip uses exists.
        seed: seed of the augmentation generator (re-seeded per item as ``(seed, epoch, index)``).
        cache_size: decoded images kept in memory (LRU).
        input_size: ``(W, H)`` of the crops (default ``(192, 256)``); boxes are padded to its aspect ratio.
        heatmap_size: ``(W, H)`` of the targets (default ``input_size // 4``, stride 4).
    """

    def __init__(self, root: str | os.PathLike, annotations: str | os.PathLike | list[Video] | None = None,
                 split: str = "train", num_frames: int = 5, frame_stride: int = 1, boxes: str = "gt",
                 det_score_thr: float = 0.0, train: bool = False, augment: Augment | None = None,
                 sigma: float = 2.0, unbiased: bool = False, use_joint_weights: bool = True, min_joints: int = 1,
                 check_images: bool = True, seed: int = 0, cache_size: int = 64,
                 input_size: tuple[int, int] = INPUT_SIZE, heatmap_size: tuple[int, int] | None = None):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        input_size = tuple(int(v) for v in input_size)
        if len(input_size) != 2 or min(input_size) < 4 or input_size[0] % 4 or input_size[1] % 4:
            raise ValueError(f"input_size must be (W, H), positive multiples of 4, got {input_size}")
        if heatmap_size is None:
            heatmap_size = (input_size[0] // 4, input_size[1] // 4)
        heatmap_size = tuple(int(v) for v in heatmap_size)
        if len(heatmap_size) != 2 or min(heatmap_size) < 1:
            raise ValueError(f"heatmap_size must be (W, H) with positive sizes, got {heatmap_size}")
        self.input_size, self.heatmap_size = input_size, heatmap_size
        self.root = Path(root)
        if annotations is None:
            annotations = self.root / "annotations" / split
        self.videos: list[Video] = list(annotations) if isinstance(annotations, list) else read_videos(annotations)
        for v in self.videos:
            if v.skeleton != "posetrack18":
                raise ValueError(f"video {v.name!r} has skeleton {v.skeleton!r}; the clip dataset reads PoseTrack "
                                 f"(17-slot) annotations")
        self.num_frames, self.frame_stride = num_frames, frame_stride
        self.train = train
        self.augment = augment or (Augment() if train else None)
        self.sigma, self.unbiased = sigma, unbiased
        self.joint_weights = np.asarray(POSETRACK15.joint_weights, dtype=np.float32) if use_joint_weights else None
        self.seed, self.epoch = seed, 0
        self.boxes = boxes
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        dets = None if boxes == "gt" else read_detections(boxes, det_score_thr)
        self.samples: list[_Sample] = []
        for vi, v in enumerate(self.videos):
            for fi, f in enumerate(v.frames):
                if not f.is_labeled:
                    continue
                if dets is None:
                    for p in f.people:
                        if int(p.annotated()[list(SLOTS_15)].sum()) < min_joints:
                            continue
                        self.samples.append(_Sample(vi, fi, self._person_box(p, v, fi), 1.0, p))
                else:
                    found = dets.get(f.id, []) + dets.get(f.file_name, [])
                    for box, score in found:
                        self.samples.append(_Sample(vi, fi, box, score, None))
        if check_images:
            self._check_images()

    # -------------------------------------------------------------------------------------------- helpers
    @staticmethod
    def _person_box(p: Person, v: Video, fi: int) -> np.ndarray:
        if p.bbox is not None and p.bbox[2] > 0 and p.bbox[3] > 0:
            return p.bbox
        lab = p.annotated()
        if lab.sum() < 2:
            raise FormatError(f"video {v.name!r} frame {fi} ({v.frames[fi].file_name}): person (track_id "
                              f"{p.track_id}) has no 'bbox' and fewer than 2 labelled joints to derive one")
        lo, hi = p.keypoints[lab, :2].min(axis=0), p.keypoints[lab, :2].max(axis=0)
        return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]])

    def _check_images(self) -> None:
        missing = []
        needed: dict[tuple[int, int], None] = {}
        for s in self.samples:
            n = len(self.videos[s.video].frames)
            for t in clip_indices(s.frame, self.num_frames, n, self.frame_stride):
                needed[(s.video, t)] = None
        for vi, fi in needed:
            f = self.videos[vi].frames[fi]
            if not (self.root / f.file_name).is_file():
                missing.append(f"video {self.videos[vi].name!r} images[{fi}].file_name = {f.file_name!r}")
        if missing:
            more = f" ... ({len(missing) - 5} more)" if len(missing) > 5 else ""
            raise FileNotFoundError(f"{len(missing)} images do not exist under root {str(self.root)!r}: "
                                    + "; ".join(missing[:5]) + more)

    def _image(self, f: Frame) -> np.ndarray:
        key = f.file_name
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        path = self.root / key
        if not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r} (images[].file_name = {key!r}) does not exist")
        img = load_image(path)
        self._cache[key] = img
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return img

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream (call once per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    # -------------------------------------------------------------------------------------------- item
    def __getitem__(self, index: int) -> dict:
        import torch

        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} samples")
        s = self.samples[index]
        video = self.videos[s.video]
        key_frame = video.frames[s.frame]
        aspect = self.input_size[0] / self.input_size[1]
        center, scale = box_to_center_scale(s.box, aspect_ratio=aspect)
        if s.person is not None:
            kp15 = s.person.keypoints[list(SLOTS_15)]
            vis = s.person.annotated()[list(SLOTS_15)].astype(np.float64)
            occ = np.asarray(s.person.extra.get("occluded", [0] * 17), dtype=np.float32)[list(SLOTS_15)]
        else:
            kp15, vis, occ = np.zeros((15, 3)), np.zeros(15), np.zeros(15, dtype=np.float32)
        joints = np.concatenate([kp15[:, :2], vis[:, None]], axis=1)
        rot, flip = 0.0, False
        if self.train and self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            a = self.augment
            if a.half_body_prob > 0 and vis.sum() > a.half_body_min_joints and rng.random() < a.half_body_prob:
                hb = half_body_center_scale(joints, vis > 0, _UPPER, _LOWER, rng, aspect_ratio=aspect)
                if hb is not None:
                    center, scale = hb
            sf, rot, flip = a.sample(rng)
            scale = scale * sf
        idx = clip_indices(s.frame, self.num_frames, len(video.frames), self.frame_stride)
        images = [self._image(video.frames[t]) for t in idx]
        width = images[self.num_frames // 2].shape[1]
        if flip:
            images = [im[:, ::-1] for im in images]
            joints = flip_joints(joints, width, POSETRACK15.flip_pairs)
            occ = occ[POSETRACK15.flip_indices]
            center = center.copy()
            center[0] = width - 1 - center[0]
        mat = get_affine_transform(center, scale, rot, self.input_size)
        crops = np.stack([warp_affine(im, mat, self.input_size) for im in images])  # (T, H, W, 3)
        crops = (crops / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        joints_crop = joints.copy()
        joints_crop[:, :2] = affine_points(joints[:, :2], mat)
        target, weight = encode_heatmaps(joints_crop, joints[:, 2], self.heatmap_size, self.input_size, self.sigma,
                                         self.joint_weights, self.unbiased)
        image_joints = np.concatenate([kp15[:, :2], vis[:, None]], axis=1)  # unaugmented, image space
        meta = {
            "image_id": int(key_frame.id if key_frame.id is not None else -1),
            "video_index": s.video, "frame_index": s.frame,
            "center": torch.as_tensor(center, dtype=torch.float64),
            "scale": torch.as_tensor(scale, dtype=torch.float64),
            "box": torch.as_tensor(np.asarray(s.box, dtype=np.float64)),
            "box_score": float(s.box_score),
            "track_id": int(s.person.track_id) if s.person is not None and s.person.track_id is not None else -1,
            "rotation": float(rot), "flipped": bool(flip),
            "joints": torch.as_tensor(image_joints, dtype=torch.float64),
            "occluded": torch.as_tensor(occ, dtype=torch.float32),
        }
        return {
            "frames": torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32)),
            "target": torch.from_numpy(target),
            "target_weight": torch.from_numpy(weight),
            "meta": meta,
        }


# ------------------------------------------------------------------------------------------------ predictions
def predictions_to_videos(videos: Sequence[Video], image_ids, keypoints, scores, track_ids=None, box_scores=None,
                          score_thr: float = 0.2) -> list[Video]:
    """Build prediction videos (every GT frame present, as poseval requires) from decoded keypoints.

    Args:
        videos: the ground-truth videos (their frames, names and ids are copied; people are not).
        image_ids: ``(N,)`` image id of each prediction (``meta["image_id"]``).
        keypoints: ``(N, 15, 2)`` image coordinates (15 PoseTrack joints, network order).
        scores: ``(N, 15)`` joint confidences (heatmap maxima).
        track_ids: ``(N,)`` track ids (``-1`` = unknown); ids are kept when unique within a frame, else each
            frame's people are numbered 0, 1, ...
        box_scores: ``(N,)`` person box scores (default 1). Joint score = confidence x box score (DCPose);
            person ``score`` = box score x mean joint confidence over joints above ``score_thr``.
        score_thr: see above.

    Returns:
        one prediction :class:`Video` per GT video (17 slots, ears empty, ``v = 1`` for the 15 joints).
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    sc = np.asarray(scores, dtype=np.float64)
    n = kp.shape[0]
    if kp.shape != (n, 15, 2) or sc.shape != (n, 15):
        raise ValueError(f"keypoints must have shape (N, 15, 2) and scores (N, 15); got {kp.shape} and {sc.shape}")
    ids = np.asarray(image_ids).reshape(-1)
    if ids.shape != (n,):
        raise ValueError(f"image_ids must have shape ({n},), got {ids.shape}")
    tracks = np.full(n, -1) if track_ids is None else np.asarray(track_ids).reshape(-1)
    boxes = np.ones(n) if box_scores is None else np.asarray(box_scores, dtype=np.float64).reshape(-1)
    if tracks.shape != (n,) or boxes.shape != (n,):
        raise ValueError(f"track_ids and box_scores must have shape ({n},), got {tracks.shape} and {boxes.shape}")
    out, where = [], {}
    for v in videos:
        nv = Video(name=v.name, skeleton="posetrack18")
        for f in v.frames:
            nf = Frame(file_name=f.file_name, id=f.id, frame_id=f.frame_id, is_labeled=f.is_labeled,
                       vid_id=f.vid_id, nframes=f.nframes, width=f.width, height=f.height)
            nv.frames.append(nf)
            if f.id is not None:
                where[f.id] = nf
        out.append(nv)
    per_frame: dict[int, list[int]] = {}
    for i in range(n):
        if int(ids[i]) not in where:
            raise ValueError(f"image_ids[{i}] = {int(ids[i])} is not an image of the given videos")
        per_frame.setdefault(int(ids[i]), []).append(i)
    for image_id, rows in per_frame.items():
        t = [int(tracks[i]) for i in rows]
        unique = all(x >= 0 for x in t) and len(set(t)) == len(t)
        for k, i in enumerate(rows):
            joint_scores = sc[i] * boxes[i]
            good = sc[i] > score_thr
            person_score = float(boxes[i] * sc[i][good].mean()) if good.any() else 0.0
            kp15 = np.concatenate([kp[i], np.ones((15, 1))], axis=1)
            where[image_id].people.append(Person(
                keypoints=slots15_to_17(kp15), scores=slots15_to_17(joint_scores[:, None])[:, 0],
                score=person_score, track_id=t[k] if unique else k))
    return out


def write_posetrack_predictions(out_dir: str | os.PathLike, videos: Sequence[Video], image_ids, keypoints, scores,
                                track_ids=None, box_scores=None, score_thr: float = 0.2) -> list[Path]:
    """Write per-video PoseTrack18 prediction files (``out_dir/<video>.json``) from decoded keypoints.

    Arguments as :func:`predictions_to_videos`; returns the written paths (one per GT video, every GT frame
    listed, 17 ``keypoints`` + 17 ``scores`` per person, ``score``, per-frame unique ``track_id``).
    """
    out_dir = Path(out_dir)
    paths = []
    for v in predictions_to_videos(videos, image_ids, keypoints, scores, track_ids, box_scores, score_thr):
        path = out_dir / f"{v.name}.json"
        write_posetrack18(v, path)
        paths.append(path)
    return paths
