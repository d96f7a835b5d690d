"""Batched inference and evaluation: clips -> heatmaps -> image keypoints -> PoseTrack18 predictions + metrics.

* :func:`load_model` builds a network from a checkpoint (``final.pth``, ``last.pth`` or any :mod:`model.checkpoint`
  file) in eval mode.
* :func:`crop_clip` is the test-time crop (the same box -> centre/scale -> affine warp as training).
* :func:`predict_dataset` runs a :class:`~vhpe.dataset.PoseTrackClipDataset` in batches (optionally with the flip
  test) and decodes the heatmaps back to image coordinates.
* :func:`evaluate_model` / :func:`evaluate_checkpoint` add the PoseTrack mAP and, where the ground truth marks
  occluded joints (``glsmamba synth`` data), the same AP on occluded joints only
  (:func:`vhpe.metrics.occlusion.occlusion_metrics`).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .codec import flip_test, keypoints_from_heatmaps
from .dataset import IMAGENET_MEAN, IMAGENET_STD
from .metrics.occlusion import occlusion_metrics
from .progress import Progress
from .skeleton import POSETRACK15
from .transforms import box_to_center_scale, get_affine_transform, warp_affine


def load_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu", backend: str = "auto",
               backbone: str | os.PathLike | None = None, trust_backbone: bool = False):
    """A :class:`model.GLSMamba` from ``checkpoint`` on ``device``, in eval mode, running ``backend``.

    Args:
        checkpoint: a file written by ``glsmamba train`` or :func:`model.save`.
        device: where the model runs.
        backend: ``auto``, ``reference`` or ``triton``.
        backbone: ViTPose weights for checkpoints saved without their frozen encoder.
        trust_backbone: allow full unpickling of ``backbone`` (mmpose files with non-tensor metadata).
    """
    from glsmamba.model.checkpoint import load

    net = load(checkpoint, map_location=device, backbone=backbone, trust_backbone=trust_backbone)
    net.backend = backend
    return net.eval()


def crop_clip(images: Sequence[np.ndarray], box, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """Crop one person box from every frame of a clip, as the dataset does at test time.

    Args:
        images: ``T`` frames ``(H, W, 3)`` uint8 RGB.
        box: ``(4,)`` ``x, y, w, h`` in image pixels (in the key frame; used for every frame).
        input_size: ``(W, H)`` of the crop.

    Returns:
        frames ``(T, 3, H_in, W_in)`` float32 ImageNet-normalised, centre ``(2,)`` and scale ``(2,)``.
    """
    center, scale = box_to_center_scale(box, aspect_ratio=input_size[0] / input_size[1])
    mat = get_affine_transform(center, scale, 0.0, input_size)
    crops = np.stack([warp_affine(im, mat, input_size) for im in images])
    crops = (crops / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32), center, scale


@torch.no_grad()
def predict_heatmaps(net, frames: torch.Tensor, flip: bool = False,
                     amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """``frames (N, T, 3, H, W)`` -> key-frame heatmaps ``(N, J, H/4, W/4)`` float32 (flip test averaged in)."""
    device = frames.device

    def run(x):
        if amp_dtype is not None:
            with torch.autocast(device_type=device.type, dtype=amp_dtype):
                return net(x).float()
        return net(x).float()

    if flip:
        return flip_test(run, frames, POSETRACK15.flip_indices, shift=True)
    return run(frames)


@dataclass
class Predictions:
    """Decoded predictions of a dataset, one row per clip (dataset order)."""

    image_ids: np.ndarray  # (N,)
    keypoints: np.ndarray  # (N, J, 2) image pixels
    scores: np.ndarray  # (N, J) heatmap maxima
    track_ids: np.ndarray  # (N,)
    box_scores: np.ndarray  # (N,)


def predict_dataset(net, dataset, batch_size: int = 32, device: str | torch.device = "cpu", flip: bool = False,
                    amp_dtype: torch.dtype | None = None, decode: str = "msra", workers: int = 0,
                    progress: bool = False) -> Predictions:
    """Run ``net`` on every clip of ``dataset`` (a :class:`~vhpe.dataset.PoseTrackClipDataset`).

    Args:
        net: a GLSMamba (put in eval mode here).
        dataset: the clips (``train=False``).
        batch_size: clips per forward pass.
        device: where to run.
        flip: flip test (average with the flipped clip's heatmaps, flipped back).
        amp_dtype: autocast dtype (``None`` = float32).
        decode: ``msra`` (argmax + quarter offset) or ``dark``.
        workers: data loader processes.
        progress: print a progress line to stderr.

    Returns:
        :class:`Predictions` in dataset order.
    """
    device = torch.device(device)
    net.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    ids, kps, scs, tracks, boxes = [], [], [], [], []
    prog = Progress(len(loader), "predict", every=10, enabled=progress)
    n = 0
    for i, batch in enumerate(loader):
        heat = predict_heatmaps(net, batch["frames"].to(device), flip=flip, amp_dtype=amp_dtype).cpu().numpy()
        m = batch["meta"]
        kp, sc = keypoints_from_heatmaps(heat, m["center"].numpy(), m["scale"].numpy(), method=decode)
        ids.append(m["image_id"].numpy())
        kps.append(kp)
        scs.append(sc)
        tracks.append(m["track_id"].numpy())
        boxes.append(m["box_score"].numpy())
        n += len(kp)
        prog.update(i + 1, n)
    j = POSETRACK15.num_joints
    if not ids:
        return Predictions(np.zeros(0, dtype=np.int64), np.zeros((0, j, 2)), np.zeros((0, j)),
                           np.zeros(0, dtype=np.int64), np.zeros(0))
    return Predictions(np.concatenate(ids), np.concatenate(kps), np.concatenate(scs), np.concatenate(tracks),
                       np.concatenate(boxes))


def evaluate_model(net, dataset, batch_size: int = 32, device: str | torch.device = "cpu", flip: bool = False,
                   amp_dtype: torch.dtype | None = None, decode: str = "msra", workers: int = 0,
                   pred_dir: str | os.PathLike | None = None, progress: bool = False) -> dict[str, Any]:
    """Predict ``dataset`` and score it: PoseTrack mAP (every joint), plus
    :func:`~vhpe.metrics.occlusion.occlusion_metrics`.

    Args:
        net, dataset, batch_size, device, flip, amp_dtype, decode, workers, progress: see :func:`predict_dataset`.
        pred_dir: also write the predictions there, one PoseTrack18 file per video.

    Returns:
        ``{"metrics": PoseTrack summary + per joint (percent), "occluded": ... or None, "predictions":
        Predictions, "files": [paths]}``.
    """
    from .dataset import predictions_to_videos, write_posetrack_predictions
    from .metrics import evaluate_posetrack

    preds = predict_dataset(net, dataset, batch_size, device, flip, amp_dtype, decode, workers, progress)
    args = (dataset.videos, preds.image_ids, preds.keypoints, preds.scores, preds.track_ids, preds.box_scores)
    files = []
    if pred_dir is not None:
        files = write_posetrack_predictions(pred_dir, *args)
    res = evaluate_posetrack(dataset.videos, predictions_to_videos(*args))
    return {"metrics": res.as_dict(), "table": res.table(), "occluded": occlusion_metrics(dataset, preds),
            "predictions": preds, "files": [str(f) for f in files]}


def evaluate_checkpoint(checkpoint: str | os.PathLike, data: str | os.PathLike, split: str = "val",
                        boxes: str = "gt", flip: bool = False, out: str | os.PathLike | None = None,
                        batch_size: int = 32, device: str | None = None, backend: str = "auto",
                        decode: str = "msra", workers: int = 0, backbone: str | None = None,
                        det_score_thr: float = 0.0, progress: bool = False,
                        trust_backbone: bool = False) -> dict[str, Any]:
    """Evaluate a checkpoint on ``data/annotations/<split>``: writes ``out/predictions/<video>.json`` (PoseTrack18)
    and ``out/results.json`` (metrics + the settings that produced them: checkpoint, boxes, flip, decode).

    Args:
        checkpoint: the model file.
        data: dataset root.
        split: annotation folder.
        boxes: ``gt`` or a detections file (COCO results list or ``{file_name: [[x, y, w, h, score]]}``).
        flip: flip test.
        out: output folder (default ``<checkpoint folder>/eval-<split>-<gt|det>[-flip]``).
        batch_size, device, backend, decode, workers, progress: inference settings.
        backbone: ViTPose weights for checkpoints saved without their frozen encoder.
        trust_backbone: allow full unpickling of ``backbone`` (mmpose files with non-tensor metadata).
        det_score_thr: minimum detection score.

    Returns:
        the ``results.json`` content plus ``"table"``.
    """
    from .dataset import PoseTrackClipDataset

    ckpt = Path(checkpoint)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = load_model(ckpt, dev, backend, backbone, trust_backbone)
    cfg = net.config
    ann = Path(data) / "annotations" / split
    if not ann.exists():
        raise FileNotFoundError(f"no annotations for split {split!r}: {ann} does not exist")
    h, w = cfg.image_size
    ds = PoseTrackClipDataset(data, split=split, num_frames=cfg.num_frames, boxes=boxes, input_size=(w, h),
                              det_score_thr=det_score_thr)
    box_tag = "gt" if boxes == "gt" else "det"
    out = Path(out) if out is not None else ckpt.parent / f"eval-{split}-{box_tag}{'-flip' if flip else ''}"
    t0 = time.perf_counter()
    res = evaluate_model(net, ds, batch_size, dev, flip, None, decode, workers, out / "predictions", progress)
    doc = {
        "checkpoint": str(ckpt), "data": str(data), "split": split,
        "boxes": "gt" if boxes == "gt" else str(boxes), "flip": bool(flip), "decode": decode,
        "input_size": list(cfg.image_size), "num_frames": cfg.num_frames, "clips": len(ds),
        "backend": backend, "device": str(dev), "time_s": round(time.perf_counter() - t0, 2),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "metrics": res["metrics"], "occluded": res["occluded"],
        "predictions": str(out / "predictions"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    return {**doc, "table": res["table"]}
