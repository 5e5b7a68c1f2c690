"""Optimizer and learning-rate scheduler factories (registry keys chosen in YAML)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    OneCycleLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

from .config import OPTIMIZERS, SCHEDULERS, Anneal
from .errors import CnnbenchError
from .runs import cosine_ended, fresh_schedule_hint

# Schedulers stepped after every optimizer step (TrainStep's scheduler), not per epoch: onecycle,
# and any schedule with a warmup (LinearLR alone for scheduler=none).
PER_STEP_SCHEDULERS = (OneCycleLR, SequentialLR, LinearLR)


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


def parameter_groups(model: torch.nn.Module, ocfg: Any) -> list:
    """The trainable parameters; with optimizer.decay_norm_and_bias=false (and weight decay)
    two groups, the second (biases and norm weights: every 1-d parameter) without decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if ocfg.decay_norm_and_bias or not ocfg.weight_decay:
        return params
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def build_optimizer(ocfg, params: Iterable[Any]) -> torch.optim.Optimizer:
    """`ocfg`'s optimizer over `params` (parameters, or groups from `parameter_groups`)."""
    params = [p for p in params if isinstance(p, dict) or p.requires_grad]
    flat = [q for p in params for q in (p["params"] if isinstance(p, dict) else [p])]
    fused = fused_kwargs(flat)
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


class PlateauLR:
    """ReduceLROnPlateau on the validation loss (`step_epoch`), after an optional linear
    warmup stepped after every optimizer step (`step`)."""

    def __init__(self, optimizer: torch.optim.Optimizer, scfg, warmup: LinearLR | None) -> None:
        self.optimizer, self.warmup = optimizer, warmup
        self.plateau = ReduceLROnPlateau(
            optimizer, mode="min", factor=scfg.factor, patience=scfg.patience, min_lr=scfg.min_lr
        )

    def step(self) -> None:
        if self.warmup is not None and self.warmup.last_epoch < self.warmup.total_iters:
            self.warmup.step()

    def step_epoch(self, val_loss: float) -> None:
        self.plateau.step(val_loss)

    def state_dict(self) -> dict[str, Any]:
        warmup = self.warmup.state_dict() if self.warmup is not None else None
        return {"plateau": self.plateau.state_dict(), "warmup": warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau.load_state_dict(state["plateau"])
        if self.warmup is not None and state.get("warmup") is not None:
            self.warmup.load_state_dict(state["warmup"])


def warmup_steps(scfg, steps_per_epoch: int) -> int:
    """scheduler.warmup_epochs in optimizer steps (at least 1 when on)."""
    if not scfg.warmup_epochs:
        return 0
    return max(1, round(scfg.warmup_epochs * steps_per_epoch))


def build_scheduler(
    scfg, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int = 1
) -> Any | None:
    """A learning-rate scheduler, or None; `is_per_step` says how often to step it
    (`steps_per_epoch` counts optimizer steps), `step_after_epoch` steps it after an epoch.

    onecycle (per step): warm up from optimizer.lr / div_factor to optimizer.lr over
    pct_start of the run, then anneal to optimizer.lr / (div_factor * final_div_factor).
    Momentum is left as the optimizer sets it. plateau (per epoch): ReduceLROnPlateau on the
    validation loss. scheduler.warmup_epochs > 0: a linear warmup (LinearLR) from
    warmup_start_factor x the schedule's first lr to it, then the schedule; the two are one
    SequentialLR stepped per optimizer step (step_size and cosine's length in steps).
    """
    warmup = warmup_steps(scfg, steps_per_epoch)
    if scfg.name not in SCHEDULERS:
        raise CnnbenchError(
            f"unknown scheduler {scfg.name!r}; valid schedulers: {', '.join(SCHEDULERS)}"
        )
    if warmup == 0:
        return _schedule(scfg, optimizer, epochs, steps_per_epoch)
    if scfg.name in ("none", "plateau"):
        start = LinearLR(optimizer, scfg.warmup_start_factor, 1.0, total_iters=warmup)
        return PlateauLR(optimizer, scfg, start) if scfg.name == "plateau" else start
    total = max(1, epochs * steps_per_epoch - warmup)  # steps after the warmup
    # The schedule first: onecycle reads its peak from the lr (and sets its starting lr).
    if scfg.name == "step":
        after: Any = StepLR(optimizer, step_size=scfg.step_size * steps_per_epoch, gamma=scfg.gamma)
    elif scfg.name == "cosine":
        after = CosineAnnealingLR(optimizer, T_max=total, eta_min=scfg.min_lr)
    else:
        after = _onecycle(scfg, optimizer, total)
    start = LinearLR(optimizer, scfg.warmup_start_factor, 1.0, total_iters=warmup)
    return SequentialLR(optimizer, [start, after], milestones=[warmup])


def _schedule(scfg, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int) -> Any:
    """The schedule without a warmup: per epoch (step, cosine, plateau) or per step."""
    if scfg.name == "none":
        return None
    if scfg.name == "step":
        return StepLR(optimizer, step_size=scfg.step_size, gamma=scfg.gamma)
    if scfg.name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=epochs, eta_min=scfg.min_lr)
    if scfg.name == "plateau":
        return PlateauLR(optimizer, scfg, None)
    return _onecycle(scfg, optimizer, max(1, epochs * steps_per_epoch))


def _onecycle(scfg, optimizer: torch.optim.Optimizer, total: int) -> OneCycleLR:
    if not 0.0 < scfg.pct_start < 1.0:
        raise CnnbenchError(f"scheduler.pct_start must be in (0, 1) (got {scfg.pct_start})")
    # Keep pct_start * total >= 2: torch divides by zero when it is exactly 1 (tiny runs).
    pct_start = min(0.99, max(scfg.pct_start, 2 / total))
    return OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=total,
        pct_start=pct_start,
        anneal_strategy=Anneal(scfg.anneal).value,
        div_factor=scfg.div_factor,
        final_div_factor=scfg.final_div_factor,
        cycle_momentum=False,
    )


def is_per_step(scheduler: Any | None) -> bool:
    """True for schedulers stepped after every optimizer step (onecycle, any warmup), False
    for per-epoch ones."""
    if isinstance(scheduler, PlateauLR):
        return scheduler.warmup is not None
    return isinstance(scheduler, PER_STEP_SCHEDULERS)


def step_after_epoch(scheduler: Any | None, val_loss: float) -> None:
    """The end-of-epoch step: plateau reads the validation loss, step and cosine step (per-step
    schedules were stepped by the training step)."""
    if isinstance(scheduler, PlateauLR):
        scheduler.step_epoch(val_loss)
    elif scheduler is not None and not is_per_step(scheduler):
        scheduler.step()


def retarget_scheduler(
    scheduler: Any | None, epochs: int, steps_per_epoch: int, run_dir: str = "RUN_DIR"
) -> str | None:
    """After a resume with another `epochs`: make the restored schedule end at the new end.

    cosine keeps its current lr and now reaches min_lr at the new last epoch; a cosine run
    that already ended is refused (its lr is min_lr: more epochs would change nothing),
    naming the way forward. onecycle keeps pct_start and is re-planned for the new
    number of steps (without this, torch refuses to step past the old total). After a warmup
    the same holds for the steps that follow it. Returns a line saying what changed, or None.
    """
    if isinstance(scheduler, SequentialLR):
        warmup = scheduler._milestones[0]
        total = max(1, epochs * steps_per_epoch - warmup)
        return _retarget(scheduler._schedulers[-1], total, epochs, run_dir)
    if isinstance(scheduler, CosineAnnealingLR):
        return _retarget(scheduler, epochs, epochs, run_dir, unit="epochs")
    if isinstance(scheduler, OneCycleLR):
        return _retarget(scheduler, max(1, epochs * steps_per_epoch), epochs, run_dir)
    return None


def _retarget(
    scheduler: Any, total: int, epochs: int, run_dir: str, unit: str = "steps"
) -> str | None:
    """Re-aim a cosine or onecycle `scheduler` at `total` epochs or steps (see above)."""
    if isinstance(scheduler, CosineAnnealingLR):
        if scheduler.T_max == total:
            return None
        old, done = scheduler.T_max, scheduler.last_epoch
        if cosine_ended(scheduler.state_dict()):
            rest = f"epochs {done + 1}-{total}" if unit == "epochs" else "the added steps"
            raise CnnbenchError(
                f"the cosine schedule of {run_dir} ended at {unit[:-1]} {old} (lr = min_lr), so "
                f"{rest} would all train at min_lr; {fresh_schedule_hint(run_dir)}"
            )
        scheduler.T_max = total
        return f"cosine schedule stretched from {old} to {total} {unit}"
    if isinstance(scheduler, OneCycleLR):
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
