"""Averages that make a better model at no training cost: of the weights over the steps of a
run (`WeightEMA`, `ema.decay`), and of the predictions over mirror images (`FlipTTA`, `tta`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn


class WeightEMA:
    """An exponential moving average of a model's weights and buffers, as
    torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
    use_buffers=True) computes it, without its per-update host syncs:

        e_1 = w_1,   e_n = d_n * e_(n-1) + (1 - d_n) * w_n,   d_n = decay

    where w_n are the weights after the n-th update's optimizer step (updates every `every`
    optimizer steps; integer buffers such as BatchNorm's num_batches_tracked are copied).
    With `warmup`, d_n = min(decay, n / (n + 9)) (TensorFlow's ExponentialMovingAverage with
    num_updates): a short run's average is not held back by its first, untrained weights.
    `module` is the averaged copy: validate, save and test it.
    """

    def __init__(self, model: nn.Module, decay: float, every: int, warmup: bool) -> None:
        self.source, self.decay, self.every, self.warmup = model, decay, every, warmup
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.steps = 0  # optimizer steps seen
        self.updates = 0  # averages taken (n above)
        pairs = list(zip(self._tensors(self.module), self._tensors(model), strict=True))
        self.floats = [(e, w) for e, w in pairs if e.is_floating_point()]
        self.others = [(e, w) for e, w in pairs if not e.is_floating_point()]

    @staticmethod
    def _tensors(model: nn.Module) -> list[Tensor]:
        return [*model.parameters(), *model.buffers()]

    @torch.no_grad()
    def step(self) -> None:
        """After an optimizer step: average the weights every `every` steps."""
        self.steps += 1
        if self.steps % self.every:
            return
        averaged, current = [e for e, _ in self.floats], [w.detach() for _, w in self.floats]
        n = self.updates + 1
        decay = min(self.decay, n / (n + 9)) if self.warmup else self.decay
        if self.updates == 0:
            torch._foreach_copy_(averaged, current)
        elif averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        for e, w in self.others:
            e.copy_(w)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "steps": self.steps, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.steps, self.updates = int(state["steps"]), int(state["updates"])


class FlipTTA(nn.Module):
    """Test-time augmentation: the mean of the logits of each image and its mirror image
    (one forward pass over both; twice the evaluation cost)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        both = self.model(torch.cat([x, x.flip(-1)]))
        plain, mirrored = both.split(x.shape[0])
        return (plain + mirrored) / 2


def with_tta(model: nn.Module, tta: Any) -> nn.Module:
    """`model` for evaluation under `tta` (none: the model itself; flip: FlipTTA)."""
    name = getattr(tta, "value", tta)
    return FlipTTA(model) if name == "flip" else model
