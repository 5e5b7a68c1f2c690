"""cnnbench train: the recipe, as named stages and one loop.

    cnnbench train model=alexnet_cifar dataset=cifar10 transforms=cifar epochs=10

`train(cfg, out_dir)` reads top to bottom: build the data (splits, pipelines), the model, the
loaders and the training step; restore the train state when resuming; then per epoch train,
validate, record the metrics and keep the best weights by the monitored metric (`monitor`,
validation loss by default), stopping early when it no longer improves (`early_stop`);
finally test the best weights. With `ema.decay` the weights validated, kept and tested are
the moving average of the trained ones; `tta=flip` averages each image's logits with its
mirror image's. `cnnbench eval`, `predict`, `summary` and the scripts reuse the same stages.

Hydra composes the config from configs/ (schemas in config.py) and gives the run its own
directory; everything this run produces is written there. Under torchrun the same recipe runs
in every process with DistributedDataParallel (distributed.py); rank 0 writes the run dir.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import distributed, interrupt
from .averaging import WeightEMA, with_tta
from .checkpoint import TrainState, atomic_write_text, load_checkpoint, save_checkpoint, unwrap
from .config import Monitor, Precision, Sampler, check_values, eval_batch_size, register_configs
from .data import BatchTransform, DataSplits, TensorLoader, build_transforms, load_dataset
from .device import Workload, autocast_for, grad_scaler_for, resolve_device, resolve_precision
from .distributed import Distributed
from .engine import EpochResult, Meter, Progress, StopPoll, TrainStep, evaluate, train_one_epoch
from .errors import CnnbenchError
from .loggers import NullLogger, open_logger
from .metrics import write_json, write_metrics_csv
from .models import (
    apply_weights,
    check_input_size,
    count_params,
    create_model,
    native_input_size,
)
from .models.summary import summary_table
from .optim import (
    build_optimizer,
    build_scheduler,
    is_per_step,
    parameter_groups,
    retarget_scheduler,
    step_after_epoch,
)
from .plots import CurvesWriter
from .preflight import warn_if_hopeless
from .runs import compose_saved
from .sweep import parallel_jobs

log = logging.getLogger("cnnbench")
register_configs()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- stages


@dataclass
class Data:
    """The splits and the two pipelines of a run, and what the model must fit."""

    splits: DataSplits
    train_tf: BatchTransform
    eval_tf: BatchTransform
    input_size: tuple[int, int, int]  # C, H, W as the model sees them (after the transforms)
    num_classes: int  # the model's head: model.num_classes, else the data's classes


# Datasets whose images come in their own sizes (stored at one size: dataset_config decides).
OWN_SIZE_DATASETS = ("folder", "csv")


def dataset_config(cfg: Any) -> Any:
    """cfg.dataset with the size images are stored at decided, for every command alike.

    dataset.image_size, else transforms.resize, else, for datasets of images in their own
    sizes (folder, csv), the model's native size (timm's resolve_data_config does the same):
    `model=alexnet dataset=folder` stores 224x224 images, `model=lenet5` 32x32. Logged.
    """
    ds = cfg.dataset
    if ds.name not in OWN_SIZE_DATASETS or ds.get("image_size") or cfg.transforms.resize:
        return ds
    _, height, width = native_input_size(cfg.model.name)
    if height != width:  # the loaders store squares only: keep the images' own size
        return ds
    log.info(
        f"dataset.image_size and transforms.resize are not set: storing the images at "
        f"{cfg.model.name}'s native size, {height}x{width} (set either to choose another)"
    )
    return OmegaConf.merge(ds, {"image_size": height})


def build_data(cfg: Any, ddp: Distributed | None = None, progress: bool = True) -> Data:
    """Load and split the dataset (uint8, in memory or streamed; stored at the size
    `dataset_config` decides) and build its pipelines, normalized with the train split's
    statistics; eval never augments."""
    ddp = ddp or Distributed()
    with ddp.main_first():  # rank 0 fills the decode cache, the others read it
        splits = load_dataset(
            dataset_config(cfg), cfg.transforms, num_workers=cfg.num_workers, progress=progress
        )
    channels, height, width = splits.input_size
    classes = cfg.model.num_classes or splits.num_classes
    train_tf, eval_tf = build_transforms(cfg.transforms, splits.train_stats, channels, classes)
    input_size = (channels, *train_tf.output_size(height, width))
    head = cfg.model.num_classes
    if head is not None and head < splits.num_classes:  # labels past the head: no loss
        raise CnnbenchError(
            f"model.num_classes={head} is smaller than the {splits.num_classes} classes of "
            f"dataset {cfg.dataset.name}; drop model.num_classes (the head then has one output "
            f"per class) or set it to {splits.num_classes} or more"
        )
    if cfg.overfit_batches:  # a debug run: the same few batches, unaugmented, as train and val
        n = cfg.overfit_batches * cfg.batch_size * ddp.world_size
        splits, train_tf = splits.overfit(n, cfg.seed), eval_tf
        log.info(
            f"overfit_batches={cfg.overfit_batches}: training and validating on the same "
            f"{len(splits.train)} training images, without augmentation; the loss should reach ~0"
        )
    return Data(splits, train_tf, eval_tf, input_size, classes)


def build_model(
    cfg: Any, input_size: tuple[int, int, int], num_classes: int, device: torch.device
) -> nn.Module:
    """`cfg.model` for `input_size` (C, H, W) images and `num_classes` on `device`: checked at
    that size, weights loaded (model.weights, model.freeze_features); it returns logits."""
    channels = cfg.model.in_channels or input_size[0]
    model = create_model(cfg.model.name, num_classes, channels).to(device)
    check_input_size(cfg.model.name, model, input_size, device, cfg.transforms)
    apply_weights(model, cfg.model)  # model.weights=PATH (local file), model.freeze_features
    if cfg.device.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def eval_loader(
    cfg: Any,
    split: Any,
    transform: BatchTransform,
    device: torch.device,
    ddp: Distributed,
    limit: float | None = None,
) -> TensorLoader:
    """Batches of `split` for evaluation, in order (each DDP rank takes its part); `limit`:
    at most that many batches (a count), or that fraction of them."""
    return TensorLoader(
        split,
        eval_batch_size(cfg),
        transform,
        device,
        shuffle=False,
        channels_last=cfg.device.channels_last,
        rank=ddp.rank,
        world_size=ddp.world_size,
        limit=limit,
    )


@dataclass
class Loaders:
    train: TensorLoader
    val: TensorLoader
    test: TensorLoader


def build_loaders(cfg: Any, data: Data, device: torch.device, ddp: Distributed) -> Loaders:
    """Train batches shuffled and augmented per (seed, epoch); val and test in order;
    limit_*_batches cut each epoch short (debug runs)."""
    train = TensorLoader(
        data.splits.train,
        cfg.batch_size,
        data.train_tf,
        device,
        shuffle=True,
        seed=cfg.seed,
        channels_last=cfg.device.channels_last,
        rank=ddp.rank,
        world_size=ddp.world_size,
        limit=cfg.limit_train_batches,
        balanced=Sampler(cfg.dataset.sampler) == Sampler.balanced,
    )
    splits, tf = data.splits, data.eval_tf
    val = eval_loader(cfg, splits.val, tf, device, ddp, limit=cfg.limit_val_batches)
    test = eval_loader(cfg, splits.test, tf, device, ddp, limit=cfg.limit_test_batches)
    if any(cfg[f"limit_{s}_batches"] is not None for s in ("train", "val", "test")):
        log.warning(
            f"debug run: {len(train)} train, {len(val)} val and {len(test)} test batches per "
            "epoch (limit_*_batches); its metrics are not those of the whole splits"
        )
    return Loaders(train, val, test)


def check_batch_norm(cfg: Any, model: nn.Module) -> None:
    """batch_size=1 cannot train BatchNorm layers: each batch is normalized by its own
    statistics, which one image does not have (train epochs drop a trailing batch of one)."""
    if cfg.batch_size == 1 and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        raise CnnbenchError(
            f"batch_size=1 cannot train model {cfg.model.name!r}: its BatchNorm layers "
            "normalize each batch by its own mean and variance, which one image does not "
            "have; use batch_size=2 or more (batch_size is per process under torchrun)"
        )


def choose_precision(
    cfg: Any, device: torch.device, model: nn.Module, data: Data, ddp: Distributed
) -> Precision:
    """device.precision; auto: bf16 only where the hardware has it and (CPU) it measures
    faster on this model. Under DDP rank 0 decides for all."""
    images = len(data.splits.train) * cfg.epochs
    workload = Workload(cfg.model.name, data.input_size, cfg.batch_size, images)
    chosen = resolve_precision(cfg.device, device, model, workload) if ddp.is_main else None
    return ddp.broadcast_object(chosen)


def wrap_model(
    model: nn.Module,
    cfg: Any,
    device: torch.device,
    ddp: Distributed,
    evaluated: nn.Module | None = None,
) -> tuple[nn.Module, nn.Module]:
    """(module to train, module to evaluate): DDP averages the gradients over the ranks in
    backward() and starts from rank 0's weights; evaluation runs on the plain model, or on
    `evaluated` (the EMA's weights), each rank on its part of the split, under `tta`;
    device.compile wraps both in torch.compile."""
    compile_ = torch.compile if cfg.device.compile else (lambda m: m)
    tested = with_tta(evaluated if evaluated is not None else model, cfg.tta)
    if not ddp.enabled:
        net = compile_(model)
        return net, net if tested is model else compile_(tested)
    ids = [device.index] if device.type == "cuda" else None
    return compile_(nn.parallel.DistributedDataParallel(model, device_ids=ids)), compile_(tested)


def optimizer_steps(cfg: Any, batches: int) -> int:
    """Optimizer steps in an epoch of `batches` batches (accumulate_steps batches a step)."""
    return -(-batches // cfg.accumulate_steps)


def build_training(
    cfg: Any, model: nn.Module, precision: Precision, device: torch.device, batches: int
) -> TrainState:
    """Optimizer, schedule, grad scaler and weight EMA, in a fresh train state (epoch 0);
    `batches` per epoch."""
    optimizer = build_optimizer(cfg.optimizer, parameter_groups(model, cfg.optimizer))
    steps = optimizer_steps(cfg, batches)
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.epochs, steps)
    scaler = grad_scaler_for(precision, device)
    ema = None
    if cfg.ema.decay is not None:
        ema = WeightEMA(model, cfg.ema.decay, cfg.ema.every, cfg.ema.warmup)
    monitor = Monitor(cfg.monitor).value
    best = math.inf if monitor == Monitor.val_loss.value else -math.inf
    return TrainState(
        model, optimizer, scheduler, scaler, cfg.model.name, ema, monitor, best_value=best
    )


def class_weights(cfg: Any, data: Data) -> torch.Tensor | None:
    """loss.class_weights as one weight per class (None: unweighted). balanced: n / (classes x
    count) over the training split's classes, as scikit-learn's compute_class_weight."""
    spec = cfg.loss.class_weights
    if spec is None or (isinstance(spec, str) and spec == "none"):
        return None
    if isinstance(spec, str):  # balanced (check_values allows nothing else)
        counts = torch.bincount(data.splits.train.labels.cpu(), minlength=data.num_classes)
        counts = counts.double()
        present = counts > 0
        weights = torch.where(present, counts.sum() / (present.sum() * counts), 0.0)
        return weights.float()
    if len(spec) != data.num_classes:
        raise CnnbenchError(
            f"loss.class_weights has {len(spec)} weights, but the model has "
            f"{data.num_classes} classes ({', '.join(data.splits.classes[:12])}): give one "
            "per class, in this order"
        )
    return torch.tensor([float(w) for w in spec])


def train_step(
    cfg: Any,
    state: TrainState,
    precision: Precision,
    device: torch.device,
    weights: torch.Tensor | None = None,
) -> TrainStep:
    """The optimization step: loss (class `weights`, label smoothing), autocast, scaler,
    per-step lr, gradient clipping and accumulation, the weight EMA."""
    per_step = state.scheduler if is_per_step(state.scheduler) else None  # onecycle, warmup
    weight = weights.to(device) if weights is not None else None
    return TrainStep(
        state.optimizer,
        nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing),
        autocast_for(precision, device),
        state.scaler,
        per_step,
        clip_grad_norm=cfg.optimizer.clip_grad_norm,
        accumulate=cfg.accumulate_steps,
        ema=state.ema,
    )


def resume(state: TrainState, cfg: Any, out_dir: Path, loader: TensorLoader, world: int) -> None:
    """Continue from out_dir/last.pt; `resume=DIR epochs=N` re-aims the schedule at epoch N
    (runs.check_resume has refused fewer epochs, or none more for a finished run)."""
    state.load(out_dir / "last.pt")
    steps = optimizer_steps(cfg, len(loader))
    retargeted = retarget_scheduler(state.scheduler, cfg.epochs, steps, str(out_dir))
    stopped, epoch = state.partial, state.epoch + 1
    if stopped is not None and stopped.get("world", 1) != world:
        log.warning(
            f"last.pt was saved {stopped['step']} steps into epoch {epoch} by "
            f"{stopped.get('world', 1)} process(es); with {world} the batches "
            "differ, so that epoch starts over (from the weights saved mid-epoch)"
        )
        state.partial = stopped = None
    if stopped is not None and loader.images_before(stopped["step"]) * world != stopped["seen"]:
        raise CnnbenchError(
            f"last.pt was saved {stopped['step']} steps ({stopped['seen']} images) into epoch "
            f"{epoch}, but the first {stopped['step']} steps of this run hold "
            f"{loader.images_before(stopped['step']) * world} images: resume with the "
            "batch_size and dataset the run was started with"
        )
    log.info(
        f"resuming {out_dir} after epoch {state.epoch}"
        + (f" and {stopped['step']} steps of epoch {epoch}" if stopped else "")
        + f" (best {state.monitor} {state.best_value:.5f})"
    )
    if retargeted:
        log.warning(retargeted)


# ---- one epoch, and what is kept of it


def run_epoch(
    net: nn.Module,
    loader: TensorLoader,
    step: TrainStep,
    state: TrainState,
    cfg: Any,
    ddp: Distributed,
    desc: str,
) -> tuple[EpochResult, int | None]:
    """Train epoch state.epoch + 1 (from where a stopped one ended); (result, the step it
    stopped after on Ctrl-C, else None)."""
    epoch, stopped = state.epoch + 1, state.partial
    first = stopped["step"] if stopped else 0
    loader.set_epoch(epoch, start_step=first)
    meter = Meter(next(net.parameters()).device, ddp)
    if stopped:
        meter.load_state_dict(stopped)
    batches = StopPoll(
        loader, interrupt.requested, ddp, cfg.log_interval, first, boundary=cfg.accumulate_steps
    )
    progress = Progress(
        len(loader),
        desc,
        enabled=cfg.progress and ddp.is_main,
        log_interval=cfg.log_interval,
        initial=first,
        what=f"epoch {epoch}",
    )
    result = train_one_epoch(net, batches, step, meter, progress)
    if batches.stopped_at is None:
        return result, None
    state.partial = dict(step=batches.stopped_at, world=ddp.world_size, **meter.state_dict())
    return result, batches.stopped_at


def best_checkpoint(model: nn.Module, cfg: Any, data: Data, epoch: int, val_loss: float) -> dict:
    """best.pt: the weights (of `model`: the trained one or its EMA) and all `cnnbench eval`,
    `predict` and `export` need with them."""
    return {
        "model": unwrap(model).state_dict(),
        "model_name": cfg.model.name,
        "num_classes": data.num_classes,
        "input_size": list(data.input_size),
        "classes": data.splits.classes,
        "mean": data.eval_tf.mean,  # normalization, for `cnnbench predict`
        "std": data.eval_tf.std,
        "epoch": epoch,
        "val_loss": val_loss,
    }


# ---- a finished run's best weights, as eval, predict and export load them


def load_best(run_dir: Path) -> dict[str, Any]:
    """A run's best.pt, checked: one message when it is missing (and what to do about it),
    damaged, or not the checkpoint `cnnbench train` writes."""
    if not Path(run_dir).is_dir():
        what = "file" if Path(run_dir).suffix in (".onnx", ".pt") else "run directory"
        raise CnnbenchError(f"{run_dir}: no such {what}")
    path = Path(run_dir) / "best.pt"
    if not path.is_file():
        if (Path(run_dir) / "last.pt").is_file():
            raise CnnbenchError(
                f"{run_dir} has no best.pt yet: the run stopped before its first epoch ended; "
                f"continue it with `{interrupt.resume_command(run_dir)}`"
            )
        raise CnnbenchError(
            f"{run_dir} has no finished epoch (no best.pt, no last.pt): the run stopped or "
            "failed before its first epoch ended, so there is nothing to evaluate; train it "
            f"again with `cnnbench rerun {run_dir}`"
        )
    ckpt = load_checkpoint(path)
    problem = _best_problem(ckpt)
    if problem:
        raise CnnbenchError(
            f"{path} {problem}: eval, predict and export need the best.pt `cnnbench train` "
            "writes (weights with their model name, classes and input size)"
        )
    return ckpt


def _best_problem(ckpt: Any) -> str | None:
    """What makes a loaded best.pt unusable, or None."""
    if not isinstance(ckpt, dict):
        return f"holds a {type(ckpt).__name__}, not a checkpoint"
    if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return "is a plain state_dict (weights only)"
    missing = [k for k in ("model", "model_name", "num_classes", "input_size") if k not in ckpt]
    if missing:
        return f"lacks {', '.join(missing)}"
    size = ckpt["input_size"]
    if not (
        isinstance(ckpt["model"], dict)
        and isinstance(ckpt["model_name"], str)
        and isinstance(ckpt["num_classes"], int)
        and isinstance(size, (list, tuple))
        and len(size) == 3
        and all(isinstance(v, int) and v > 0 for v in size)
    ):
        return "has entries of the wrong kind (model, model_name, num_classes, input_size)"
    return None


def model_from_checkpoint(ckpt: dict[str, Any], device: torch.device) -> nn.Module:
    """Rebuild the model best.pt was saved from and load its weights, in eval mode."""
    channels = int(ckpt["input_size"][0])
    model = create_model(ckpt["model_name"], int(ckpt["num_classes"]), channels)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, ValueError, AttributeError) as err:
        raise CnnbenchError(
            f"best.pt does not fit model {ckpt['model_name']!r}: {str(err).splitlines()[0]}"
        ) from None
    return model.to(device).eval()


def normalization(run_dir: Path, ckpt: dict[str, Any]) -> tuple[list, list]:
    """Mean/std the run normalized with: from best.pt, else recomputed from the saved config."""
    if ckpt.get("mean") is not None and ckpt.get("std") is not None:
        return list(ckpt["mean"]), list(ckpt["std"])
    log.info("best.pt has no normalization statistics (an older run): recomputing them")
    cfg = compose_saved(run_dir)
    eval_tf = build_data(cfg, progress=cfg.progress).eval_tf
    return eval_tf.mean, eval_tf.std


def record_epoch(state: TrainState, row: dict, cfg: Any, out_dir: Path, writers: tuple) -> None:
    """The epoch's row into the state, metrics.csv, curves.png and the logger (rank 0)."""
    state.metrics.append(row)
    curves, logger = writers
    if curves is not None:
        write_metrics_csv(out_dir / "metrics.csv", state.metrics)
        curves.refresh(state.metrics, final=row["epoch"] == cfg.epochs)
    logger.log(row)


def improved(state: TrainState, row: dict) -> bool:
    """True (and recorded) when this epoch's `state.monitor` (a metrics row's val_loss or
    val_acc) is the best so far."""
    value = row[state.monitor]
    lower = state.monitor == Monitor.val_loss.value
    if (value >= state.best_value) if lower else (value <= state.best_value):
        return False
    log.info(
        f"[INFO] {state.monitor} has been improved from {state.best_value:.5f} to {value:.5f}. "
        "Saving Model!"
    )
    state.best_value, state.best_epoch = value, row["epoch"]
    return True


def early_stop_reason(rows: list[dict], monitor: str, patience: Any, min_delta: float) -> str:
    """Why to stop after the last of `rows` (metrics.csv's rows; '' to go on): `monitor` has not
    improved by more than `min_delta` for `patience` epochs. A function of the history alone,
    so the count goes on across a resume."""
    if patience is None or not rows:
        return ""
    sign = 1.0 if monitor == Monitor.val_loss.value else -1.0
    best, best_epoch, waited = math.inf, 0, 0
    for row in rows:
        if sign * row[monitor] < best - min_delta:
            best, best_epoch, waited = sign * row[monitor], row["epoch"], 0
        else:
            waited += 1
    if waited < patience:
        return ""
    return (
        f"early stopping after epoch {rows[-1]['epoch']}: {monitor} has not improved by more "
        f"than {min_delta:g} for {waited} epochs (early_stop.patience={patience}; best "
        f"{sign * best:.5f} at epoch {best_epoch})"
    )


def eta(rows: list[dict], epoch: int, epochs: int) -> str:
    """'epoch 3/20, ~1:05 left' from the mean time of the epochs so far."""
    text = f"epoch {epoch}/{epochs}"
    if not rows:
        return text
    left = sum(r["seconds"] for r in rows) / len(rows) * (epochs - epoch + 1)
    return f"{text}, ~{int(left // 60)}:{int(left % 60):02d} left"


# ---- the recipe


def train(cfg: DictConfig, out_dir: Path) -> dict:
    """Run the recipe `cfg` and write its artifacts to `out_dir`; returns results.json's data."""
    wall_start = time.perf_counter()
    check_values(cfg)
    ddp = distributed.from_env()  # rank 0 of 1 unless launched by torchrun
    main = ddp.is_main  # the one process that prints and writes
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device, ddp, parallel_jobs())
    seed_everything(cfg.seed + ddp.rank)  # dropout differs per rank; DDP syncs the weights

    data = build_data(cfg, ddp, progress=cfg.progress and main)
    splits = data.splits
    if splits.skipped and main:  # broken files found by the scan: listed with the run
        atomic_write_text(out_dir / "skipped_files.txt", splits.skipped_text())
    log.info(
        f"dataset {cfg.dataset.name}: {len(splits.train)} train / {len(splits.val)} val / "
        f"{len(splits.test)} test images, {splits.num_classes} classes, model input "
        f"{'x'.join(map(str, data.input_size))}"
    )
    model = build_model(cfg, data.input_size, data.num_classes, device)
    check_batch_norm(cfg, model)
    if main:
        table = summary_table(model, data.input_size, device)
        print(table, flush=True)
        atomic_write_text(out_dir / "summary.txt", table)
        warn_if_hopeless(cfg, count_params(model), data, device)  # e.g. VGG-16 on 8x8 digits
    precision = choose_precision(cfg, device, model, data, ddp)
    loaders = build_loaders(cfg, data, device, ddp)
    state = build_training(cfg, model, precision, device, len(loaders.train))
    kept = state.ema.module if state.ema is not None else model  # the weights best.pt keeps
    net, eval_net = wrap_model(model, cfg, device, ddp, kept)
    step = train_step(cfg, state, precision, device, class_weights(cfg, data))
    step.best_path = out_dir / "best.pt"  # a non-finite loss says whether it is kept
    log_training_line(cfg, model, device, precision, ddp)
    if cfg.resume:  # continue from last.pt: weights, optimizer, scheduler, EMA, RNG, history
        resume(state, cfg, out_dir, loaders.train, ddp.world_size)

    show = cfg.progress and main
    validate = partial(evaluate, eval_net, autocast=step.autocast, progress=show, dist=ddp)
    earlier = sum(row["seconds"] for row in state.metrics)  # epochs of earlier sessions (resume)
    throughput, stopped = fit(cfg, out_dir, data, loaders, (net, step, state, validate), ddp)

    # ---- test: reload the best weights, evaluate with the eval transform
    if main:
        kept.load_state_dict(load_checkpoint(out_dir / "best.pt")["model"])
    ddp.broadcast_state(kept)  # DDP: rank 0's best.pt, without a shared file system
    te = validate(loaders.test, desc="[Test]")
    images, seconds = throughput
    best = next((r for r in state.metrics if r["epoch"] == state.best_epoch), {})
    results = dict(
        test_loss=te.loss,
        test_top1=te.top1,
        test_top5=te.top5 if splits.num_classes > 5 else None,  # top-5 of <= 5 classes: 1
        best_epoch=state.best_epoch,
        best_val_loss=best.get("val_loss", math.nan),
        best_val_acc=best.get("val_acc", math.nan),
        monitor=state.monitor,
        epochs=cfg.epochs,
        stopped_early=bool(stopped),
        stopped_epoch=state.epoch if stopped else None,
        wall_seconds=time.perf_counter() - wall_start + earlier,
        train_images_per_sec=images / seconds if seconds > 0 else None,  # None: test only
        params=count_params(model),
        model=cfg.model.name,
        dataset=cfg.dataset.name,
        device=str(device),
        precision=precision.value,
        world_size=ddp.world_size,
        accumulate_steps=cfg.accumulate_steps,
        effective_batch_size=cfg.batch_size * ddp.world_size * cfg.accumulate_steps,
        classes=splits.classes,
    )
    if main:
        write_json(out_dir / "results.json", results)
    top5 = f", top-5 {te.top5:.4f}" if splits.num_classes > 5 else ""  # else always 1
    log.info(
        f"test (best epoch {state.best_epoch}): loss {te.loss:.4f}, top-1 {te.top1:.4f}"
        f"{top5}; run dir: {out_dir}"
    )
    return results


def fit(
    cfg: Any, out_dir: Path, data: Data, loaders: Loaders, run: tuple, ddp: Distributed
) -> tuple[list, str]:
    """The epochs of `run` = (net, step, state, validate): train, validate, record, keep the
    best weights, save last.pt; stop early or on Ctrl-C. Returns ([images, seconds] trained,
    why it stopped early or '')."""
    net, step, state, validate = run
    main = ddp.is_main  # the one process that prints and writes
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    kept = state.ema.module if state.ema is not None else state.model
    logger = open_logger(cfg.logger, out_dir, cfg) if main else NullLogger()  # logger=...
    writers = (CurvesWriter(out_dir / "curves.png") if main else None, logger)
    throughput = [0, 0.0]  # images trained, seconds
    patience, min_delta = cfg.early_stop.patience, cfg.early_stop.min_delta
    stopped = early_stop_reason(state.metrics, state.monitor, patience, min_delta)
    if stopped:  # a resumed run that had stopped early
        log.info(f"{stopped}; no more epochs to train")
    interrupt.set_quiet(not main)
    interrupt.arm()  # Ctrl-C/SIGTERM from here on: finish the step, save last.pt, exit
    for epoch in range(cfg.epochs + 1 if stopped else state.epoch + 1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        lr = state.optimizer.param_groups[0]["lr"]  # the epoch's first (as it started)
        lr = state.partial.get("lr", lr) if state.partial else lr
        desc = f"[Training] {eta(state.metrics, epoch, cfg.epochs)}"
        tr, stopped_at = run_epoch(net, loaders.train, step, state, cfg, ddp, desc)
        if stopped_at is not None:  # stopped mid-epoch: save this point and exit
            state.partial["lr"] = lr  # type: ignore[index]
            if main:
                state.save(last_path)
            ddp.barrier()  # no rank exits (and gets the others killed) before it is saved
            interrupt.exit_for_resume(out_dir, f"in epoch {epoch} after step {stopped_at}")
        state.partial = None
        throughput = [throughput[0] + tr.images, throughput[1] + tr.seconds]
        va = validate(loaders.val)
        step_after_epoch(state.scheduler, va.loss)  # per-epoch schedules (plateau: val_loss)
        row = dict(epoch=epoch, train_loss=tr.loss, train_acc=tr.top1, val_loss=va.loss)
        row.update(val_acc=va.top1, lr=lr, seconds=time.perf_counter() - epoch_start)
        record_epoch(state, row, cfg, out_dir, writers)
        log.info(
            f"epoch {epoch}/{cfg.epochs}  [Training] loss: {tr.loss:.5f}, accuracy: {tr.top1:.5f}"
            f"  [Validation] loss: {va.loss:.5f}, accuracy: {va.top1:.5f}  "
            f"({tr.images / tr.seconds:,.0f} img/s)"
        )
        if improved(state, row) and main:
            save_checkpoint(best_checkpoint(kept, cfg, data, epoch, va.loss), best_path)
        state.epoch = epoch
        if main:
            state.save(last_path)
        if ddp.any(interrupt.requested()):
            ddp.barrier()
            interrupt.exit_for_resume(out_dir, f"after epoch {epoch}")
        stopped = early_stop_reason(state.metrics, state.monitor, patience, min_delta)
        if stopped:
            log.info(stopped)
            if writers[0] is not None:
                writers[0].refresh(state.metrics, final=True)
            break
    interrupt.disarm()
    logger.close()
    return throughput, stopped


def log_training_line(
    cfg: Any, model: nn.Module, device: torch.device, precision: Precision, ddp: Distributed
) -> None:
    batch = f"batch {cfg.batch_size}"
    if ddp.enabled:
        batch = (
            f"DDP over {ddp.world_size} processes: batch {cfg.batch_size} per process, "
            f"{cfg.batch_size * ddp.world_size} effective"
        )
    if cfg.accumulate_steps > 1:
        effective = cfg.batch_size * ddp.world_size * cfg.accumulate_steps
        batch += f", {cfg.accumulate_steps} batches per optimizer step: {effective} effective"
    log.info(
        f"training {cfg.model.name} ({count_params(model):,} params) on {device} "
        f"({precision.value}, {torch.get_num_threads()} threads) for {cfg.epochs} epochs, {batch}"
    )
