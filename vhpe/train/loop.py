"""The training loop: loss, learning-rate schedule, parameter groups, mixed precision, the optimiser step and
:func:`train`, which runs (or resumes) a whole run in named steps."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..progress import Progress
from . import checkpoints
from .config import TrainConfig, model_config
from .data import build_dataset, resolve_flip, train_loader
from .distributed import DistInfo, all_reduce_mean, barrier, convert_sync_batchnorm, init_distributed, shutdown
from .records import append_csv, plot_loss, start_run_folder

_NO_DECAY_SUFFIXES = ("A_log", ".D", "dt_bias", "embed.temporal")


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


# ------------------------------------------------------------------------------------------------ the run
@dataclass
class TrainResult:
    """What :func:`train` returns (rank 0 has the file paths)."""

    epochs_done: int
    steps: int
    stopped: bool
    final: Path | None
    last: Path | None
    history: list[dict[str, Any]]


@dataclass
class _Run:
    """Everything the steps of :func:`train` share: the settings, the network and optimiser, the data and the
    counters (``step``: optimiser steps done; ``history``: one row per completed epoch)."""

    cfg: TrainConfig
    mcfg: Any
    info: DistInfo
    device: torch.device
    say: Any
    net: nn.Module
    train_set: Any = None
    sampler: Any = None
    loader: Any = None
    train_net: nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    amp_dtype: torch.dtype | None = None
    scaler: Any = None
    val_set: Any = None
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)


@dataclass
class _EpochStats:
    total: float  # sum of the step losses
    items: int  # clips trained on (all processes)
    seconds: float
    stopped: bool  # max_steps reached inside the epoch


def train(cfg: TrainConfig, log=print) -> TrainResult:
    """Train (or resume) a GLSMamba according to ``cfg``; see :mod:`vhpe.train` for the run folder."""
    info, device = _setup_process(cfg)
    say = log if info.main else (lambda *a, **k: None)
    cfg = resolve_flip(cfg, say)
    mcfg = model_config(cfg)
    resume = checkpoints.read_resume(cfg, mcfg.to_dict())
    run = _Run(cfg, mcfg, info, device, say, _build_net(cfg, mcfg))
    if resume is not None:
        checkpoints.load_resume_weights(run.net, resume)
        run.step, run.history = resume.step, resume.history
    run.net.to(device)
    run.train_set, run.sampler, run.loader = train_loader(cfg, mcfg, info, device)
    _setup_optimisation(run, resume)
    start_epoch = resume.epoch if resume is not None else 0
    _start_run(run, start_epoch)
    stopped = False
    for epoch in range(start_epoch, cfg.epochs):
        stats = _train_epoch(run, epoch)
        if stats.stopped:
            say(f"stopped after {run.step} steps (max_steps); the last checkpoint is kept - continue with --resume")
            stopped = True
            break
        _end_epoch(run, epoch, stats)
    return _finish(run, stopped)


def _setup_process(cfg: TrainConfig) -> tuple[DistInfo, torch.device]:
    """Threads, the process group (under ``torchrun``) and deterministic algorithms, before anything is built."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info, device = init_distributed(cfg.device)
    if cfg.batch_size % info.world:
        raise ValueError(f"batch_size ({cfg.batch_size}) must be divisible by the number of processes ({info.world})")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return info, device


def _build_net(cfg: TrainConfig, mcfg) -> nn.Module:
    """The network, initialised from ``cfg.seed`` (and the ViTPose backbone), running ``cfg.backend``."""
    from glsmamba import model as glsm

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    net = glsm.GLSMamba(mcfg)
    if cfg.backbone:
        if mcfg.encoder != "vit":
            raise ValueError(f"backbone (ViTPose weights) needs a ViT encoder; preset {cfg.preset!r} has "
                             f"encoder={mcfg.encoder!r}")
        net.load_vitpose(cfg.backbone, strict=False, trusted=cfg.trust_backbone)
    net.backend = cfg.backend
    return net


def _setup_optimisation(run: _Run, resume: checkpoints.Resume | None) -> None:
    """Synchronised batch norms, AdamW, autocast and the gradient scaler, the resumed optimiser and RNG state,
    and the ``DistributedDataParallel`` wrapper."""
    cfg, info, device = run.cfg, run.info, run.device
    if info.enabled and cfg.sync_bn:  # before the optimiser: the conversion creates new parameter objects
        run.net = convert_sync_batchnorm(run.net, device)
    run.optimizer = torch.optim.AdamW(param_groups(run.net, cfg.weight_decay), lr=cfg.lr)
    run.amp_dtype = resolve_amp(cfg.amp, device)
    run.scaler = torch.amp.GradScaler(device.type) if run.amp_dtype == torch.float16 else None
    if resume is not None:
        checkpoints.load_resume_state(resume, run.optimizer, run.scaler, device)
        run.say(f"resumed from {resume.path}: {resume.epoch} epochs ({resume.step} steps) done")
    run.train_net = run.net
    if info.enabled:
        run.train_net = nn.parallel.DistributedDataParallel(
            run.net, device_ids=[device.index] if device.type == "cuda" else None)


def _start_run(run: _Run, start_epoch: int) -> None:
    """Rank 0 writes ``config.json`` and trims the CSVs to what the checkpoint holds; every rank says what runs."""
    cfg, mcfg, info, device = run.cfg, run.mcfg, run.info, run.device
    if info.main:
        stale = checkpoints.remove_stale_temporaries(run.out) if run.out.is_dir() else []
        if stale:
            run.say(f"removed {', '.join(str(p) for p in stale)}: left by a run killed while writing a checkpoint "
                    f"(the checkpoints themselves are intact)")
        doc = {"train": cfg.to_dict(), "model": mcfg.to_dict(), "world_size": info.world, "device": str(device),
               "amp": str(run.amp_dtype) if run.amp_dtype else "off", "train_clips": len(run.train_set),
               "steps_per_epoch": run.steps_per_epoch, "torch": torch.__version__}
        start_run_folder(run.out, doc, run.step, start_epoch)
    run.say(f"training {mcfg.name} ({run.net.num_parameters(trainable_only=True):,} trainable parameters) on "
            f"{len(run.train_set)} clips of {mcfg.num_frames} frames at {mcfg.image_size[0]}x{mcfg.image_size[1]}, "
            f"{run.steps_per_epoch} steps/epoch, global batch {cfg.batch_size} on {info.world} x {device}, "
            f"backend {cfg.backend}, amp {run.amp_dtype or 'off'}")


def _train_epoch(run: _Run, epoch: int) -> _EpochStats:
    """One pass over the training data (``epoch`` 0-based); stops early when ``max_steps`` is reached."""
    cfg, info = run.cfg, run.info
    run.sampler.set_epoch(epoch)
    run.train_set.set_epoch(epoch)
    run.train_net.train()
    t0 = time.perf_counter()
    total, n_items = 0.0, 0
    prog = Progress(run.steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", cfg.log_every, enabled=info.main)
    for i, batch in enumerate(run.loader):
        lr = lr_at(cfg, epoch, run.step)
        for g in run.optimizer.param_groups:
            g["lr"] = lr
        loss = train_step(run.train_net, batch, run.optimizer, device=run.device, amp_dtype=run.amp_dtype,
                          scaler=run.scaler, clip_grad=cfg.clip_grad)
        loss = all_reduce_mean(loss, info, run.device)
        run.step += 1
        total += loss
        n_items += cfg.batch_size
        if info.main:
            append_csv(run.out / "steps.csv", {"step": run.step, "epoch": epoch + 1, "loss": f"{loss:.8g}",
                                               "lr": f"{lr:.6g}"})
        prog.update(i + 1, n_items, loss=loss, lr=lr)
        if cfg.max_steps is not None and run.step >= cfg.max_steps:
            return _EpochStats(total, n_items, time.perf_counter() - t0, stopped=True)
    return _EpochStats(total, n_items, time.perf_counter() - t0, stopped=False)


def _end_epoch(run: _Run, epoch: int, stats: _EpochStats) -> None:
    """The epoch's row (``metrics.csv``, with the val mAP when due), its checkpoints and the loss plot."""
    cfg, info = run.cfg, run.info
    el = stats.seconds
    row: dict[str, Any] = {"epoch": epoch + 1, "step": run.step, "lr": f"{lr_at(cfg, epoch, run.step - 1):.6g}",
                           "train_loss": f"{stats.total / run.steps_per_epoch:.8g}", "clips": stats.items,
                           "time_s": f"{el:.2f}", "clips_per_s": f"{stats.items / el:.3f}", "val_map": ""}
    if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
        if info.main:
            row["val_map"] = f"{_validate(run):.3f}"
        barrier(info)
    run.history.append(row)
    if info.main:
        append_csv(run.out / "metrics.csv", row)
        checkpoints.save_epoch(run.net, run.out, cfg, epoch=epoch + 1, step=run.step, optimizer=run.optimizer,
                               scaler=run.scaler, device=run.device, history=run.history)
        plot_loss(run.out)
        run.say(f"epoch {epoch + 1}/{cfg.epochs}: loss {stats.total / run.steps_per_epoch:.6g}, "
                f"{stats.items / el:.2f} clips/s" + (f", val mAP {row['val_map']}" if row["val_map"] else ""))
    barrier(info)


def _validate(run: _Run) -> float:
    """PoseTrack mAP (GT boxes) of the network on the validation split (rank 0)."""
    from ..infer import evaluate_model

    if run.val_set is None:
        run.val_set = build_dataset(run.cfg, run.mcfg, run.cfg.val_split, train=False)
    res = evaluate_model(run.net, run.val_set, batch_size=max(1, run.cfg.batch_size // run.info.world),
                         device=run.device, amp_dtype=run.amp_dtype)
    return res["metrics"]["Total"]


def _finish(run: _Run, stopped: bool) -> TrainResult:
    """``final.pth`` (unless stopped early) and the last plot on rank 0; leave the process group."""
    final = None
    if run.info.main and not stopped:
        final = checkpoints.save_final(run.net, run.out, run.cfg, step=run.step, history=run.history)
        plot_loss(run.out)
    shutdown(run.info)
    last = run.out / "last.pth"
    return TrainResult(epochs_done=len(run.history), steps=run.step, stopped=stopped, final=final,
                       last=last if last.is_file() else None, history=run.history)
