"""Data-parallel training under ``torchrun`` (gloo on CPU, nccl on GPU).

One process per rank; each sees ``batch_size / world_size`` images of the same
global batch, so results match a single process at the same global batch.
BatchNorm statistics must span the whole global batch for that: on GPU
PyTorch's SyncBatchNorm does it; it refuses CPU tensors, so on CPU
:class:`CPUSyncBatchNorm` all-reduces the per-channel sums itself.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol  # differentiable all_reduce
from torch import nn


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init(device: torch.device) -> None:
    """Join the process group when started by torchrun."""
    if world()[1] > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def is_main() -> bool:
    return world()[0] == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def average(value: float) -> float:
    """Mean of a number over all ranks (itself outside torchrun)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover every rank's part of the batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        world, m = dist.group.WORLD, self.momentum
        tracked, running_mean, running_var = (self.num_batches_tracked, self.running_mean,
                                              self.running_var)
        # set by BatchNorm2d's defaults (track_running_stats, momentum 0.1) and by torchrun
        assert world is not None and m is not None and tracked is not None
        assert running_mean is not None and running_var is not None
        count = torch.full_like(x[0, :, 0, 0], x.numel() / x.shape[1])
        stats = funcol.all_reduce(torch.stack([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count]),
                                 "sum", world)
        n = stats[2]
        mean = stats[0] / n
        var = stats[1] / n - mean * mean
        with torch.no_grad():
            tracked += 1
            running_mean.mul_(1 - m).add_(m * mean.detach())
            running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1))
        shape = (1, -1, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Swap every BatchNorm2d for a synchronised one suited to ``device``."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum)
            sync.load_state_dict(child.state_dict())
            setattr(model, name, sync)
        else:
            sync_batchnorm(child, device)
    return model

