"""The training configuration (:class:`TrainConfig`) and the model configuration a run trains."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

AMP_CHOICES = ("auto", "off", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved to ``config.json`` and into every checkpoint).

    Attributes:
        data: dataset root (``annotations/<split>/*.json`` + images).
        out: run folder.
        preset: model preset (``tiny``, ``base``, ``huge``).
        model_overrides: :class:`model.GLSMambaConfig` fields to change (e.g. ``{"num_frames": 1}``; the command
            line's ``--set`` items, typed by ``GLSMambaConfig.parse_overrides``).
        backend: op backend while training (``auto``, ``reference``, ``triton``).
        epochs: number of epochs.
        lr: initial learning rate.
        lr_steps: epochs (0-based) at which the lr is multiplied by ``lr_factor``.
        lr_factor: the lr step factor.
        warmup_steps: linear lr warm-up over this many optimiser steps (0 = none).
        weight_decay: AdamW weight decay (matrices and convolutions only).
        batch_size: global batch (split over processes; must divide by the world size).
        input_size: crop ``(H, W)``; default the model config's ``image_size`` (256 x 192 for base).
        sigma: target Gaussian sigma in heatmap pixels.
        augment: DCPose augmentation (scale, rotation, flip); off = plain crops.
        scale_factor, rot_factor, flip_prob: the augmentation's scale range, rotation sigma (degrees) and flip
            probability; ``None`` = 0.5, or 0 on ``glsmamba synth`` data (its figures are colour-coded left/right,
            so a mirrored figure contradicts its swapped labels; an explicit value there is kept, with a warning).
        freeze_encoder: override the preset's ``freeze_encoder``.
        backbone: ViTPose weights loaded into the encoder before training.
        trust_backbone: allow full unpickling of ``backbone`` (mmpose files with non-tensor metadata).
        amp: autocast ``auto`` (bf16 on a GPU that supports it, else fp16; off on CPU), ``off``, ``bf16``, ``fp16``.
        clip_grad: max gradient norm (0 = no clipping).
        seed: seed of initialisation, data order and augmentation.
        workers: data loader processes (default 0 on CPU, 4 on GPU).
        device: ``cpu``, ``cuda``, ``cuda:N`` (default: cuda if available).
        threads: torch intra-op threads (default: torch's).
        frame_stride: spacing of the clip frames.
        train_split, val_split: annotation folders under ``data/annotations``.
        eval_every: evaluate PoseTrack mAP on ``val_split`` every k epochs (0 = never).
        keep: per-epoch checkpoints kept (the newest; ``last.pth`` and ``final.pth`` always).
        log_every: progress line every k steps when the output is not a terminal.
        max_steps: debug: stop after this many optimiser steps (in total), as if the process were killed.
        resume: checkpoint to resume from (``"auto"`` = ``out/last.pth``).
        deterministic: ``torch.use_deterministic_algorithms`` (warn only) and deterministic cuDNN.
        sync_bn: synchronise batch-norm statistics across processes (distributed runs).
    """

    data: str
    out: str
    preset: str = "base"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    backend: str = "auto"
    epochs: int = 20
    lr: float = 1e-4
    lr_steps: tuple[int, ...] = (6, 12)
    lr_factor: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 1e-4
    batch_size: int = 16
    input_size: tuple[int, int] | None = None
    sigma: float = 2.0
    augment: bool = True
    scale_factor: float = 0.35
    rot_factor: float = 45.0
    flip_prob: float | None = None
    freeze_encoder: bool | None = None
    backbone: str | None = None
    trust_backbone: bool = False
    amp: str = "auto"
    clip_grad: float = 1.0
    seed: int = 0
    workers: int | None = None
    device: str | None = None
    threads: int | None = None
    frame_stride: int = 1
    train_split: str = "train"
    val_split: str = "val"
    eval_every: int = 0
    keep: int = 2
    log_every: int = 10
    max_steps: int | None = None
    resume: str | None = None
    deterministic: bool = False
    sync_bn: bool = True

    def __post_init__(self) -> None:
        self.lr_steps = tuple(int(e) for e in self.lr_steps)
        if self.input_size is not None:
            self.input_size = tuple(int(v) for v in self.input_size)
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"amp must be one of {AMP_CHOICES}, got {self.amp!r}")
        if self.backend not in ("auto", "reference", "triton"):
            raise ValueError(f"backend must be 'auto', 'reference' or 'triton', got {self.backend!r}")
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) < 4):
            raise ValueError(f"input_size must be (H, W), got {self.input_size}")
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {self.max_steps}")
        if self.clip_grad < 0 or self.weight_decay < 0 or self.warmup_steps < 0 or self.eval_every < 0:
            raise ValueError("clip_grad, weight_decay, warmup_steps and eval_every must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr_steps"] = list(self.lr_steps)
        d["input_size"] = list(self.input_size) if self.input_size is not None else None
        return d


def model_config(cfg: TrainConfig):
    """The :class:`model.GLSMambaConfig` a run trains: preset + overrides + input size + frozen flag."""
    from glsmamba.model import get_config

    overrides = dict(cfg.model_overrides)
    if cfg.input_size is not None:
        overrides["image_size"] = tuple(cfg.input_size)
    if cfg.freeze_encoder is not None:
        overrides["freeze_encoder"] = bool(cfg.freeze_encoder)
    return get_config(cfg.preset, **overrides)

