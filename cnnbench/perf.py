"""Measuring the training step: FLOPs per image and timed forward+backward steps.

Used by `device.precision=auto` (is bf16 faster than fp32 for this model and batch on this
CPU?) and by scripts/bench.py (achieved GFLOP/s).
"""

from __future__ import annotations

import copy
import time
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _devices_of(model: nn.Module) -> list[torch.device]:
    return [p.device for p in model.parameters() if p.device.type == "cuda"][:1]


def train_flops_per_image(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """FLOPs (2 per multiply-add) of forward + backward for one image, counted by torch.

    Runs a batch of 2 through a copy of the model, so the model's weights, gradients,
    BatchNorm statistics and the RNG streams are left as they were.
    """
    probe = copy.deepcopy(model).train()
    device = next(probe.parameters()).device
    x = torch.zeros(2, *input_size, device=device)
    with torch.random.fork_rng(devices=_devices_of(probe)), FlopCounterMode(display=False) as fc:
        probe(x).float().sum().backward()
    return fc.get_total_flops() // 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Times forward+backward steps of a private copy of `model` on a fixed random batch."""

    def __init__(
        self,
        model: nn.Module,
        input_size: tuple[int, int, int],
        batch_size: int,
        *,
        channels_last: bool = False,
    ) -> None:
        self.model = copy.deepcopy(model).train()
        self.device = next(self.model.parameters()).device
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, *input_size, generator=gen)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        self.x = x.to(self.device)
        # Class 0 exists for every model; the labels do not change the step's cost.
        self.y = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        self.loss_fn = nn.CrossEntropyLoss()

    def step(self, autocast: AbstractContextManager | None = None) -> float:
        """Seconds for one forward + backward (gradients are discarded)."""
        _sync(self.device)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=_devices_of(self.model)):
            with autocast or nullcontext():
                loss = self.loss_fn(self.model(self.x), self.y)
            loss.backward()
        _sync(self.device)
        seconds = time.perf_counter() - start
        self.model.zero_grad(set_to_none=True)
        return seconds
