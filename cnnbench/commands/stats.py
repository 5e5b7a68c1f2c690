"""cnnbench stats: per-channel mean/std of a dataset's training split.

    cnnbench stats dataset=cifar10
    cnnbench stats dataset=folder dataset.root=~/pets

The numbers are what `transforms.normalize=auto` uses (cached per dataset); the command prints
them with the overrides that pin them explicitly.
"""

from __future__ import annotations

import logging
import sys
import time

from ..config import check_values, compose_checked
from ..data import DataSplits, load_dataset
from ..errors import user_errors
from ..train import dataset_config
from .args import add_overrides, command_parser, parse_command

log = logging.getLogger("cnnbench")

USAGE = "cnnbench stats [dataset=NAME] [overrides...]"
DESCRIPTION = """
Per-channel mean/std of a dataset's training split: what `transforms.normalize=auto` uses
(cached per dataset), printed with the overrides that pin them explicitly.
"""
EXAMPLES = (
    "cnnbench stats dataset=cifar10",
    "cnnbench stats dataset=folder dataset.root=~/pets",
)


def load_for_command(args: list[str]) -> tuple[object, DataSplits]:
    """Compose `args` like `cnnbench train` would and load (and split) the dataset."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cfg = compose_checked(args)
    check_values(cfg)
    data = load_dataset(  # stored at the size training would store it (dataset_config)
        dataset_config(cfg), cfg.transforms, num_workers=cfg.num_workers, progress=cfg.progress
    )
    return cfg, data


def format_stats(mean: list[float], std: list[float]) -> str:
    values = ",".join(f"{m:.4f}" for m in mean), ",".join(f"{s:.4f}" for s in std)
    return (
        f"mean: {' '.join(f'{m:.4f}' for m in mean)}\n"
        f"std:  {' '.join(f'{s:.4f}' for s in std)}\n"
        f"pin them with: transforms.mean=[{values[0]}] transforms.std=[{values[1]}]\n"
    )


def run_cli(args: list[str]) -> None:
    """`cnnbench stats [overrides...]`: print the train split's per-channel mean and std."""
    parser = command_parser("stats", USAGE, DESCRIPTION, EXAMPLES)
    add_overrides(parser, "overrides as `cnnbench train` takes them (dataset=NAME, ...)")
    overrides = parse_command(parser, args).overrides
    with user_errors():
        start = time.perf_counter()
        cfg, data = load_for_command(overrides)
        mean, std = data.train_stats()
        c, h, w = data.input_size
        print(
            f"dataset {cfg.dataset.name}: {len(data.train):,} training images ({c}x{h}x{w}), "
            f"{data.num_classes} classes, {len(data.skipped)} files skipped, "
            f"{time.perf_counter() - start:.1f} s"
        )
        print(format_stats(mean, std), end="")
