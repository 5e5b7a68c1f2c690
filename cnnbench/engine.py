"""train_one_epoch() and evaluate(): the hot loop, as plain functions.

Metrics accumulate on the device; the host syncs once per `log_interval` steps (to refresh
the progress bar) and at the end of the epoch, never per step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from .errors import CnnbenchError


@dataclass
class EpochResult:
    loss: float
    top1: float
    top5: float
    images: int
    seconds: float


def _progress(loader: Iterable, desc: str, enabled: bool) -> tqdm:
    # disable=None hides the bar when stderr is not a terminal (CI, logs).
    return tqdm(
        total=len(loader),  # type: ignore[arg-type]
        desc=desc,
        disable=None if enabled else True,
        leave=False,
        dynamic_ncols=True,
        mininterval=0.5,
    )


def _check_finite(loss: float, epoch: int, step: int, optimizer: torch.optim.Optimizer) -> None:
    if not math.isfinite(loss):
        lr = optimizer.param_groups[0]["lr"]
        raise CnnbenchError(
            f"loss became {loss} at epoch {epoch}, step {step} (lr {lr:g}); best.pt is kept "
            "as it was. Try a smaller optimizer.lr, a scheduler with warmup, or gradient clipping."
        )


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    *,
    epoch: int = 1,
    autocast: AbstractContextManager | None = None,
    scaler: torch.amp.GradScaler | None = None,
    step_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    log_interval: int = 50,
    progress: bool = True,
) -> EpochResult:
    """One pass over `loader`; returns mean loss and top-1 accuracy of the seen batches."""
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    bar = _progress(loader, "[Training]", progress)
    synced_step = 0
    start = time.perf_counter()
    for step, (x, y) in enumerate(loader, 1):
        with autocast or nullcontext():
            logits = model(x)
            loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if step_scheduler is not None:
            step_scheduler.step()
        n = y.shape[0]
        loss_sum += loss.detach().float() * n
        correct += (logits.detach().argmax(1) == y).sum()
        seen += n
        if step % log_interval == 0:  # the only host sync inside the loop
            mean_loss = loss_sum.item() / seen
            _check_finite(mean_loss, epoch, step, optimizer)
            if not bar.disable:
                bar.set_postfix_str(
                    f"loss: {mean_loss:.4f}, accuracy: {correct.item() / seen:.4f}", refresh=False
                )
                bar.update(step - synced_step)
            synced_step = step
    mean_loss = loss_sum.item() / max(seen, 1)
    seconds = time.perf_counter() - start
    _check_finite(mean_loss, epoch, synced_step, optimizer)
    bar.close()
    return EpochResult(mean_loss, correct.item() / max(seen, 1), float("nan"), seen, seconds)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: nn.Module | None = None,
    *,
    autocast: AbstractContextManager | None = None,
    progress: bool = True,
    desc: str = "[Validation]",
) -> EpochResult:
    """Mean loss, top-1 and top-5 accuracy over `loader` (top-k uses k = min(k, classes))."""
    model.eval()
    device = next(model.parameters()).device
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    loss_sum = torch.zeros((), device=device)
    top1 = torch.zeros((), device=device, dtype=torch.long)
    top5 = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    bar = _progress(loader, desc, progress)
    start = time.perf_counter()
    for x, y in loader:
        with autocast or nullcontext():
            logits = model(x)
        logits = logits.float()
        loss_sum += loss_fn(logits, y) * y.shape[0]
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices == y[:, None]
        top1 += hits[:, 0].sum()
        top5 += hits.any(dim=1).sum()
        seen += y.shape[0]
        bar.update(1)
    bar.close()
    seen = max(seen, 1)
    return EpochResult(
        loss_sum.item() / seen,
        top1.item() / seen,
        top5.item() / seen,
        seen,
        time.perf_counter() - start,
    )
