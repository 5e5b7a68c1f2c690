"""`cnnbench train`: validate the overrides, then hand over to Hydra, which runs the recipe.

    cnnbench train model=alexnet_cifar dataset=cifar10 transforms=cifar epochs=10

The recipe itself is cnnbench/train.py; this module only parses, checks and dispatches.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .. import distributed, interrupt
from ..config import compose_checked
from ..errors import CnnbenchError, out_of_memory_hint, user_errors
from ..runs import (
    PRIMARY_NAME,
    check_writable,
    latest_matching_run,
    planned_run_dir,
    primary_from_saved,
    quote,
    remember_saved_config,
    saved_config_guard,
    split_override,
)
from ..sweep import (
    check_plugins,
    check_sweep,
    fix_sweep_dir,
    is_multirun,
    report_failures,
    run_sweep_job,
)
from ..train import train
from .args import check_train_args


@hydra.main(version_base=None, config_path="pkg://cnnbench.configs", config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra entrypoint behind `cnnbench train`; returns the best val loss (a sweeper's objective)."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if HydraConfig.get().mode == RunMode.MULTIRUN:  # a failing job is recorded, the sweep goes on
        return run_sweep_job(train, cfg, out_dir)
    oom_hint = out_of_memory_hint(cfg.batch_size, out_dir)
    with user_errors(), saved_config_guard(), interrupt.graceful_stop(), oom_hint:
        return train(cfg, out_dir)["best_val_loss"]


def hydra_args(args: list[str]) -> list[str]:
    """Check `cnnbench train` overrides up front and turn `resume=` into Hydra arguments.

    resume=RUN_DIR (or auto) re-enters that run: its saved config is the primary config
    (plus any overrides, e.g. epochs=30) and its directory is the run dir.
    """
    resume, rest = split_override(args, "resume")
    check_plugins(args)
    if resume in (None, "", "null"):
        if is_multirun(args):  # each swept value composed once, before any job
            check_sweep(args)
            return fix_sweep_dir(args)
        elif not any(a.startswith("-") for a in args):  # not --help/--cfg: validate first
            compose_checked(args)
            check_writable(planned_run_dir(args))
        return args
    if any(a.startswith("-") for a in rest):
        raise CnnbenchError("resume= continues one run; it cannot be combined with -m or flags")
    if resume == "auto":
        run_dir = latest_matching_run(compose_checked(rest), Path("outputs"))
        rest = []  # its saved config equals these overrides (group picks included)
    else:
        run_dir = Path(resume).expanduser().resolve()
        if not run_dir.is_dir():
            raise CnnbenchError(f"resume={resume}: no such run directory")
    if not (run_dir / "last.pt").is_file():
        raise CnnbenchError(
            f"resume={resume}: no last.pt in {run_dir}, so there is nothing to resume"
        )
    config_dir = primary_from_saved(run_dir)
    overrides = [*rest, f"resume={quote(str(run_dir))}", f"hydra.run.dir={quote(str(run_dir))}"]
    compose_checked(overrides, config_name=PRIMARY_NAME, config_dir=str(config_dir))
    check_writable(run_dir)
    remember_saved_config(run_dir)  # put back if this resume fails before it saves
    return ["--config-dir", str(config_dir), "--config-name", PRIMARY_NAME, *overrides]


def run_cli(args: list[str]) -> None:
    """`cnnbench train ARGS`: validate, then hand over to Hydra (which reads sys.argv)."""
    check_train_args(args)  # `--epochs 3`, `+epochs=3`: name the override to use instead
    with user_errors():
        args = hydra_args(args)
        args = distributed.launch_args(args)  # torchrun: process group, one run dir
    sys.argv = ["cnnbench train", *args]
    try:
        main()
    finally:
        distributed.shutdown()
        if args[:1] == ["--config-dir"]:  # resume=: the primary config written for it
            shutil.rmtree(args[1], ignore_errors=True)
    report_failures()  # after a sweep: the failed jobs, and exit 1 if any
