"""Process-group helpers for `torchrun` (NCCL on GPU, Gloo on CPU); all are no-ops on one process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .device import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | torch.device | None = None) -> DistInfo:
    """Join the process group `torchrun` describes through RANK/WORLD_SIZE/LOCAL_RANK (single process when
    they are absent). GPU runs use one device per process (`cuda:LOCAL_RANK`) and NCCL; CPU runs use Gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device)  # one clear DeviceError for a device this machine does not have
    if device.type == "cuda":
        if device.index is None or world > 1:
            device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank, world, local, device)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def barrier() -> None:
    if is_dist():
        dist.barrier()


def reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks in mmdet's `reduce_mean` order (each rank divides by the world size, then the sum),
    which the losses' positive count needs to match mmpose bit for bit; `x` itself on one process."""
    if not is_dist():
        return x
    x = x.clone()
    dist.all_reduce(x.div_(dist.get_world_size()))
    return x


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s value of a picklable object on every rank (e.g. the next multi-scale size)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's `obj` as a list (rank order) on rank `dst`, None on the others; `[obj]` when not
    distributed."""
    if not is_dist():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


@torch.no_grad()
def average_bn_stats(model: nn.Module) -> None:
    """mmpose's SyncNormHook: average the BatchNorm running mean/var over ranks (before validation), since
    each rank's BatchNorm saw only its own images."""
    if not is_dist():
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buf in (m.running_mean, m.running_var):
                if buf is not None:
                    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                    buf.div_(dist.get_world_size())


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
