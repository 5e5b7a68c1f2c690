"""train_one_epoch() and evaluate(): the hot loop, as plain functions.

Metrics accumulate on the device (`Meter`); the host syncs only to refresh the progress bar
and check the loss (`Progress`: every `log_interval` steps, or every half second while a bar
is shown) and at the end of the epoch, never per step.

A resumed epoch starts where it stopped: the loader skips the batches already trained on
(`TensorLoader.set_epoch(epoch, start_step)`) and the meter starts from the saved sums, so
the epoch ends exactly as an uninterrupted one would. A stop request (Ctrl-C) ends the
epoch after the current step (`StopPoll`); the caller saves that point.

Under DDP (`dist` given) each rank runs on its shard; the sums behind the returned metrics
are reduced over all ranks, so every rank returns the same, whole-epoch figures.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .distributed import Distributed
from .errors import CnnbenchError

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class EpochResult:
    loss: float
    top1: float
    top5: float
    images: int  # images trained on (or evaluated) by this call
    seconds: float


class Meter:
    """Sums of loss, top-1 and top-5 hits and samples, kept on the device.

    Training and evaluation share it; `totals()` reduces the sums over the ranks of a DDP
    run (one collective) and reads them back once.
    """

    def __init__(self, device: torch.device, dist: Distributed | None = None) -> None:
        self.dist = dist or Distributed()
        self.loss = torch.zeros((), device=device)
        self.top1 = torch.zeros((), device=device, dtype=torch.long)
        self.top5 = torch.zeros((), device=device, dtype=torch.long)
        self.seen = 0  # samples of this process
        self.resumed = 0  # samples counted before a resume (all ranks)

    def update(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, top5: bool) -> None:
        """Add a batch: its mean `loss`, and top-1 (and top-5) hits of `logits` against `y`
        (class indices, or soft targets from MixUp/CutMix: their dominant class counts)."""
        n = y.shape[0]
        if y.ndim > 1:
            y = y.argmax(1)
        self.loss += loss.detach().float() * n
        if top5:
            k = min(5, logits.shape[1])
            hits = logits.detach().topk(k, dim=1).indices == y[:, None]
            self.top1 += hits[:, 0].sum()
            self.top5 += hits.any(dim=1).sum()
        else:
            self.top1 += (logits.detach().argmax(1) == y).sum()
        self.seen += n

    def mean_loss(self) -> float:
        """This process's mean loss so far (a host sync)."""
        return self.loss.item() / max(self.seen, 1)

    def totals(self) -> tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(samples, loss sum, top-1 hits, top-5 hits) over all ranks."""
        if not self.dist.enabled:
            return self.seen, self.loss, self.top1, self.top5
        count, *sums = self.dist.all_sum(
            torch.tensor(self.seen, device=self.loss.device), self.loss, self.top1, self.top5
        )
        return int(count.item()), *sums

    def result(self, seconds: float, top5: bool = True) -> EpochResult:
        seen, loss, top1, hits5 = self.totals()
        n = max(seen, 1)
        return EpochResult(
            loss.item() / n,
            top1.item() / n,
            hits5.item() / n if top5 else math.nan,
            seen - self.resumed,
            seconds,
        )

    def state_dict(self) -> dict[str, Any]:
        """The sums over all ranks, to continue an epoch stopped mid-way (last.pt)."""
        seen, loss, top1, _ = self.totals()
        return dict(seen=seen, loss_sum=loss.cpu(), correct=top1.cpu())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Start from a stopped epoch's sums (held by rank 0 alone: the totals sum ranks)."""
        self.resumed = state["seen"]
        if self.dist.is_main:
            self.seen = state["seen"]
            self.loss += state["loss_sum"].to(self.loss.device)
            self.top1 += state["correct"].to(self.top1.device)


class Progress:
    """A tqdm bar over an epoch's steps that syncs with the host rarely.

    `step()` is called after every training step and costs a counter increment and a clock
    read; every
    `log_interval` steps, or every `refresh_seconds` while a bar is shown (so short epochs
    with slow steps never freeze at 0%), it reads the meter back, checks the loss is finite
    and refreshes the bar.
    """

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        enabled: bool = True,
        log_interval: int = 50,
        initial: int = 0,
        refresh_seconds: float = 0.5,
        what: str = "",
    ) -> None:
        # disable=None hides the bar when stderr is not a terminal (CI, logs).
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            disable=None if enabled else True,
            leave=False,
            dynamic_ncols=True,
            mininterval=refresh_seconds,
        )
        self.log_interval, self.refresh_seconds = log_interval, refresh_seconds
        self.step_count, self.shown = initial, initial
        self.next_refresh = time.perf_counter() + refresh_seconds
        self.what = what  # e.g. "epoch 3", for messages

    def where(self) -> str:
        """Where the loop is, for messages: 'at epoch 3, step 120'."""
        return f"at {self.what + ', ' if self.what else ''}step {self.step_count}"

    def step(self, meter: Meter, check: Callable[[float], None]) -> None:
        self.step_count += 1
        due = self.step_count % self.log_interval == 0
        if not due and (self.bar.disable or time.perf_counter() < self.next_refresh):
            return
        mean_loss = meter.mean_loss()  # the host sync
        check(mean_loss)
        if not self.bar.disable:
            accuracy = meter.top1.item() / max(meter.seen, 1)
            self.bar.set_postfix_str(f"loss: {mean_loss:.4f}, accuracy: {accuracy:.4f}", False)
            self.bar.update(self.step_count - self.shown)
            self.shown = self.step_count
            self.next_refresh = time.perf_counter() + self.refresh_seconds

    def close(self) -> None:
        self.bar.close()


class StopPoll:
    """The batches of an epoch until `stop()` turns true (e.g. on Ctrl-C).

    Polled after every batch (a Python flag, no sync); under DDP every `every` batches and
    agreed by all ranks, so all of them stop after the same step. With `boundary` k > 1
    (gradient accumulation) only after every k-th batch, where an optimizer step has just
    been taken and no gradients are pending. `stopped_at` is then that step's number (else
    None).
    """

    def __init__(
        self,
        batches: Batches,
        stop: Callable[[], bool],
        dist: Distributed | None = None,
        every: int = 50,
        first_step: int = 0,
        boundary: int = 1,
    ) -> None:
        self.batches, self.stop, self.boundary = batches, stop, boundary
        self.every = math.lcm(every, boundary)
        self.dist = dist or Distributed()
        self.first_step = first_step
        self.stopped_at: int | None = None

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step, batch in enumerate(self.batches, self.first_step + 1):
            yield batch
            if self._stop_now(step):
                self.stopped_at = step
                return

    def _stop_now(self, step: int) -> bool:
        if not self.dist.enabled:
            return step % self.boundary == 0 and self.stop()
        return step % self.every == 0 and self.dist.any(self.stop())


@dataclass
class TrainStep:
    """One optimization step: forward, loss, backward, update (and a per-step schedule).

    With `accumulate` > 1 a call is one of the batches of an optimizer step: its gradients
    add up (weighted by batch size, so k batches of b step as one batch of k x b would) and
    the update is made on the call with `update=True` (the caller marks each k-th batch and
    the epoch's last). `clip_grad_norm` clips the gradients' total norm before the update
    (unscaled first under fp16); `ema` (averaging.WeightEMA) is stepped after every update.
    """

    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    autocast: AbstractContextManager | None = None
    scaler: torch.amp.GradScaler | None = None
    scheduler: Any | None = None  # stepped after every optimizer step
    clip_grad_norm: float | None = None
    accumulate: int = 1  # batches per optimizer step
    ema: Any | None = None  # .step() after every optimizer step
    best_path: Path | None = None  # the run's best.pt, for check_finite's message
    # the accumulating step's group so far: batches, samples, the first batch's size
    group: list[int] = field(default_factory=lambda: [0, 0, 0], init=False, repr=False)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, update: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.accumulate > 1:
            return self._accumulating(model, x, y, update)
        with self.autocast or nullcontext():
            logits = model(x)
            loss = self.loss_fn(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        self._backward(loss)
        self._update()
        return logits, loss

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _update(self, rescale: float = 1.0) -> None:
        """The optimizer step on the gradients there are (times `rescale`), then the
        per-step schedule and the EMA."""
        if self.clip_grad_norm is not None or rescale != 1.0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            grads = [p.grad for p in params if p.grad is not None]
            if rescale != 1.0 and grads:
                torch._foreach_mul_(grads, rescale)
            if self.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(params, self.clip_grad_norm, foreach=True)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.step()

    def _accumulating(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, update: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of an accumulated step: its loss weighted n / (k x b), b the group's first
        batch size; a short group (the epoch's last) is rescaled to the mean of its samples."""
        n = x.shape[0]
        if self.group[0] == 0:
            self.optimizer.zero_grad(set_to_none=True)
            self.group = [0, 0, n]
        self.group[0] += 1
        self.group[1] += n
        # DDP: average the gradients over the ranks once, in the step's last backward
        no_sync = getattr(model, "no_sync", None)
        with nullcontext() if update or no_sync is None else no_sync():
            with self.autocast or nullcontext():
                logits = model(x)
                loss = self.loss_fn(logits, y)
            self._backward(loss * (n / (self.accumulate * self.group[2])))
        if update:
            _, samples, first = self.group
            self._update(self.accumulate * first / samples)
            self.group = [0, 0, 0]
        return logits, loss

    def check_finite(self, loss: float, where: str) -> None:
        """Stop the run with one message when the loss is NaN or infinite (saying best.pt
        is kept only when `best_path` exists)."""
        if not math.isfinite(loss):
            lr = self.optimizer.param_groups[0]["lr"]
            kept = ""
            if self.best_path is not None:
                kept = "; best.pt is kept as it was" if self.best_path.is_file() else ""
                kept = kept or "; no best.pt was saved before it"
            raise CnnbenchError(
                f"loss became {loss} {where} (lr {lr:g}){kept}. Try a "
                "smaller optimizer.lr, a warmup (scheduler.warmup_epochs=1) or gradient "
                "clipping (optimizer.clip_grad_norm=1.0)."
            )


def train_one_epoch(
    model: nn.Module,
    batches: Batches,
    step: TrainStep,
    meter: Meter | None = None,
    progress: Progress | None = None,
) -> EpochResult:
    """One pass of `step` over `batches`; mean loss and top-1 accuracy of the whole epoch.

    `meter` may hold the sums of the epoch's earlier steps (a resumed epoch); without a
    `progress` no bar is shown (the loss is still checked every 50 steps).
    """
    meter = meter or Meter(next(model.parameters()).device)
    progress = progress or Progress(len(batches), "", enabled=False)  # type: ignore[arg-type]
    model.train()
    start = time.perf_counter()
    total, every = len(batches), step.accumulate  # type: ignore[arg-type]
    for x, y in batches:
        done = progress.step_count + 1  # steps of the epoch done after this one
        logits, loss = step(model, x, y, every == 1 or done % every == 0 or done == total)
        meter.update(loss, logits, y, top5=False)
        progress.step(meter, lambda value: step.check_finite(value, progress.where()))
    progress.close()
    result = meter.result(time.perf_counter() - start, top5=False)
    step.check_finite(result.loss, progress.where())
    return result


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Batches,
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
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    meter = Meter(next(model.parameters()).device, dist)
    bar = tqdm(total=len(loader), desc=desc, disable=None if progress else True, leave=False)  # type: ignore[arg-type]
    start = time.perf_counter()
    for x, y in loader:
        with autocast or nullcontext():
            logits = model(x)
        logits = logits.float()
        meter.update(loss_fn(logits, y), logits, y, top5=True)
        bar.update(1)
    bar.close()
    return meter.result(time.perf_counter() - start)
