"""Optimizer and learning-rate scheduler factories (registry keys chosen in YAML)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .errors import CnnbenchError

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "step", "cosine")


def build_optimizer(ocfg, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if ocfg.name == "adam":
        return torch.optim.Adam(
            params, lr=ocfg.lr, betas=tuple(ocfg.betas), weight_decay=ocfg.weight_decay
        )
    if ocfg.name == "adamw":
        return torch.optim.AdamW(
            params, lr=ocfg.lr, betas=tuple(ocfg.betas), weight_decay=ocfg.weight_decay
        )
    if ocfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=ocfg.lr,
            momentum=ocfg.momentum,
            nesterov=ocfg.nesterov,
            weight_decay=ocfg.weight_decay,
        )
    raise CnnbenchError(
        f"unknown optimizer {ocfg.name!r}; valid optimizers: {', '.join(OPTIMIZERS)}"
    )


def build_scheduler(
    scfg, optimizer: torch.optim.Optimizer, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """An epoch-level scheduler (stepped once per epoch), or None."""
    if scfg.name == "none":
        return None
    if scfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=scfg.step_size, gamma=scfg.gamma
        )
    if scfg.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=epochs, eta_min=scfg.min_lr
        )
    raise CnnbenchError(
        f"unknown scheduler {scfg.name!r}; valid schedulers: {', '.join(SCHEDULERS)}"
    )
