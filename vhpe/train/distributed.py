"""Distributed training under ``torchrun``: the process group, synchronised batch norms, loss averaging.

Each process trains on its share of every global batch (``DistributedSampler``), gradients are averaged by
``DistributedDataParallel`` and batch norms are synchronised, so 1 and N processes compute the same loss on the
same global batch; only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


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


def all_reduce_mean(value: float, info: DistInfo, device: torch.device) -> float:
    """The mean of ``value`` over the processes (``value`` itself outside distributed training)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / info.world


def barrier(info: DistInfo) -> None:
    """Wait for every process (nothing outside distributed training)."""
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Wait for every process, then leave the process group (nothing outside distributed training)."""
    if info.enabled:
        dist.barrier()
        dist.destroy_process_group()
