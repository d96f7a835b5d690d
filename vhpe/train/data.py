"""The training data: the clip dataset of a split, its distributed sampler and loader."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .config import TrainConfig
from .distributed import DistInfo


def resolve_flip(cfg: TrainConfig, say) -> TrainConfig:
    """``flip_prob=None`` -> 0.5, or 0 on colour-coded synthetic data (:func:`vhpe.synth.mirror_inconsistent`)."""
    from ..synth import mirror_inconsistent

    coded = mirror_inconsistent(cfg.data)
    if cfg.flip_prob is None:
        if coded:
            say(f"{cfg.data}: glsmamba synth data with left/right colour coding: flip augmentation off "
                f"(flip_prob 0)")
        return dataclasses.replace(cfg, flip_prob=0.0 if coded else 0.5)
    if coded and cfg.flip_prob > 0 and cfg.augment:
        say(f"warning: {cfg.data} is glsmamba synth data with left/right colour coding; flip_prob "
            f"{cfg.flip_prob} mirrors figures against their labels")
    return cfg


def build_dataset(cfg: TrainConfig, mcfg, split: str, train: bool):
    """The :class:`~vhpe.dataset.PoseTrackClipDataset` of ``data/annotations/<split>`` at the model's clip size."""
    from ..dataset import PoseTrackClipDataset
    from ..transforms import Augment

    ann = Path(cfg.data) / "annotations" / split
    if not ann.exists():
        raise FileNotFoundError(f"no annotations for split {split!r}: {ann} does not exist (expected the "
                                f"PoseTrack18 layout DATA/annotations/{{train,val}}/*.json, e.g. from glsmamba synth)")
    h, w = mcfg.image_size
    return PoseTrackClipDataset(cfg.data, split=split, num_frames=mcfg.num_frames, frame_stride=cfg.frame_stride,
                                train=train and cfg.augment, sigma=cfg.sigma, seed=cfg.seed, input_size=(w, h),
                                augment=Augment(scale_factor=cfg.scale_factor, rot_factor=cfg.rot_factor,
                                                flip_prob=cfg.flip_prob))


def train_loader(cfg: TrainConfig, mcfg, info: DistInfo, device: torch.device):
    """-> (training dataset, its ``DistributedSampler``, the loader of this process's share of each batch)."""
    train_set = build_dataset(cfg, mcfg, cfg.train_split, train=True)
    if len(train_set) < cfg.batch_size:
        raise ValueError(f"the training split has {len(train_set)} clips, fewer than one batch ({cfg.batch_size})")
    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=info.world, rank=info.rank, shuffle=True,
                                                  seed=cfg.seed, drop_last=True)
    workers = cfg.workers if cfg.workers is not None else (4 if device.type == "cuda" else 0)
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size // info.world, sampler=sampler,
                                         num_workers=workers, drop_last=True, pin_memory=device.type == "cuda")
    return train_set, sampler, loader
