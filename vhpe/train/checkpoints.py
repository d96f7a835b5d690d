"""Training checkpoints: written atomically, holding the optimiser state, RNG state and counters for a resume.

Every checkpoint is a :mod:`model.checkpoint` file (``model.load`` reads it). A training checkpoint's
``extra["train"]`` holds ``epoch`` and ``step`` (completed), ``optimizer``, ``scaler``, ``rng``, ``config`` (the
:class:`~.config.TrainConfig`) and ``history`` (the epoch rows); ``final.pth``'s ``extra["run"]`` holds the
epochs, steps, config and history of the finished run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TrainConfig


def atomic_save(net: nn.Module, path: Path, include_frozen: bool, extra: dict[str, Any]) -> None:
    """:func:`model.save` through a temporary file, so a kill while writing never leaves a broken checkpoint."""
    from glsmamba.model import save

    tmp = path.with_name(path.name + ".tmp")
    save(net, tmp, include_frozen=include_frozen, extra=extra)
    os.replace(tmp, path)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global torch RNG state (and the CUDA one of ``device``), as :func:`set_rng_state` restores it."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def include_frozen(cfg: TrainConfig, net) -> bool:
    """Save the frozen encoder too, unless it came from a ViTPose file (``--backbone``) that can load it again."""
    return not (cfg.backbone and net.encoder_frozen)


# ------------------------------------------------------------------------------------------------ resume
@dataclass
class Resume:
    """A training checkpoint to continue from: its path, its payload and the counters it holds."""

    path: Path
    payload: dict[str, Any]
    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def state(self) -> dict[str, Any]:
        return self.payload["extra"]["train"]


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], path: str) -> None:
    """The model configuration of a checkpoint must equal the run's (the backend may differ)."""
    diff = [k for k in sorted(set(saved) | set(current)) if k != "backend" and saved.get(k) != current.get(k)]
    if diff:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in diff)
        raise ValueError(f"cannot resume from {path}: the model configuration differs ({detail}); use the same "
                         f"--preset / --set / --input-size as the original run")


def read_resume(cfg: TrainConfig, model_dict: dict[str, Any]) -> Resume | None:
    """The checkpoint ``cfg.resume`` names (``"auto"`` = ``out/last.pth``), checked against the model
    configuration ``model_dict``; ``None`` when the run does not resume."""
    from glsmamba.model.checkpoint import DamagedCheckpointError, read

    if not cfg.resume:
        return None
    path = Path(cfg.out) / "last.pth" if cfg.resume == "auto" else Path(cfg.resume)
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: checkpoint {path} does not exist{way_on(Path(cfg.out), path)}")
    try:
        payload = read(path)
    except DamagedCheckpointError as e:
        raise ValueError(f"cannot resume: {e}{way_on(Path(cfg.out), path)}") from e
    if "train" not in payload.get("extra", {}):
        raise ValueError(f"cannot resume from {path}: it holds weights only (no optimiser state); "
                         f"resume from last.pth or checkpoints/epoch_NNN.pth")
    check_resume_config(payload["config"], model_dict, str(path))
    tr = payload["extra"]["train"]
    return Resume(path, payload, int(tr["epoch"]), int(tr["step"]), list(tr.get("history", [])))


def newest_intact_epoch(out: Path, exclude: Path | None = None) -> Path | None:
    """The newest ``checkpoints/epoch_NNN.pth`` of the run folder ``out`` that reads as a training checkpoint
    (``exclude`` left out), or None."""
    from glsmamba.model.checkpoint import read

    def number(p: Path) -> int:
        digits = p.stem.removeprefix("epoch_")
        return int(digits) if digits.isdigit() else -1

    for p in sorted((out / "checkpoints").glob("epoch_*.pth"), key=number, reverse=True):
        if exclude is not None and p.resolve() == exclude.resolve():
            continue
        try:
            if "train" in read(p).get("extra", {}):
                return p
        except (ValueError, OSError):
            continue
    return None


def way_on(out: Path, failed: Path) -> str:
    """``"; the newest intact checkpoint is ...: continue with --resume-from ..."`` for a resume from ``failed``
    that cannot be read (empty when the run folder holds no other intact per-epoch checkpoint)."""
    found = newest_intact_epoch(out, exclude=failed)
    if found is None:
        return ""
    return f"; the newest intact checkpoint is {found}: continue with --resume-from {found}"


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Delete the ``*.pth.tmp`` files a run killed while writing a checkpoint leaves in ``out`` (the checkpoint it
    was replacing is intact: :func:`atomic_save`); returns what was removed."""
    stale = sorted([*out.glob("*.pth.tmp"), *(out / "checkpoints").glob("*.pth.tmp")])
    for p in stale:
        p.unlink()
    return stale


def load_resume_weights(net: nn.Module, resume: Resume) -> None:
    """Load the checkpoint's weights (a frozen encoder may be absent: it came from the backbone file)."""
    missing = net.load_state_dict(resume.payload["state_dict"], strict=False)
    bad = [k for k in missing.missing_keys if not (k.startswith("encoder.") and net.encoder_frozen)]
    if bad or missing.unexpected_keys:
        raise ValueError(f"checkpoint {resume.path} does not match the model: missing {bad}, unexpected "
                         f"{missing.unexpected_keys}")


def load_resume_state(resume: Resume, optimizer: torch.optim.Optimizer, scaler: Any, device: torch.device) -> None:
    """Restore the optimiser, the gradient scaler (fp16) and the RNG state of the checkpoint."""
    optimizer.load_state_dict(resume.state["optimizer"])
    if scaler is not None and resume.state.get("scaler"):
        scaler.load_state_dict(resume.state["scaler"])
    set_rng_state(resume.state["rng"], device)


# ------------------------------------------------------------------------------------------------ saving
def save_epoch(net: nn.Module, out: Path, cfg: TrainConfig, *, epoch: int, step: int,
               optimizer: torch.optim.Optimizer, scaler: Any, device: torch.device,
               history: list[dict[str, Any]]) -> None:
    """Write ``checkpoints/epoch_NNN.pth`` and ``last.pth`` after ``epoch`` (1-based, completed) and keep the
    newest ``cfg.keep`` per-epoch files."""
    extra = {"train": {"epoch": epoch, "step": step, "optimizer": optimizer.state_dict(),
                       "scaler": scaler.state_dict() if scaler is not None else None,
                       "rng": rng_state(device), "config": cfg.to_dict(), "history": history}}
    frozen = include_frozen(cfg, net)
    atomic_save(net, out / "checkpoints" / f"epoch_{epoch:03d}.pth", frozen, extra)
    atomic_save(net, out / "last.pth", frozen, extra)
    if cfg.keep > 0:
        for old in sorted((out / "checkpoints").glob("epoch_*.pth"))[:-cfg.keep]:
            old.unlink()


def save_final(net: nn.Module, out: Path, cfg: TrainConfig, *, step: int, history: list[dict[str, Any]]) -> Path:
    """Write ``final.pth``: the trained weights + config, and the run's counters and history."""
    final = out / "final.pth"
    extra = {"run": {"epochs": cfg.epochs, "steps": step, "config": cfg.to_dict(), "history": history}}
    atomic_save(net, final, include_frozen(cfg, net), extra)
    return final
