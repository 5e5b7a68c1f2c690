"""CIFAR-10 time to a test accuracy with a cnnbench recipe (default: recipe=fast).

    python scripts/time_to_accuracy.py --data ~/.cache/cnnbench/cifar10-jpeg/cifar
    python scripts/time_to_accuracy.py --tar ../shared/data/cifar10-jpeg.tar.gz --target 0.85
    python scripts/time_to_accuracy.py epochs=10 optimizer.lr=0.2    # recipe overrides

The config is composed exactly as `cnnbench train recipe=fast ...` would compose it; the run
then goes through the recipe's own stages (cnnbench/train.py: build_model, choose_precision,
build_loaders, build_training, run_epoch) on the JPEG folder's splits. Like airbench,
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

from cnnbench.config import compose_checked  # noqa: E402
from cnnbench.data import DataSplits, build_transforms, channel_stats  # noqa: E402
from cnnbench.data.cache import cache_root  # noqa: E402
from cnnbench.device import resolve_device  # noqa: E402
from cnnbench.distributed import Distributed  # noqa: E402
from cnnbench.engine import evaluate  # noqa: E402
from cnnbench.models import count_params  # noqa: E402
from cnnbench.optim import step_after_epoch  # noqa: E402
from cnnbench.train import (  # noqa: E402
    Data,
    build_loaders,
    build_model,
    build_training,
    choose_precision,
    class_weights,
    run_epoch,
    seed_everything,
    train_step,
    wrap_model,
)

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
    ddp = Distributed()
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    root = cifar_root(args.data, args.tar)
    start = time.perf_counter()
    train, classes = load_image_folder(root / "train")
    test, _ = load_image_folder(root / "test")
    load_seconds = time.perf_counter() - start

    # The recipe's own stages, on these splits: all 50,000 training images, the test set
    # evaluated after every epoch (as airbench does).
    stats = channel_stats(train.images)
    train_tf, eval_tf = build_transforms(cfg.transforms, stats, 3, len(classes))
    splits = DataSplits(train=train, val=test, test=test, classes=classes)
    data = Data(splits, train_tf, eval_tf, (3, *train_tf.output_size(32, 32)), len(classes))
    model = build_model(cfg, data.input_size, data.num_classes, device)
    start = time.perf_counter()
    precision = choose_precision(cfg, device, model, data, ddp)
    probe_seconds = time.perf_counter() - start
    loaders = build_loaders(cfg, data, device, ddp)
    state = build_training(cfg, model, precision, device, len(loaders.train))
    kept = state.ema.module if state.ema is not None else model  # ema.decay: the EMA is tested
    net, eval_net = wrap_model(model, cfg, device, ddp, kept)
    step = train_step(cfg, state, precision, device, class_weights(cfg, data))
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
        epoch_cpu = time.process_time()
        tr, _ = run_epoch(net, loaders.train, step, state, cfg, ddp, f"[Training] epoch {epoch}")
        state.epoch = epoch
        train_seconds += tr.seconds
        train_cpu += time.process_time() - epoch_cpu
        te = evaluate(
            eval_net, loaders.test, autocast=step.autocast, progress=cfg.progress, desc="[Test]"
        )
        step_after_epoch(state.scheduler, te.loss)  # per-epoch schedules (plateau: this loss)
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
