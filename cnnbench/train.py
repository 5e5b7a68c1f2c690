"""cnnbench train: the whole recipe, top to bottom.

    cnnbench train model=alexnet_cifar dataset=cifar10 transforms=cifar epochs=10

Hydra composes the config from configs/ (schemas in config.py) and gives the run its own
directory; everything this run produces is written there. Under torchrun the same recipe runs
in every process with DistributedDataParallel (distributed.py); rank 0 writes the run dir.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from . import distributed, interrupt
from .checkpoint import (
    atomic_write_text,
    load_checkpoint,
    restore_training_state,
    rng_state,
    save_checkpoint,
    unwrap,
)
from .config import check_values, register_configs
from .data import TensorLoader, build_transforms, load_dataset
from .device import Workload, autocast_for, grad_scaler_for, resolve_device, resolve_precision
from .engine import evaluate, train_one_epoch
from .loggers import NullLogger, open_logger
from .metrics import write_json, write_metrics_csv
from .models import apply_weights, check_input_size, count_params, create_model
from .models.summary import summary_table
from .optim import build_optimizer, build_scheduler, is_per_step, retarget_scheduler
from .plots import refresh_curves
from .sweep import (
    parallel_jobs,
)

log = logging.getLogger("cnnbench")
register_configs()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: DictConfig, out_dir: Path) -> dict:
    """Run the recipe `cfg` and write its artifacts to `out_dir`; returns results.json's data."""
    wall_start = time.perf_counter()
    check_values(cfg)
    ddp = distributed.current()  # rank 0 of 1 unless launched by torchrun
    main_rank = ddp.is_main  # the one process that prints and writes
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device, parallel_jobs())
    seed_everything(cfg.seed + ddp.rank)  # dropout differs per rank; DDP syncs the weights
    progress = cfg.progress and main_rank

    # ---- data: uint8 tensors (in memory, or streamed from a big folder), normalized with the
    # train split's statistics
    with ddp.main_first():  # rank 0 fills the decode cache, the others read it
        data = load_dataset(
            cfg.dataset, cfg.transforms, num_workers=cfg.num_workers, progress=progress
        )
    if data.skipped and main_rank:  # broken files found by the scan: listed with the run
        atomic_write_text(out_dir / "skipped_files.txt", data.skipped_text())
    train_tf, eval_tf = build_transforms(cfg.transforms, data.train_stats, data.input_size[0])
    channels = data.input_size[0]
    input_size = (channels, *train_tf.output_size(*data.input_size[1:]))
    log.info(
        f"dataset {cfg.dataset.name}: {len(data.train)} train / {len(data.val)} val / "
        f"{len(data.test)} test images, {data.num_classes} classes, model input "
        f"{'x'.join(map(str, input_size))}"
    )

    # ---- model: logits out; summary on the chosen device, at the real input size
    num_classes = cfg.model.num_classes or data.num_classes
    model = create_model(cfg.model.name, num_classes, cfg.model.in_channels or channels).to(device)
    check_input_size(cfg.model.name, model, input_size, device)
    apply_weights(model, cfg.model)  # model.weights=PATH (local file), model.freeze_features
    if main_rank:
        table = summary_table(model, input_size, device)
        print(table, flush=True)
        atomic_write_text(out_dir / "summary.txt", table)
    params = count_params(model)
    if cfg.device.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # auto: bf16 only where the hardware has it and (CPU) it measures faster on this model;
    # under DDP rank 0 decides for all.
    workload = Workload(cfg.model.name, input_size, cfg.batch_size, len(data.train) * cfg.epochs)
    precision = ddp.broadcast_object(
        resolve_precision(cfg.device, device, model, workload) if main_rank else None
    )
    # DDP: gradients averaged over the ranks in backward(); it starts from rank 0's weights.
    # Evaluation runs on the plain model (each rank on its part of the split).
    train_net: nn.Module = model
    if ddp.enabled:
        ids = [device.index] if device.type == "cuda" else None
        train_net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    net = torch.compile(train_net) if cfg.device.compile else train_net
    eval_net = net
    if ddp.enabled:
        eval_net = torch.compile(model) if cfg.device.compile else model

    # ---- optimization
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    eval_loss_fn = nn.CrossEntropyLoss()
    autocast = autocast_for(precision, device)
    scaler = grad_scaler_for(precision, device)

    eval_bs = cfg.eval_batch_size or 2 * cfg.batch_size
    loader_args = dict(
        device=device,
        channels_last=cfg.device.channels_last,
        rank=ddp.rank,
        world_size=ddp.world_size,
    )
    train_loader = TensorLoader(
        data.train, cfg.batch_size, train_tf, shuffle=True, seed=cfg.seed, **loader_args
    )
    val_loader = TensorLoader(data.val, eval_bs, eval_tf, shuffle=False, **loader_args)
    test_loader = TensorLoader(data.test, eval_bs, eval_tf, shuffle=False, **loader_args)
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.epochs, len(train_loader))
    step_scheduler = scheduler if is_per_step(scheduler) else None  # onecycle: every batch
    batch_text = f"batch {cfg.batch_size}"
    if ddp.enabled:
        batch_text = (
            f"DDP over {ddp.world_size} processes: batch {cfg.batch_size} per process, "
            f"{cfg.batch_size * ddp.world_size} effective"
        )
    log.info(
        f"training {cfg.model.name} ({params:,} params) on {device} ({precision.value}, "
        f"{torch.get_num_threads()} threads) for {cfg.epochs} epochs, {batch_text}"
    )

    # ---- the loop: train, validate, keep the best weights by validation loss
    best_path, last_path = out_dir / "best.pt", out_dir / "last.pt"
    best_val_loss, best_epoch, start_epoch = math.inf, 0, 1
    rows: list[dict] = []
    partial = None  # the state of an epoch stopped mid-way (Ctrl-C), to continue from

    def last_state(epochs_done: int, mid_epoch: dict | None = None) -> dict:
        """last.pt: all it takes to continue after `epochs_done` epochs (+ `mid_epoch` steps)."""
        return {
            "model": unwrap(model).state_dict(),
            "model_name": cfg.model.name,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epochs_done,
            "partial": mid_epoch,
            "best_val_loss": best_val_loss,
            "best_epoch": best_epoch,
            "metrics": rows,
            "rng": rng_state(),
        }

    if cfg.resume:  # continue from last.pt: weights, optimizer, scheduler, RNG, history
        state = load_checkpoint(last_path)
        restore_training_state(state, model, optimizer, scheduler, scaler, last_path)
        # resume=DIR epochs=N with N other than the run's: the schedule ends at the new end
        retargeted = retarget_scheduler(scheduler, cfg.epochs, len(train_loader))
        start_epoch, partial = state["epoch"] + 1, state.get("partial")
        if partial is not None and partial.get("world", 1) != ddp.world_size:
            log.warning(
                f"last.pt was saved {partial['step']} steps into epoch {start_epoch} by "
                f"{partial.get('world', 1)} process(es); with {ddp.world_size} the batches "
                "differ, so that epoch starts over (from the weights saved mid-epoch)"
            )
            partial = None
        best_val_loss, best_epoch, rows = (
            state["best_val_loss"],
            state["best_epoch"],
            state["metrics"],
        )
        log.info(
            f"resuming {out_dir} after epoch {state['epoch']}"
            + (f" and {partial['step']} steps of epoch {start_epoch}" if partial else "")
            + f" (best val_loss {best_val_loss:.5f})"
        )
        if retargeted:
            log.warning(retargeted)
    train_images, train_seconds = 0, 0.0
    interrupt.set_quiet(not main_rank)
    interrupt.arm()  # Ctrl-C/SIGTERM from here on: finish the step, save last.pt, exit
    # logger=tensorboard: RUN_DIR/tb
    metric_logger = open_logger(cfg.logger, out_dir) if main_rank else NullLogger()
    for epoch in range(start_epoch, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loader.set_epoch(epoch)
        tr = train_one_epoch(
            net,
            train_loader,
            optimizer,
            loss_fn,
            epoch=epoch,
            autocast=autocast,
            scaler=scaler,
            step_scheduler=step_scheduler,
            log_interval=cfg.log_interval,
            progress=progress,
            stop=interrupt.requested,
            resume_from=partial,
            dist=ddp,
        )
        partial = None
        if tr.partial is not None:  # stopped mid-epoch: save this point and exit
            if main_rank:
                save_checkpoint(last_state(epoch - 1, tr.partial), last_path)
            ddp.barrier()  # no rank exits (and gets the others killed) before it is saved
            interrupt.exit_for_resume(out_dir, f"in epoch {epoch} after step {tr.partial['step']}")
        train_images += tr.images
        train_seconds += tr.seconds
        va = evaluate(
            eval_net, val_loader, eval_loss_fn, autocast=autocast, progress=progress, dist=ddp
        )
        if scheduler is not None and step_scheduler is None:
            scheduler.step()
        rows.append(
            dict(
                epoch=epoch,
                train_loss=tr.loss,
                train_acc=tr.top1,
                val_loss=va.loss,
                val_acc=va.top1,
                lr=lr,
                seconds=time.perf_counter() - epoch_start,
            )
        )
        if main_rank:
            write_metrics_csv(out_dir / "metrics.csv", rows)
            refresh_curves(out_dir / "curves.png", rows, final=epoch == cfg.epochs)
        metric_logger.log(rows[-1])
        log.info(
            f"epoch {epoch}/{cfg.epochs}  [Training] loss: {tr.loss:.5f}, accuracy: {tr.top1:.5f}  "
            f"[Validation] loss: {va.loss:.5f}, accuracy: {va.top1:.5f}  "
            f"({tr.images / tr.seconds:,.0f} img/s)"
        )
        if va.loss < best_val_loss:
            log.info(
                f"[INFO] val_loss has been improved from {best_val_loss:.5f} to {va.loss:.5f}. "
                "Saving Model!"
            )
            best_val_loss, best_epoch = va.loss, epoch
            if main_rank:
                save_checkpoint(
                    {
                        "model": unwrap(model).state_dict(),
                        "model_name": cfg.model.name,
                        "num_classes": num_classes,
                        "input_size": list(input_size),
                        "classes": data.classes,
                        "mean": eval_tf.mean,  # normalization, for `cnnbench predict`
                        "std": eval_tf.std,
                        "epoch": epoch,
                        "val_loss": va.loss,
                    },
                    best_path,
                )
        if main_rank:
            save_checkpoint(last_state(epoch), last_path)
        if ddp.any(interrupt.requested()):
            ddp.barrier()
            interrupt.exit_for_resume(out_dir, f"after epoch {epoch}")
    interrupt.disarm()
    metric_logger.close()

    # ---- test: reload the best weights, evaluate with the eval transform
    if main_rank:
        model.load_state_dict(load_checkpoint(best_path)["model"])
    ddp.broadcast_state(model)  # DDP: rank 0's best.pt, without a shared file system
    te = evaluate(
        eval_net,
        test_loader,
        eval_loss_fn,
        autocast=autocast,
        progress=progress,
        desc="[Test]",
        dist=ddp,
    )
    results = dict(
        test_loss=te.loss,
        test_top1=te.top1,
        test_top5=te.top5,
        best_epoch=best_epoch,
        best_val_loss=best_val_loss,
        epochs=cfg.epochs,
        wall_seconds=time.perf_counter() - wall_start,
        train_images_per_sec=train_images / train_seconds if train_seconds > 0 else 0.0,
        params=params,
        model=cfg.model.name,
        dataset=cfg.dataset.name,
        device=str(device),
        precision=precision.value,
        world_size=ddp.world_size,
        effective_batch_size=cfg.batch_size * ddp.world_size,
        classes=data.classes,
    )
    if main_rank:
        write_json(out_dir / "results.json", results)
    log.info(
        f"test (best epoch {best_epoch}): loss {te.loss:.4f}, top-1 {te.top1:.4f}, "
        f"top-5 {te.top5:.4f}; run dir: {out_dir}"
    )
    return results
