"""Optimizer and learning-rate scheduler factories (registry keys chosen in YAML)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .config import OPTIMIZERS, SCHEDULERS, Anneal
from .errors import CnnbenchError
from .runs import fresh_schedule_hint

# Schedulers stepped after every optimizer step (train_one_epoch's step_scheduler), not per epoch.
PER_STEP_SCHEDULERS = (torch.optim.lr_scheduler.OneCycleLR,)


def fused_kwargs(params: list[torch.nn.Parameter]) -> dict:
    """fused=True where torch has the one-kernel update (CPU and CUDA float tensors).

    torch's default on CPU is a Python loop over the tensors; fused Adam is ~9x faster on
    AlexNet-CIFAR's 58M parameters (262 -> 28 ms per step on one core here).
    """
    ok = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point and not p.is_sparse
        for p in params
    )
    return {"fused": True} if ok else {}


def build_optimizer(ocfg, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    fused = fused_kwargs(params)
    if ocfg.name == "adam":
        return torch.optim.Adam(
            params, lr=ocfg.lr, betas=tuple(ocfg.betas), weight_decay=ocfg.weight_decay, **fused
        )
    if ocfg.name == "adamw":
        return torch.optim.AdamW(
            params, lr=ocfg.lr, betas=tuple(ocfg.betas), weight_decay=ocfg.weight_decay, **fused
        )
    if ocfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=ocfg.lr,
            momentum=ocfg.momentum,
            nesterov=ocfg.nesterov,
            weight_decay=ocfg.weight_decay,
            **fused,
        )
    raise CnnbenchError(
        f"unknown optimizer {ocfg.name!r}; valid optimizers: {', '.join(OPTIMIZERS)}"
    )


def build_scheduler(
    scfg, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int = 1
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A learning-rate scheduler, or None; `is_per_step` says how often to step it.

    onecycle (per step): warm up from optimizer.lr / div_factor to optimizer.lr over
    pct_start of the run, then anneal to optimizer.lr / (div_factor * final_div_factor).
    Momentum is left as the optimizer sets it.
    """
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
    if scfg.name == "onecycle":
        if not 0.0 < scfg.pct_start < 1.0:
            raise CnnbenchError(f"scheduler.pct_start must be in (0, 1) (got {scfg.pct_start})")
        total = max(1, epochs * steps_per_epoch)
        # Keep pct_start * total >= 2: torch divides by zero when it is exactly 1 (tiny runs).
        pct_start = min(0.99, max(scfg.pct_start, 2 / total))
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total,
            pct_start=pct_start,
            anneal_strategy=Anneal(scfg.anneal).value,
            div_factor=scfg.div_factor,
            final_div_factor=scfg.final_div_factor,
            cycle_momentum=False,
        )
    raise CnnbenchError(
        f"unknown scheduler {scfg.name!r}; valid schedulers: {', '.join(SCHEDULERS)}"
    )


def is_per_step(scheduler: torch.optim.lr_scheduler.LRScheduler | None) -> bool:
    """True for schedulers stepped after every batch (onecycle), False for per-epoch ones."""
    return isinstance(scheduler, PER_STEP_SCHEDULERS)


def schedule_ended(scheduler: torch.optim.lr_scheduler.LRScheduler | None) -> bool:
    """True for a cosine schedule at its end (lr = min_lr from there on)."""
    cosine = isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    return cosine and scheduler.last_epoch >= scheduler.T_max


def retarget_scheduler(
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    epochs: int,
    steps_per_epoch: int,
    run_dir: str = "RUN_DIR",
) -> str | None:
    """After a resume with another `epochs`: make the restored schedule end at the new end.

    cosine keeps its current lr and now reaches min_lr at the new last epoch; a cosine run
    that already ended is refused (its lr is min_lr: more epochs would change nothing), naming
    the way forward. onecycle keeps pct_start and is re-planned for the new number of steps
    (without this, torch refuses to step past the old total). Returns a line saying what
    changed, or None.
    """
    if isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        if scheduler.T_max == epochs:
            return None
        old, done = scheduler.T_max, scheduler.last_epoch
        if schedule_ended(scheduler):
            raise CnnbenchError(
                f"the cosine schedule of {run_dir} ended at epoch {old} (lr = min_lr), so epochs "
                f"{done + 1}-{epochs} would all train at min_lr; {fresh_schedule_hint(run_dir)}"
            )
        scheduler.T_max = epochs
        return f"cosine schedule stretched from {old} to {epochs} epochs"
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
        total = max(1, epochs * steps_per_epoch)
        if scheduler.total_steps == total:
            return None
        old = scheduler.total_steps
        phases = scheduler._schedule_phases  # torch's OneCycleLR plan: end step of each phase
        fractions = [(phase["end_step"] + 1) / old for phase in phases]
        for phase, fraction in zip(phases, fractions, strict=True):
            phase["end_step"] = float(fraction * total) - 1
        scheduler.total_steps = total
        return f"onecycle schedule re-planned from {old} to {total} steps ({epochs} epochs)"
    return None
