"""CIFAR-10 time to a test accuracy with a cnnbench recipe (default: recipe=fast).

    python scripts/time_to_accuracy.py --data ~/.cache/cnnbench/cifar10-jpeg/cifar
    python scripts/time_to_accuracy.py --tar ../shared/data/cifar10-jpeg.tar.gz --target 0.85
    python scripts/time_to_accuracy.py epochs=10 optimizer.lr=0.2    # recipe overrides

The config is composed exactly as `cnnbench train recipe=fast ...` would compose it; the run
then goes through cnnbench's public functions (create_model, build_transforms, TensorLoader,
train_one_epoch, evaluate, build_optimizer/build_scheduler, resolve_precision). Like airbench,
it trains on all 50,000 training images and evaluates the 10,000 test images after every
epoch; "time" is the training time up to the first epoch whose test accuracy reaches the
target (evaluation, data decoding and the precision probe are reported separately).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tarfile
import time
from pathlib import Path

# As the cnnbench CLI does, before torch loads libgomp (both sides of a comparison get it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from imagecache import load_image_folder  # also puts the checkout on sys.path
from torch import nn

from cnnbench.config import compose_checked  # noqa: E402
from cnnbench.data import TensorLoader, build_transforms, channel_stats  # noqa: E402
from cnnbench.data.cache import cache_root  # noqa: E402
from cnnbench.device import (  # noqa: E402
    Workload,
    autocast_for,
    grad_scaler_for,
    resolve_device,
    resolve_precision,
)
from cnnbench.engine import evaluate, train_one_epoch  # noqa: E402
from cnnbench.models import count_params, create_model  # noqa: E402
from cnnbench.optim import build_optimizer, build_scheduler, is_per_step  # noqa: E402

SHARED_TAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.tar.gz"


def cifar_root(data: str | None, tar: str | None) -> Path:
    """The folder holding train/ and test/: --data, or --tar extracted once into the cache."""
    if data:
        return Path(data).expanduser()
    tar_path = Path(tar).expanduser() if tar else SHARED_TAR
    root = cache_root(None) / "cifar10-jpeg"
    if not (root / "cifar" / "train").is_dir():
        if not tar_path.is_file():
            raise SystemExit(f"error: no --data given and no archive at {tar_path} (use --tar)")
        print(f"extracting {tar_path} to {root}", file=sys.stderr)
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar_path) as archive:
            archive.extractall(root, filter="data")
    return root / "cifar"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", help="folder with train/<class>/*.jpg and test/<class>/*.jpg")
    ap.add_argument("--tar", help=f"CIFAR-10 JPEG archive (default {SHARED_TAR})")
    ap.add_argument("--recipe", default="fast", help="recipe to compose (default: fast)")
    ap.add_argument("--target", type=float, default=0.85, help="test accuracy to reach")
    ap.add_argument("--out", help="write the per-epoch record as JSON here")
    ap.add_argument("overrides", nargs="*", help="config overrides, as for cnnbench train")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    cfg = compose_checked([f"recipe={args.recipe}", *args.overrides])
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    root = cifar_root(args.data, args.tar)
    start = time.perf_counter()
    train, classes = load_image_folder(root / "train")
    test, _ = load_image_folder(root / "test")
    load_seconds = time.perf_counter() - start

    train_tf, eval_tf = build_transforms(cfg.transforms, channel_stats(train.images), 3)
    model = create_model(cfg.model.name, len(classes), 3).to(device)
    if cfg.device.channels_last:
        model = model.to(memory_format=torch.channels_last)
    start = time.perf_counter()
    workload = Workload(cfg.model.name, (3, 32, 32), cfg.batch_size, len(train) * cfg.epochs)
    precision = resolve_precision(cfg.device, device, model, workload)
    probe_seconds = time.perf_counter() - start
    net = torch.compile(model) if cfg.device.compile else model

    loader_args = dict(device=device, channels_last=cfg.device.channels_last)
    train_loader = TensorLoader(
        train, cfg.batch_size, train_tf, shuffle=True, seed=cfg.seed, **loader_args
    )
    test_loader = TensorLoader(
        test, cfg.eval_batch_size or 2 * cfg.batch_size, eval_tf, shuffle=False, **loader_args
    )
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.epochs, len(train_loader))
    step_scheduler = scheduler if is_per_step(scheduler) else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    autocast, scaler = autocast_for(precision, device), grad_scaler_for(precision, device)
    print(
        f"{cfg.model.name} ({count_params(model):,} params), {len(train)} train / {len(test)} "
        f"test images, {cfg.epochs} epochs, batch {cfg.batch_size}, {precision.value}, "
        f"{torch.get_num_threads()} threads; decode/load {load_seconds:.1f} s, precision "
        f"decision {probe_seconds:.1f} s",
        flush=True,
    )

    rows, train_seconds, train_cpu, reached = [], 0.0, 0.0, None
    cpu_start = time.process_time()
    for epoch in range(1, cfg.epochs + 1):
        train_loader.set_epoch(epoch)
        epoch_cpu = time.process_time()
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
            progress=cfg.progress,
        )
        if scheduler is not None and step_scheduler is None:
            scheduler.step()
        train_seconds += tr.seconds
        train_cpu += time.process_time() - epoch_cpu
        te = evaluate(net, test_loader, autocast=autocast, progress=cfg.progress, desc="[Test]")
        rows.append(
            dict(
                epoch=epoch,
                train_loss=tr.loss,
                train_acc=tr.top1,
                test_acc=te.top1,
                train_seconds=train_seconds,
                train_cpu_seconds=train_cpu,
                process_cpu_seconds=time.process_time() - cpu_start,
                eval_seconds=te.seconds,
                images_per_sec=tr.images / tr.seconds,
            )
        )
        print(
            f"epoch {epoch}: train loss {tr.loss:.4f} acc {tr.top1:.4f}, test acc {te.top1:.4f}, "
            f"{train_seconds:.0f} s training so far ({tr.images / tr.seconds:.0f} img/s; process "
            f"CPU time {rows[-1]['process_cpu_seconds']:.0f} s incl. eval)",
            flush=True,
        )
        if reached is None and te.top1 >= args.target:
            reached = (epoch, train_seconds, train_cpu)
    final = rows[-1]["test_acc"]
    if reached:
        print(
            f"reached {args.target:.0%} test accuracy at epoch {reached[0]} after "
            f"{reached[1]:.0f} s of training ({reached[1] / 60:.1f} min; {reached[2]:.0f} s of "
            f"process CPU time in training); final {final:.4f}"
        )
    else:
        print(f"did not reach {args.target:.0%} in {cfg.epochs} epochs; final {final:.4f}")
    if args.out:
        record = dict(
            recipe=args.recipe,
            overrides=args.overrides,
            precision=precision.value,
            threads=torch.get_num_threads(),
            params=count_params(model),
            target=args.target,
            reached_epoch=reached[0] if reached else None,
            seconds_to_target=reached[1] if reached else math.nan,
            train_cpu_seconds_to_target=reached[2] if reached else math.nan,
            final_test_acc=final,
            epochs=rows,
        )
        Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
