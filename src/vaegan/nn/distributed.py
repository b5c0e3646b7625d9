"""DDP from `torchrun`'s environment: one process per device, rank 0 alone writes and logs.

`torchrun --nproc_per_node=N -m vaegan train` sets RANK, LOCAL_RANK and WORLD_SIZE; `from_env`
then starts the process group (NCCL on CUDA, gloo on CPU). Each network is wrapped in its own
`DistributedDataParallel`, so each separate backward pass all-reduces exactly its network's
gradients, and BatchNorm buffers are broadcast from rank 0 at every forward.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the job; world_size 1 means no process group."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def environment() -> Distributed:
    """Rank, local rank and world size from torchrun's variables (a single process without them)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    return Distributed(
        rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", "0")), world_size=world_size
    )


def init_process_group(ctx: Distributed, device: torch.device) -> None:
    """Join the process group (gloo on CPU, NCCL on CUDA); no-op for a single process."""
    if not ctx.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=10))


def destroy_process_group(ctx: Distributed) -> None:
    """Leave the process group if this process joined one."""
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, ctx: Distributed, device: torch.device) -> nn.Module:
    """`module` under DDP (identical initial weights are broadcast from rank 0), or as is."""
    if not ctx.enabled:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def average(tensor: torch.Tensor, ctx: Distributed) -> torch.Tensor:
    """The mean of `tensor` over all ranks (itself for a single process)."""
    if not ctx.enabled:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def max_divergence_from_rank0(modules: list[nn.Module], ctx: Distributed) -> float:
    """The largest |w - w_rank0| over all parameters and buffers, across ranks (0.0 when in sync)."""
    if not ctx.enabled:
        return 0.0
    tensors = [
        t.detach().float().flatten()
        for m in modules
        for t in m.state_dict().values()
        if t.is_floating_point()
    ]
    flat = torch.cat(tensors)
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    diff = (flat - reference).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff.item())
