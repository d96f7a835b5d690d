"""Training GLSMamba on PoseTrack-layout data (real PoseTrack18/21 or ``glsmamba synth`` output).

Defaults follow the paper (``docs/paper.md``): AdamW, lr 1e-4 divided by 10 at epochs 6 and 12, 20 epochs,
MSE loss on the key-frame heatmap weighted per joint (MSRA ``JointsMSELoss``: ``0.5 * mean(((pred - gt) * w)^2)``
with ``w`` = 0 for unlabelled joints, 1.2 elbows/knees, 1.5 wrists/ankles), frozen ViTPose encoder for ``base`` /
``huge``. Not given by the paper and chosen here: weight decay 1e-4 (not on norms, biases, ``A_log``, ``D``,
``dt_bias`` and the temporal embedding), gradient clipping at norm 1, global batch 16, DCPose augmentation.

Run folder (``out``)::

    config.json        the training and model configuration
    metrics.csv        one row per epoch (loss, lr, throughput, optional val mAP)
    steps.csv          one row per optimiser step (loss, lr)
    loss.png           loss curve (matplotlib, Agg)
    last.pth           the newest training checkpoint (weights + config + optimiser + RNG + counters)
    checkpoints/epoch_NNN.pth   per-epoch training checkpoints (the newest ``keep`` are kept)
    final.pth          the trained weights + config (what ``glsmamba eval`` / ``demo`` load)

Every checkpoint is a :mod:`model.checkpoint` file (``model.load`` reads it) whose ``extra["train"]`` holds the
optimiser state and the counters. ``resume`` restarts from the last completed epoch: a run killed mid-epoch redoes
that epoch and ends with the same weights as an uninterrupted run (on CPU with a fixed seed: the data order and the
augmentation are pure functions of ``(seed, epoch, index)`` and the RNG state is checkpointed).

Scale-out: launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), each process trains on its share of
every global batch (``DistributedSampler``), gradients are averaged by ``DistributedDataParallel`` and batch norms
are synchronised (so 1 and N processes compute the same loss on the same global batch); only rank 0 writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .progress import Progress

AMP_CHOICES = ("auto", "off", "bf16", "fp16")
_NO_DECAY_SUFFIXES = ("A_log", ".D", "dt_bias", "embed.temporal")


# ------------------------------------------------------------------------------------------------ configuration
@dataclass
class TrainConfig:
    """Everything a training run depends on (saved to ``config.json`` and into every checkpoint).

    Attributes:
        data: dataset root (``annotations/<split>/*.json`` + images).
        out: run folder.
        preset: model preset (``tiny``, ``base``, ``huge``).
        model_overrides: :class:`model.GLSMambaConfig` fields to change (e.g. ``{"num_frames": 1}``).
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


# ------------------------------------------------------------------------------------------------ pieces
def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """MSRA ``JointsMSELoss``: ``0.5 * mean over (B, J, H, W) of ((pred - target) * w)^2`` in float32.

    Args:
        pred: ``(B, J, H, W)`` predicted key-frame heatmaps.
        target: ``(B, J, H, W)`` target heatmaps.
        weight: ``(B, J)`` per-joint weights (0 = unlabelled).

    Returns:
        scalar loss.
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"pred and target must both be (B, J, H, W); got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if weight.shape != pred.shape[:2]:
        raise ValueError(f"weight must be (B, J) = {tuple(pred.shape[:2])}, got {tuple(weight.shape)}")
    diff = (pred.float() - target.float()) * weight.float()[:, :, None, None]
    return 0.5 * diff.pow(2).mean()


def lr_at(cfg: TrainConfig, epoch: int, step: int) -> float:
    """Learning rate at (0-based) ``epoch`` and global optimiser ``step`` (a pure function: nothing to resume)."""
    lr = cfg.lr * cfg.lr_factor ** sum(epoch >= e for e in cfg.lr_steps)
    if cfg.warmup_steps and step < cfg.warmup_steps:
        lr *= (step + 1) / cfg.warmup_steps
    return lr


def param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices / convolutions, none on norms, biases and the SSM's A_log, D, dt_bias."""
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(_NO_DECAY_SUFFIXES) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """``"auto"`` -> bf16 on a GPU that supports it, fp16 on other GPUs, no autocast on CPU."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def train_step(net: nn.Module, batch: dict, optimizer: torch.optim.Optimizer, *, device: torch.device,
               amp_dtype: torch.dtype | None = None, scaler: Any = None, clip_grad: float = 0.0) -> float:
    """One optimiser step on ``batch`` (a collated dataset batch); returns the (local) loss."""
    frames = batch["frames"].to(device, non_blocking=True)
    target = batch["target"].to(device, non_blocking=True)
    weight = batch["target_weight"].to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    if amp_dtype is not None:
        with torch.autocast(device_type=device.type, dtype=amp_dtype):
            pred = net(frames)
    else:
        pred = net(frames)
    loss = heatmap_loss(pred, target, weight)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss is {loss.item()} (lower the lr, or use --amp bf16/off)")
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if clip_grad > 0:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return float(loss.detach())


# ------------------------------------------------------------------------------------------------ distributed
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None) -> tuple[DistInfo, torch.device]:
    """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1 (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if world <= 1:
        dev = torch.device(device or ("cuda" if want_cuda else "cpu"))
        return DistInfo(), dev
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if want_cuda:
        torch.cuda.set_device(info.local_rank)
        dev = torch.device("cuda", info.local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return info, dev


class DistBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are summed over all processes (gloo / CPU, where
    ``nn.SyncBatchNorm`` does not run). Same parameters and buffers as ``nn.BatchNorm2d``; outside
    distributed training it is a plain BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        xf = x.float()
        local = torch.cat([xf.sum((0, 2, 3)), xf.pow(2).sum((0, 2, 3)),
                           xf.new_tensor([x.numel() / c])])
        total = all_reduce(local)  # autograd-aware: the backward sums the cotangents of every process
        count = total[2 * c]
        mean = total[:c] / count
        var = (total[c:2 * c] / count - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / max(float(count) - 1, 1.0), alpha=m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_sync_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """Synchronise the trainable batch norms across processes (``nn.SyncBatchNorm`` on GPUs,
    :class:`DistBatchNorm2d` on CPU). Frozen (eval-mode) batch norms are left alone."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    for name, child in list(net.named_children()):
        if type(child) is nn.BatchNorm2d and any(p.requires_grad for p in child.parameters()):
            new = DistBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.train(child.training)
            setattr(net, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return net


def _all_mean(value: float, info: DistInfo, device: torch.device) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world


# ------------------------------------------------------------------------------------------------ logging
def _truncate_csv(path: Path, key: str, keep_upto: int) -> None:
    """Drop rows whose ``key`` column exceeds ``keep_upto`` (after a resume, redone steps are logged again)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        fields = rows[0].keys() if rows else None
    if fields is None:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(r for r in rows if int(float(r[key])) <= keep_upto)


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.is_file() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def plot_loss(run_dir: str | os.PathLike) -> Path | None:
    """Draw ``loss.png`` from ``steps.csv`` / ``metrics.csv`` of a run folder (None when there is nothing yet or
    matplotlib is not installed)."""
    run_dir = Path(run_dir)
    steps_path, epochs_path = run_dir / "steps.csv", run_dir / "metrics.csv"
    if not steps_path.is_file():
        return None
    try:
        import matplotlib
    except ImportError:  # the plot is a convenience: training does not need matplotlib
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(steps_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    step = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    epochs = []
    if epochs_path.is_file():
        with open(epochs_path, newline="") as f:
            epochs = list(csv.DictReader(f))
    has_val = any(r.get("val_map") not in (None, "") for r in epochs)
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(10 if has_val else 6, 4), squeeze=False)
    ax = axes[0, 0]
    ax.plot(step, loss, lw=0.6, alpha=0.4, label="step loss")
    if len(loss) >= 5:
        k = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(step[k - 1:], smooth, lw=1.5, label=f"mean of {k} steps")
    if epochs:
        ax.plot([int(r["step"]) for r in epochs], [float(r["train_loss"]) for r in epochs], "o-",
                label="epoch mean")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("heatmap MSE loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title(run_dir.name)
    if has_val:
        ax2 = axes[0, 1]
        pts = [(int(r["epoch"]), float(r["val_map"])) for r in epochs if r.get("val_map") not in (None, "")]
        ax2.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("val PoseTrack mAP (GT boxes)")
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ------------------------------------------------------------------------------------------------ checkpoints
def _atomic_save(net: nn.Module, path: Path, include_frozen: bool, extra: dict[str, Any]) -> None:
    """:func:`model.save` through a temporary file, so a kill while writing never leaves a broken checkpoint."""
    from glsmamba.model import save

    tmp = path.with_name(path.name + ".tmp")
    save(net, tmp, include_frozen=include_frozen, extra=extra)
    os.replace(tmp, path)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _check_resume_config(saved: dict[str, Any], current: dict[str, Any], path: str) -> None:
    diff = [k for k in sorted(set(saved) | set(current)) if k != "backend" and saved.get(k) != current.get(k)]
    if diff:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in diff)
        raise ValueError(f"cannot resume from {path}: the model configuration differs ({detail}); use the same "
                         f"--preset / --set / --input-size as the original run")


# ------------------------------------------------------------------------------------------------ data
def _resolve_flip(cfg: TrainConfig, say) -> TrainConfig:
    """``flip_prob=None`` -> 0.5, or 0 on colour-coded synthetic data (:func:`vhpe.synth.mirror_inconsistent`)."""
    from .synth import mirror_inconsistent

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
    from .dataset import PoseTrackClipDataset
    from .transforms import Augment

    ann = Path(cfg.data) / "annotations" / split
    if not ann.exists():
        raise FileNotFoundError(f"no annotations for split {split!r}: {ann} does not exist (expected the "
                                f"PoseTrack18 layout DATA/annotations/{{train,val}}/*.json, e.g. from glsmamba synth)")
    h, w = mcfg.image_size
    return PoseTrackClipDataset(cfg.data, split=split, num_frames=mcfg.num_frames, frame_stride=cfg.frame_stride,
                                train=train and cfg.augment, sigma=cfg.sigma, seed=cfg.seed, input_size=(w, h),
                                augment=Augment(scale_factor=cfg.scale_factor, rot_factor=cfg.rot_factor,
                                                flip_prob=cfg.flip_prob))


# ------------------------------------------------------------------------------------------------ training
@dataclass
class TrainResult:
    """What :func:`train` returns (rank 0 has the file paths)."""

    epochs_done: int
    steps: int
    stopped: bool
    final: Path | None
    last: Path | None
    history: list[dict[str, Any]]


def train(cfg: TrainConfig, log=print) -> TrainResult:
    """Train (or resume) a GLSMamba according to ``cfg``; see the module docstring for the run folder."""
    from glsmamba import model as glsm
    from glsmamba.model.checkpoint import read as read_checkpoint

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info, device = init_distributed(cfg.device)
    if cfg.batch_size % info.world:
        raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by the number of processes ({info.world})")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    out = Path(cfg.out)
    say = log if info.main else (lambda *a, **k: None)
    cfg = _resolve_flip(cfg, say)

    mcfg = model_config(cfg)
    resume_path = None
    payload = None
    if cfg.resume:
        resume_path = out / "last.pth" if cfg.resume == "auto" else Path(cfg.resume)
        if not resume_path.is_file():
            raise FileNotFoundError(f"cannot resume: checkpoint {resume_path} does not exist")
        payload = read_checkpoint(resume_path)
        if "train" not in payload.get("extra", {}):
            raise ValueError(f"cannot resume from {resume_path}: it holds weights only (no optimiser state); "
                             f"resume from last.pth or checkpoints/epoch_NNN.pth")
        _check_resume_config(payload["config"], mcfg.to_dict(), str(resume_path))

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    net = glsm.GLSMamba(mcfg)
    if cfg.backbone:
        if mcfg.encoder != "vit":
            raise ValueError(f"backbone (ViTPose weights) needs a ViT encoder; preset {cfg.preset!r} has "
                             f"encoder={mcfg.encoder!r}")
        net.load_vitpose(cfg.backbone, strict=False, trusted=cfg.trust_backbone)
    net.backend = cfg.backend
    start_epoch, step = 0, 0
    history: list[dict[str, Any]] = []
    if payload is not None:
        state = payload["state_dict"]
        missing = net.load_state_dict(state, strict=False)
        bad = [k for k in missing.missing_keys if not (k.startswith("encoder.") and net.encoder_frozen)]
        if bad or missing.unexpected_keys:
            raise ValueError(f"checkpoint {resume_path} does not match the model: missing {bad}, unexpected "
                             f"{missing.unexpected_keys}")
        tr = payload["extra"]["train"]
        start_epoch, step = int(tr["epoch"]), int(tr["step"])
        history = list(tr.get("history", []))
    net.to(device)

    train_set = build_dataset(cfg, mcfg, cfg.train_split, train=True)
    if len(train_set) < cfg.batch_size:
        raise ValueError(f"the training split has {len(train_set)} clips, fewer than one batch ({cfg.batch_size})")
    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=info.world, rank=info.rank, shuffle=True,
                                                  seed=cfg.seed, drop_last=True)
    workers = cfg.workers if cfg.workers is not None else (4 if device.type == "cuda" else 0)
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size // info.world, sampler=sampler,
                                         num_workers=workers, drop_last=True, pin_memory=device.type == "cuda")
    steps_per_epoch = len(loader)

    if info.enabled and cfg.sync_bn:  # before the optimiser: the conversion creates new parameter objects
        net = convert_sync_batchnorm(net, device)
    optimizer = torch.optim.AdamW(param_groups(net, cfg.weight_decay), lr=cfg.lr)
    amp_dtype = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    if payload is not None:
        tr = payload["extra"]["train"]
        optimizer.load_state_dict(tr["optimizer"])
        if scaler is not None and tr.get("scaler"):
            scaler.load_state_dict(tr["scaler"])
        _set_rng_state(tr["rng"], device)
        say(f"resumed from {resume_path}: {start_epoch} epochs ({step} steps) done")

    train_net: nn.Module = net
    if info.enabled:
        train_net = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda"
                                                        else None)

    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(exist_ok=True)
        doc = {"train": cfg.to_dict(), "model": mcfg.to_dict(), "world_size": info.world, "device": str(device),
               "amp": str(amp_dtype) if amp_dtype else "off", "train_clips": len(train_set),
               "steps_per_epoch": steps_per_epoch, "torch": torch.__version__}
        (out / "config.json").write_text(json.dumps(doc, indent=2) + "\n")
        _truncate_csv(out / "steps.csv", "step", step)
        _truncate_csv(out / "metrics.csv", "epoch", start_epoch)
    say(f"training {mcfg.name} ({net.num_parameters(trainable_only=True):,} trainable parameters) on "
        f"{len(train_set)} clips of {mcfg.num_frames} frames at {mcfg.image_size[0]}x{mcfg.image_size[1]}, "
        f"{steps_per_epoch} steps/epoch, global batch {cfg.batch_size} on {info.world} x {device}, "
        f"backend {cfg.backend}, amp {amp_dtype or 'off'}")

    val_set = None
    last_path = out / "last.pth"
    stopped = False
    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        train_net.train()
        t0 = time.perf_counter()
        total, n_items = 0.0, 0
        prog = Progress(steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.log_every, enabled=info.main)
        for i, batch in enumerate(loader):
            lr = lr_at(cfg, epoch, step)
            for g in optimizer.param_groups:
                g["lr"] = lr
            loss = train_step(train_net, batch, optimizer, device=device, amp_dtype=amp_dtype, scaler=scaler,
                              clip_grad=cfg.clip_grad)
            loss = _all_mean(loss, info, device)
            step += 1
            total += loss
            n_items += cfg.batch_size
            if info.main:
                _append_csv(out / "steps.csv", {"step": step, "epoch": epoch + 1, "loss": f"{loss:.8g}",
                                                "lr": f"{lr:.6g}"})
            prog.update(i + 1, n_items, loss=loss, lr=lr)
            if cfg.max_steps is not None and step >= cfg.max_steps:
                stopped = True
                break
        if stopped:
            say(f"stopped after {step} steps (max_steps); the last checkpoint is kept - continue with --resume")
            break
        el = time.perf_counter() - t0
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "lr": f"{lr_at(cfg, epoch, step - 1):.6g}",
                               "train_loss": f"{total / steps_per_epoch:.8g}", "clips": n_items,
                               "time_s": f"{el:.2f}", "clips_per_s": f"{n_items / el:.3f}", "val_map": ""}
        if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            if info.main:
                from .infer import evaluate_model

                if val_set is None:
                    val_set = build_dataset(cfg, mcfg, cfg.val_split, train=False)
                res = evaluate_model(net, val_set, batch_size=max(1, cfg.batch_size // info.world), device=device,
                                     amp_dtype=amp_dtype)
                row["val_map"] = f"{res['metrics']['Total']:.3f}"
            if info.enabled:
                dist.barrier()
        history.append(row)
        if info.main:
            _append_csv(out / "metrics.csv", row)
            extra = {"train": {"epoch": epoch + 1, "step": step, "optimizer": optimizer.state_dict(),
                               "scaler": scaler.state_dict() if scaler is not None else None,
                               "rng": _rng_state(device), "config": cfg.to_dict(), "history": history}}
            include_frozen = not (cfg.backbone and net.encoder_frozen)
            ep_path = out / "checkpoints" / f"epoch_{epoch + 1:03d}.pth"
            _atomic_save(net, ep_path, include_frozen, extra)
            _atomic_save(net, last_path, include_frozen, extra)
            if cfg.keep > 0:
                for old in sorted((out / "checkpoints").glob("epoch_*.pth"))[:-cfg.keep]:
                    old.unlink()
            plot_loss(out)
            say(f"epoch {epoch + 1}/{cfg.epochs}: loss {total / steps_per_epoch:.6g}, {n_items / el:.2f} clips/s"
                + (f", val mAP {row['val_map']}" if row["val_map"] else ""))
        if info.enabled:
            dist.barrier()
    final = None
    if info.main and not stopped:
        final = out / "final.pth"
        extra = {"run": {"epochs": cfg.epochs, "steps": step, "config": cfg.to_dict(), "history": history}}
        include_frozen = not (cfg.backbone and net.encoder_frozen)
        _atomic_save(net, final, include_frozen, extra)
        plot_loss(out)
    if info.enabled:
        dist.barrier()
        dist.destroy_process_group()
    epochs_done = len(history)
    return TrainResult(epochs_done=epochs_done, steps=step, stopped=stopped, final=final,
                       last=last_path if last_path.is_file() else None, history=history)


__all__ = [
    "DistBatchNorm2d",
    "Progress",
    "TrainConfig",
    "TrainResult",
    "convert_sync_batchnorm",
    "heatmap_loss",
    "lr_at",
    "model_config",
    "param_groups",
    "plot_loss",
    "train",
    "train_step",
]
