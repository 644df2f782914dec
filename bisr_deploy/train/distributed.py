"""Multi-process data parallelism: ``torchrun`` environment -> process group, device, DDP wrapper.

Launched by ``torchrun --nproc_per_node N -m bisr_deploy.cli train ...`` (or any launcher that sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), each process trains a replica on its own share of each
global batch; DistributedDataParallel averages the gradients, so replicas stay identical. Backend: NCCL
when the process has a CUDA device, gloo on CPU. Without those variables, everything is single-process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import BisrError


@dataclass
class Context:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> Context:
    """Join the process group if launched by torchrun; choose the device (``auto``: CUDA when present)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise BisrError("train.device = cuda but no CUDA device is available")
    dev = torch.device("cuda", local_rank % torch.cuda.device_count()) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return Context(rank, world_size, dev)


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_process(configured: int, world_size: int, cores: int) -> tuple[int, str | None]:
    """(torch threads for each of ``world_size`` processes on ``cores`` cores, a warning or None).

    ``configured`` 0 means cores / world size (at least 1); an explicit value wins when ``configured x
    world_size`` fits the cores, else it would oversubscribe them and the fair share is used with a warning."""
    share = max(1, cores // world_size)
    if not configured:
        return share, None
    if configured * world_size <= cores:
        return configured, None
    return share, (f"warning: train.threads = {configured} x {world_size} processes exceeds the {cores} cores; "
                   f"using {share} thread(s) per process")


def wrap(model: torch.nn.Module, ctx: Context, find_unused: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when there are several processes, else ``model``.

    ``find_unused``: some parameters get no gradient (real mode skips ``fution``; clip/quad leave the Tanh
    slope unused), which DDP must be told about.
    """
    if ctx.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                                   find_unused_parameters=find_unused)


def check_replicas(model: torch.nn.Module, ctx: Context) -> None:
    """Raise ``BisrError`` unless every process holds bit-identical parameters (compares checksums:
    the float64 sum and sum of squares of every parameter, gathered from all ranks)."""
    if ctx.world_size == 1:
        return
    sums = torch.stack([torch.stack([p.detach().double().sum(), (p.detach().double() ** 2).sum()])
                        for p in model.parameters()]).to(ctx.device)
    gathered = [torch.empty_like(sums) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, sums)
    if any(not torch.equal(gathered[0], g) for g in gathered[1:]):
        raise BisrError("data-parallel replicas have diverged (parameter checksums differ between processes)")


def all_true(flag: bool, ctx: Context) -> bool:
    """True when ``flag`` holds in every process (one all-reduce; no communication in a single process)."""
    if ctx.world_size == 1:
        return flag
    value = torch.tensor([1 if flag else 0], device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
