"""Multi-process training with DistributedDataParallel, launched by torchrun.

    torchrun --nproc_per_node=2 -m cnnbench train dataset=cifar10 ...

torchrun starts one process per GPU (or CPU worker) and sets RANK, WORLD_SIZE, LOCAL_RANK
and LOCAL_WORLD_SIZE. Before Hydra runs, `cnnbench train` calls `setup` to start the process
group (gloo for CPU tensors, NCCL for CUDA ones) and makes every rank use the run directory
rank 0 chose; the recipe then reads its place with `from_env`. Rank 0
alone prints, logs to train.log and writes the run directory; the other ranks only warn.
Each process trains on its shard of every epoch (`batch_size` is per process, so the
effective batch is batch_size x WORLD_SIZE) and the metrics are summed over all ranks.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import CnnbenchError


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, *values: torch.Tensor) -> list[torch.Tensor]:
        """Each tensor summed over all ranks (one collective); as given in one process."""
        if not self.enabled:
            return list(values)
        flat = torch.stack([v.detach().double().reshape(()) for v in values])
        dist.all_reduce(flat)
        return [flat[i].to(v.dtype) for i, v in enumerate(values)]

    def any(self, flag: bool) -> bool:
        """True when `flag` is true on any rank (e.g. a Ctrl-C seen by one process)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0])  # a CPU tensor: reduced by gloo
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def broadcast_object(self, obj):
        """Rank 0's `obj` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_state(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers copied into every rank's `module`."""
        if self.enabled:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. decoding a dataset into the shared cache)."""
        if self.enabled and not self.is_main:
            dist.barrier()
        yield
        if self.enabled and self.is_main:
            dist.barrier()


def from_env() -> Distributed:
    """This process's place as torchrun's variables say (defaults: a single process)."""

    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        try:
            return int(value) if value else default
        except ValueError:
            raise CnnbenchError(f"{name}={value!r} is not an integer (set by torchrun)") from None

    world = read("WORLD_SIZE", 1)
    return Distributed(
        rank=read("RANK", 0),
        world_size=world,
        local_rank=read("LOCAL_RANK", 0),
        local_world_size=read("LOCAL_WORLD_SIZE", world),
    )


def setup() -> Distributed:
    """Start the process group when torchrun launched this process; returns its place."""
    env = from_env()
    if not env.enabled or dist.is_initialized():
        return env
    if not 0 <= env.rank < env.world_size:
        raise CnnbenchError(f"RANK={env.rank} is outside WORLD_SIZE={env.world_size}")
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"  # metrics on either device; gradients over NCCL
    else:
        backend = "gloo"
    try:
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    except (RuntimeError, ValueError) as err:
        raise CnnbenchError(
            f"cannot start the process group (rank {env.rank} of {env.world_size}): {err}. "
            "Launch with torchrun, which sets MASTER_ADDR/MASTER_PORT, RANK and WORLD_SIZE"
        ) from None
    return env


def shutdown(finished: bool = False) -> None:
    """Tear the process group down while the interpreter is whole. After a run that
    `finished`, all ranks first meet at a barrier (no rank leaves while another still
    communicates); after a failure they do not wait for each other. Objects still holding
    Gloo work (the DDP reducer) are collected first: destroyed during interpreter shutdown,
    they abort the process (SIGABRT)."""
    if not dist.is_initialized():
        return
    if finished:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()
