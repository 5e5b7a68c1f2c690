"""`cnnbench plan [overrides...]`: what a training run will cost, before running it.

Composes the config as `cnnbench train` would, loads (scans) the data, builds the model on
the device and times real training steps: the recipe's own stages (train.py: build_data,
build_model, choose_precision, wrap_model, build_loaders, build_training, train_step) and the
engine's loops (`train_one_epoch`, `evaluate`) on real batches. Then prints parameters,
FLOPs per image, measured images/s, the estimated time per epoch and for the whole run,
memory per training step, the precision `auto` chooses and (--max-batch) the largest batch
that fits. Nothing is written unless --json asks for it.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .args import add_overrides, command_parser, parse_command, positive_int

USAGE = "cnnbench plan [overrides...] [-m] [--steps N] [--max-batch] [--json PATH]"
DESCRIPTION = """
Estimate a training run without running it: the overrides are the ones `cnnbench train`
takes. The data is loaded (folders are scanned and cached as for training), the model is
built on the device and a few real training steps (after two warm-up steps) and validation
batches are timed. With -m, one estimate per job of the sweep (comma-separated values).
"""
EXAMPLES = (
    "cnnbench plan model=alexnet dataset=folder dataset.root=~/pets epochs=50",
    "cnnbench plan -m model=lenet5,alexnet_cifar dataset=cifar10",
    "cnnbench plan model=resnet50 dataset=folder dataset.root=~/pets --max-batch",
)
WARMUP_STEPS = 2  # first steps build kernels / oneDNN primitives: not timed
MIN_SECONDS = 2.0  # time steps until this much has passed (or --steps are done)
CPU_MEMORY_SHARE = 0.8  # --max-batch on CPU: saved activations may fill this share

log = logging.getLogger("cnnbench")


@dataclass
class Estimate:
    """One job's plan (what --json writes, one object per job)."""

    overrides: list[str]
    model: str
    params: int
    input_size: list[int]
    num_classes: int
    train_images: int
    val_images: int
    test_images: int
    batch_size: int
    steps_per_epoch: int
    device: str
    threads: int
    precision: str
    auto_precision: str
    train_flops_per_image: int
    train_images_per_sec: float
    eval_images_per_sec: float
    timed_steps: int
    epoch_seconds: float  # train + validation, as metrics.csv's `seconds` column
    first_epoch_extra_seconds: float  # warm-up of the first steps
    setup_seconds: float  # data, model, precision, loaders: before the first step
    checkpoint_seconds: float  # serializing last.pt + best.pt, per epoch
    checkpoint_bytes: int
    run_seconds: float  # setup + epochs x (epoch + checkpoints) + warm-up + test
    epochs: int
    memory_bytes: int  # per training step at batch_size
    memory_detail: dict[str, int]
    memory_method: str
    max_batch: int | None = None
    max_batch_method: str = ""


class Take:
    """The first `n` batches of a loader (with the length the progress code reads)."""

    def __init__(self, loader: Any, n: int) -> None:
        self.loader, self.n = loader, min(n, len(loader))

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.loader), self.n)


class Batches:
    """The training loader's batches, epoch after epoch, handed out `n` at a time (lazily:
    a chunk holds one batch at a time, as the training loop does)."""

    def __init__(self, loader: Any) -> None:
        self.loader, self.epoch = loader, 0
        self.it: Iterator[Any] = iter(())

    def next(self) -> Any:
        batch = next(self.it, None)
        while batch is None:
            self.epoch += 1
            self.loader.set_epoch(self.epoch)
            self.it = iter(self.loader)
            batch = next(self.it, None)
        return batch

    def take(self, n: int) -> Take:
        return Take(self, n)

    def __len__(self) -> int:
        return 2**62  # endless

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self.next()


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(net: Any, loader: Any, step: Any, device: Any, steps: int) -> tuple:
    """(seconds per image, images timed, steps timed, warm-up seconds in excess) of the real
    TrainStep in engine.train_one_epoch, on the run's own batches (augmented as in training).

    After the warm-up, steps are timed in growing chunks (each ends with the meter's host
    sync) until MIN_SECONDS have passed, or `steps` steps, whichever comes first (>= 3)."""
    from ..engine import train_one_epoch

    batches = Batches(loader)
    _sync(device)
    warm = train_one_epoch(net, batches.take(WARMUP_STEPS), step)
    images = timed = 0
    seconds = 0.0
    chunk = 1
    while timed < max(3, steps) and (seconds < MIN_SECONDS or timed < 3):
        result = train_one_epoch(net, batches.take(chunk), step)  # ends with a host sync
        images, seconds, timed = images + result.images, seconds + result.seconds, timed + chunk
        per_step = seconds / timed
        chunk = int(min(max(1, (MIN_SECONDS - seconds) / per_step), max(3, steps) - timed))
        chunk = max(chunk, 1)
    per_image = seconds / images
    extra = max(0.0, warm.seconds - per_image * warm.images)
    return per_image, images, timed, extra


def time_evaluation(net: Any, loader: Any, autocast: Any) -> float:
    """Seconds per image of engine.evaluate on the first validation batches: one warm-up
    batch, then 1, 2, 4, ... batches until a pass takes MIN_SECONDS / 2 (or is the split)."""
    from ..engine import evaluate

    evaluate(net, Take(loader, 1), autocast=autocast, progress=False)
    n = 1
    while True:
        result = evaluate(net, Take(loader, n), autocast=autocast, progress=False)
        if result.seconds >= MIN_SECONDS / 2 or n >= len(loader):
            return result.seconds / result.images
        n *= 2


class _NullSink:
    """A writable file that keeps nothing: torch.save into it measures serialization."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def time_checkpoints(state: Any, best: dict) -> tuple[float, int]:
    """(seconds, bytes) to serialize last.pt and best.pt once: what each epoch saves
    (best.pt only when validation improves; counted every epoch, as early on)."""
    import torch

    start, total = time.perf_counter(), 0
    for obj in (state.to_dict(), best):
        sink = _NullSink()
        torch.save(obj, sink)
        total += sink.size
    return time.perf_counter() - start, total


def _storage_bytes(tensors: Any) -> int:
    """Bytes of the distinct storages behind `tensors` (views and repeats counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def saved_activation_bytes(net: Any, step: Any, batch: tuple) -> int:
    """Bytes autograd saves for backward during one real training step (weights excluded):
    the activations a batch keeps alive from the forward to the backward pass."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and t.device.type != "meta":
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(net, *batch)
    return sum(saved.values())


def training_memory(net: Any, model: Any, step: Any, batch: tuple, device: Any) -> tuple:
    """(bytes, parts, how) of memory one training step at this batch needs."""
    import torch

    params = [p for p in model.parameters()]
    parts = {
        "weights": _storage_bytes(params),
        "gradients": _storage_bytes(p for p in params if p.requires_grad),
        "optimizer_state": _storage_bytes(
            v for s in step.optimizer.state.values() for v in s.values() if torch.is_tensor(v)
        ),
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step(net, *batch)
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        parts["activations_and_workspace"] = max(0, peak - sum(parts.values()))
        return peak, parts, "CUDA: torch.cuda.max_memory_allocated over one training step"
    parts["saved_activations"] = saved_activation_bytes(net, step, batch)
    how = (
        "CPU: weights + gradients + optimizer state + the tensors autograd saves for backward "
        "in one step (torch.autograd.graph.saved_tensors_hooks); temporary buffers come on top"
    )
    return sum(parts.values()), parts, how


def available_memory() -> int:
    """Bytes the kernel says can be allocated without swapping (MemAvailable)."""
    import os

    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cuda_max_batch(net: Any, step: Any, input_size: tuple, device: Any, start: int) -> int:
    """The largest batch one real training step runs at: doubling from `start`, then a
    binary search, catching CUDA's out-of-memory error (0 when even one image fails)."""
    import torch

    def fits(batch: int) -> bool:
        try:
            x = torch.randn(batch, *input_size, device=device)
            step(net, x, torch.zeros(batch, dtype=torch.long, device=device))
            _sync(device)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            step.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    low, high, batch = 0, None, max(1, start)
    while high is None and batch <= 2**16:
        if fits(batch):
            low, batch = batch, batch * 2
        else:
            high = batch
    if high is None:
        return low
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def max_batch_size(net: Any, step: Any, data: Any, device: Any, batch_size: int, parts: dict):
    """(largest batch, how it was found)."""
    if device.type == "cuda":
        found = cuda_max_batch(net, step, data.input_size, device, batch_size)
        return found, "CUDA: real training steps, doubling then bisecting until out of memory"
    per_image = parts["saved_activations"] / batch_size
    free = available_memory()
    found = int(CPU_MEMORY_SHARE * free / per_image) if per_image else 2**16
    return found, (
        f"CPU: no out-of-memory error to catch (Linux swaps or kills the process): the batch "
        f"whose saved activations ({per_image / 2**20:.2f} MiB per image) fill "
        f"{CPU_MEMORY_SHARE:.0%} of the memory available now ({free / 2**30:.1f} GiB "
        "MemAvailable; weights, gradients and optimizer state are already allocated)"
    )


def auto_precision(cfg: Any, device: Any, model: Any, data: Any, chosen: Any) -> Any:
    """The precision `device.precision=auto` chooses for this run (`chosen` when auto)."""
    from omegaconf import OmegaConf

    from ..config import Precision
    from ..distributed import Distributed
    from ..train import choose_precision

    if cfg.device.precision == Precision.auto:
        return chosen
    auto_cfg = OmegaConf.merge(cfg, {"device": {"precision": "auto"}})
    return choose_precision(auto_cfg, device, model, data, Distributed())


def measure(cfg: Any, overrides: list[str], steps: int, want_max_batch: bool) -> Estimate:
    """Build the run as `train()` does, time it and fill an Estimate."""
    import torch

    from .. import train as recipe
    from ..config import check_values
    from ..device import resolve_device
    from ..distributed import Distributed
    from ..models import count_params
    from ..perf import train_flops_per_image

    check_values(cfg)
    start = time.perf_counter()
    ddp = Distributed()
    device = resolve_device(cfg.device)
    recipe.seed_everything(cfg.seed)
    data = recipe.build_data(cfg, ddp, progress=cfg.progress)
    model = recipe.build_model(cfg, data.input_size, data.num_classes, device)
    precision = recipe.choose_precision(cfg, device, model, data, ddp)
    auto = auto_precision(cfg, device, model, data, precision)
    net, eval_net = recipe.wrap_model(model, cfg, device, ddp)
    loaders = recipe.build_loaders(cfg, data, device, ddp)
    state = recipe.build_training(cfg, model, precision, device, len(loaders.train))
    step = recipe.train_step(cfg, state, precision, device)
    setup = time.perf_counter() - start
    flops = train_flops_per_image(model, data.input_size)
    per_image, _, timed, extra = time_training(net, loaders.train, step, device, steps)
    eval_per_image = time_evaluation(eval_net, loaders.val, step.autocast)
    loaders.train.set_epoch(1)
    batch = next(iter(loaders.train))
    memory, parts, how = training_memory(net, model, step, batch, device)
    best = recipe.best_checkpoint(model, cfg, data, 1, 0.0)
    ckpt_seconds, ckpt_bytes = time_checkpoints(state, best)
    splits = data.splits
    epoch = len(splits.train) * per_image + len(splits.val) * eval_per_image
    test = len(splits.test) * eval_per_image
    run = setup + cfg.epochs * (epoch + ckpt_seconds) + extra + test
    found, found_how = (None, "")
    if want_max_batch:
        found, found_how = max_batch_size(net, step, data, device, cfg.batch_size, parts)
    return Estimate(
        overrides=overrides,
        model=cfg.model.name,
        params=count_params(model),
        input_size=list(data.input_size),
        num_classes=data.num_classes,
        train_images=len(splits.train),
        val_images=len(splits.val),
        test_images=len(splits.test),
        batch_size=cfg.batch_size,
        steps_per_epoch=len(loaders.train),
        device=str(device),
        threads=torch.get_num_threads(),
        precision=precision.value,
        auto_precision=auto.value,
        train_flops_per_image=flops,
        train_images_per_sec=1 / per_image,
        eval_images_per_sec=1 / eval_per_image,
        timed_steps=timed,
        epoch_seconds=epoch,
        first_epoch_extra_seconds=extra,
        setup_seconds=setup,
        checkpoint_seconds=ckpt_seconds,
        checkpoint_bytes=ckpt_bytes,
        run_seconds=run,
        epochs=cfg.epochs,
        memory_bytes=memory,
        memory_detail=parts,
        memory_method=how,
        max_batch=found,
        max_batch_method=found_how,
    )


def duration(seconds: float) -> str:
    """'4.2 s', '3 min 05 s', '2 h 07 min', '3 d 04 h'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


def _mb(n: float) -> str:
    if n < 2**20:
        return f"{n / 2**10:,.0f} KiB"
    return f"{n / 2**20:,.0f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def format_estimate(e: Estimate) -> str:
    size = "x".join(map(str, e.input_size))
    parts = ", ".join(f"{k.replace('_', ' ')} {_mb(v)}" for k, v in e.memory_detail.items())
    auto = "" if e.auto_precision == e.precision else f"; auto would choose {e.auto_precision}"
    lines = [
        f"plan: {' '.join(e.overrides) or '(defaults)'}",
        f"  data       {e.train_images:,} train / {e.val_images:,} val / {e.test_images:,} test "
        f"images, model input {size}, {e.num_classes} classes; batch {e.batch_size}: "
        f"{e.steps_per_epoch} steps per epoch",
        f"  model      {e.model}: {e.params:,} parameters, "
        f"{e.train_flops_per_image / 1e9:,.3f} GFLOP per image per training step (fwd+bwd)",
        f"  device     {e.device}, {e.threads} thread{'s' * (e.threads != 1)}, precision "
        f"{e.precision}{auto}",
        f"  speed      {e.train_images_per_sec:,.0f} images/s training (timed over "
        f"{e.timed_steps} steps after {WARMUP_STEPS} warm-up), {e.eval_images_per_sec:,.0f} "
        f"images/s evaluation; {e.train_flops_per_image * e.train_images_per_sec / 1e9:,.1f} "
        "GFLOP/s",
        f"  epoch      ~{duration(e.epoch_seconds)} (train + validation; the first one "
        f"~{duration(e.epoch_seconds + e.first_epoch_extra_seconds)}, with the warm-up)",
        f"  run        ~{duration(e.run_seconds)} for {e.epochs} epochs: setup "
        f"{duration(e.setup_seconds)}, the epochs, the test and {_mb(e.checkpoint_bytes)} of "
        f"checkpoints per epoch ({duration(e.checkpoint_seconds)} to serialize, plus the disk "
        "write)",
        f"  memory     ~{_mb(e.memory_bytes)} per training step at batch {e.batch_size} ({parts})",
        f"             measured as {e.memory_method}",
    ]
    if e.max_batch is not None:
        lines.append(f"  max batch  {e.max_batch:,} ({e.max_batch_method})")
    return "\n".join(lines) + "\n"


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The jobs of `-m` overrides: every combination of the comma-separated values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from ..config import composition_error
    from ..errors import CnnbenchError

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise composition_error(err) from err
    choices = []
    for override in parsed:
        if not override.is_sweep_override():
            choices.append([override.input_line])
        elif override.is_discrete_sweep():
            key = override.get_key_element()
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()])
        else:
            raise CnnbenchError(
                f"cnnbench plan -m expands comma-separated values only, not {override.input_line!r}"
            )
    return [list(job) for job in itertools.product(*choices)]


def run_cli(args: list[str]) -> None:
    """`cnnbench plan [overrides...] [-m] [--steps N] [--max-batch] [--json PATH]`."""
    from ..checkpoint import atomic_write_text
    from ..config import check_values, compose_checked
    from ..errors import out_of_memory_hint, user_errors

    parser = command_parser("plan", USAGE, DESCRIPTION, EXAMPLES)
    add_overrides(parser, "overrides as `cnnbench train` takes them (model=NAME, dataset=...)")
    parser.add_argument("-m", "--multirun", action="store_true", help="one plan per sweep job")
    parser.add_argument(
        "--steps", type=positive_int, default=50, metavar="N",
        help="time at most N training steps after the warm-up (default 50; stops after 2 s)",
    )  # fmt: skip
    parser.add_argument(
        "--max-batch", action="store_true", help="also find the largest batch size that fits"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the estimates as JSON")
    opts = parse_command(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with user_errors():
        jobs = sweep_jobs(opts.overrides) if opts.multirun else [opts.overrides]
        configs = [compose_checked(job) for job in jobs]  # every job checked before any work
        for cfg in configs:
            check_values(cfg)
        estimates = []
        for job, cfg in zip(jobs, configs, strict=True):
            with out_of_memory_hint(cfg.batch_size, Path(".")):
                estimate = measure(cfg, job, opts.steps, opts.max_batch)
            estimates.append(estimate)
            print(format_estimate(estimate), flush=True)
        if opts.json:
            text = json.dumps([asdict(e) for e in estimates], indent=1) + "\n"
            atomic_write_text(Path(opts.json), text)
            print(f"wrote {opts.json}")
