"""train_one_epoch() and evaluate(): the hot loop, as plain functions.

Metrics accumulate on the device; the host syncs once per `log_interval` steps (to refresh
the progress bar) and at the end of the epoch, never per step.

train_one_epoch can stop after any step (`stop()` true, e.g. on Ctrl-C) and return the
partial state (`EpochResult.partial`); given that state back as `resume_from` it skips the
steps already done (the loader replays the same batches) and continues, so the epoch ends
exactly as an uninterrupted one would.

Under DDP (`dist` given) each rank runs on its shard; the sums behind the returned metrics
are reduced over all ranks, so every rank returns the same, whole-epoch figures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm import tqdm

from .errors import CnnbenchError

if TYPE_CHECKING:
    from .distributed import Distributed


@dataclass
class EpochResult:
    loss: float
    top1: float
    top5: float
    images: int  # images trained on (or evaluated) by this call
    seconds: float
    partial: dict[str, Any] | None = None  # set when stop() ended the epoch early


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


def _check_replay(steps: int, replayed: int, saved: int) -> None:
    if replayed != saved:
        raise CnnbenchError(
            f"last.pt was saved {steps} steps ({saved} images) into this epoch, but the first "
            f"{steps} steps of this run hold {replayed} images: resume with the batch_size and "
            "dataset the run was started with"
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
    stop: Callable[[], bool] | None = None,
    resume_from: dict[str, Any] | None = None,
    dist: Distributed | None = None,
) -> EpochResult:
    """One pass over `loader`; returns mean loss and top-1 accuracy of the seen batches.

    `stop` is polled after every step (a Python flag, no sync; under DDP every
    `log_interval` steps, agreed by all ranks); when it turns true the epoch ends there and
    the result's `partial` holds what `resume_from` needs later.
    """
    model.train()
    device = next(model.parameters()).device
    world = dist.world_size if dist is not None else 1
    lead = dist is None or dist.is_main  # holds the sums of a resumed epoch
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = skip = skipped = seen_before = 0
    if resume_from is not None:  # stopped mid-epoch before: start from its accumulators
        skip, seen_before = resume_from["step"], resume_from["seen"]
        if lead:
            seen = seen_before
            loss_sum += resume_from["loss_sum"].to(device)
            correct += resume_from["correct"].to(device)
    bar = _progress(loader, "[Training]", progress)
    bar.update(skip)
    synced_step = skip
    start = time.perf_counter()
    for step, (x, y) in enumerate(loader, 1):
        if step <= skip:  # done before the interruption: replay the batch, don't train on it
            skipped += y.shape[0]
            if step == skip:
                _check_replay(skip, skipped * world, seen_before)
            continue
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
            mean_loss = loss_sum.item() / max(seen, 1)
            _check_finite(mean_loss, epoch, step, optimizer)
            if not bar.disable:
                bar.set_postfix_str(
                    f"loss: {mean_loss:.4f}, accuracy: {correct.item() / max(seen, 1):.4f}",
                    refresh=False,
                )
                bar.update(step - synced_step)
            synced_step = step
        if stop is not None and _stop_now(stop, dist, step, log_interval):
            total, loss_sum, correct = _reduce(dist, seen, loss_sum, correct)
            partial = dict(
                step=step, loss_sum=loss_sum.cpu(), correct=correct.cpu(), seen=total, world=world
            )
            _check_finite(loss_sum.item() / total, epoch, step, optimizer)
            bar.close()
            seconds = time.perf_counter() - start
            return EpochResult(math.nan, math.nan, math.nan, total - seen_before, seconds, partial)
    if skip > len(loader):  # type: ignore[arg-type]
        _check_replay(skip, skipped * world, seen_before)
    seen, loss_sum, correct = _reduce(dist, seen, loss_sum, correct)
    mean_loss = loss_sum.item() / max(seen, 1)
    seconds = time.perf_counter() - start
    _check_finite(mean_loss, epoch, synced_step, optimizer)
    bar.close()
    top1 = correct.item() / max(seen, 1)
    return EpochResult(mean_loss, top1, float("nan"), seen - seen_before, seconds)


def _stop_now(stop: Callable[[], bool], dist: Distributed | None, step: int, every: int) -> bool:
    """stop() after this step? Ranks agree every `every` steps (all of them stop together)."""
    if dist is None or not dist.enabled:
        return stop()
    return step % every == 0 and dist.any(stop())


def _reduce(dist: Distributed | None, seen: int, *sums: torch.Tensor) -> tuple[Any, ...]:
    """(samples, *sums) summed over the ranks of a DDP run; as given in one process."""
    if dist is None or not dist.enabled:
        return (seen, *sums)
    count, *totals = dist.all_sum(torch.tensor(seen, device=sums[0].device), *sums)
    return (int(count.item()), *totals)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: nn.Module | None = None,
    *,
    autocast: AbstractContextManager | None = None,
    progress: bool = True,
    desc: str = "[Validation]",
    dist: Distributed | None = None,
) -> EpochResult:
    """Mean loss, top-1 and top-5 accuracy over `loader` (top-k uses k = min(k, classes)).

    Under DDP each rank evaluates its part of the split and the sums are reduced.
    """
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
    seen, loss_sum, top1, top5 = _reduce(dist, seen, loss_sum, top1, top5)
    seen = max(seen, 1)
    return EpochResult(
        loss_sum.item() / seen,
        top1.item() / seen,
        top5.item() / seen,
        seen,
        time.perf_counter() - start,
    )
