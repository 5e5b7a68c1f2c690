"""`cnnbench train`: validate the overrides, then hand over to Hydra, which runs the recipe.

    cnnbench train model=alexnet_cifar dataset=cifar10 transforms=cifar epochs=10

The recipe itself is cnnbench/train.py; this module only parses, checks and dispatches.
"""

from __future__ import annotations

import os
import shutil
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .. import interrupt
from ..config import check_values, compose_checked, register_configs
from ..errors import CnnbenchError, out_of_memory_hint, user_errors
from ..runs import (
    PRIMARY_NAME,
    RunLock,
    SavedConfig,
    check_resume,
    claim_run_dir,
    latest_matching_run,
    overridden_groups,
    path_overrides,
    pin_run_dir,
    planned_run_dir,
    primary_from_saved,
    quote,
    record_session,
    remember_saved_config,
    removed_on_error,
    saved_config_guard,
    split_override,
)
from ..sweep import (
    Sweep,
    check_plugins,
    check_sweep,
    failure_recorded,
    first_job_cfg,
    fix_sweep_dir,
    is_multirun,
    report_sweep,
    run_sweep_job,
    sweep_running,
)
from .args import check_train_args
from .train_help import help_text, wants_help

WORKER_LOGGING = "hydra/job_logging=cnnbench_worker"  # DDP ranks > 0: warnings only, no train.log


@hydra.main(version_base=None, config_path="pkg://cnnbench.configs", config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra entrypoint behind `cnnbench train`; returns the best val loss (a sweeper's objective)."""
    from ..train import train  # torch: only once a run starts (not for --help, errors, --cfg)

    hc = HydraConfig.get()
    out_dir, writer = Path(hc.runtime.output_dir), hc.output_subdir is not None  # DDP rank 0
    if writer:  # .hydra/: keep each session's overrides (resume)
        record_session(out_dir, hc.overrides.task)
    if hc.mode == RunMode.MULTIRUN:  # a failing job is recorded, the sweep goes on
        return run_sweep_job(train, cfg, out_dir)
    oom_hint = out_of_memory_hint(cfg.batch_size, out_dir)
    # A failed run gets error.txt, as a failed sweep job does.
    failure = failure_recorded(out_dir, bool(cfg.resume)) if writer else nullcontext()
    with user_errors(), failure, interrupt.graceful_stop(), oom_hint:
        return train(cfg, out_dir)["best_val_loss"]


@dataclass
class Launch:
    """What `cnnbench train ARGS` hands to Hydra, and what to do around it."""

    args: list[str]  # Hydra's command line
    sweep: Sweep | None = None  # -m: where the jobs go (failures reported afterwards)
    saved: SavedConfig | None = None  # resume=: the run's config, put back if the resume fails
    config_dir: str | None = None  # resume=: the generated primary config (removed afterwards)
    run_dir: Path | None = None  # a single run's directory, fixed before Hydra starts
    lock: RunLock | None = None  # held on the run (or sweep) dir while this process writes it


def hydra_args(args: list[str]) -> Launch:
    """Check `cnnbench train` overrides up front and turn `resume=` into Hydra arguments.

    resume=RUN_DIR (or auto) re-enters that run: its saved config is the primary config
    (plus any overrides, e.g. epochs=30) and its directory is the run dir. A new run's
    directory must not hold a run; either is locked against other cnnbench processes.
    """
    resume, rest = split_override(args, "resume")
    check_plugins(args)
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun rank 0 claims the run dir
    if resume in (None, "", "null"):
        if is_multirun(args):  # each swept value composed once, before any job
            if first_job_cfg(args) is not None:  # -m --cfg job: the first job's config
                return Launch(first_job_cfg(args))
            check_sweep(args)
            return Launch(*fix_sweep_dir(args))
        elif not any(a.startswith("-") for a in args):  # not --help/--cfg: validate first
            check_values(compose_checked(args))
            run_dir = planned_run_dir(args)
            lock = claim_run_dir(run_dir) if main_rank else None
            return Launch(pin_run_dir(args, run_dir), run_dir=run_dir, lock=lock)
        return Launch(args)
    if any(a.startswith("-") for a in rest):
        raise CnnbenchError("resume= continues one run; it cannot be combined with -m or flags")
    if resume == "auto":
        run_dir = latest_matching_run(compose_checked(rest), Path("outputs"))
        rest = [a for a in rest if a.startswith("epochs=")]  # the rest is its saved config
    else:
        run_dir = Path(resume).expanduser().resolve()
        if not run_dir.is_dir():
            raise CnnbenchError(f"resume={resume}: no such run directory")
    if not (run_dir / "last.pt").is_file():
        raise CnnbenchError(
            f"resume={resume}: no last.pt in {run_dir}, so there is nothing to resume"
        )
    switched = overridden_groups(rest)
    if switched:
        raise CnnbenchError(
            f"cannot switch {switched[0]}= when continuing a saved run (resume keeps the run's "
            "own choices); override single keys such as epochs=30, or start a new run with "
            f"{switched[0]}=..."
        )
    config_dir = str(primary_from_saved(run_dir))
    overrides = [*rest, f"resume={quote(str(run_dir))}", f"hydra.run.dir={quote(str(run_dir))}"]
    with removed_on_error(config_dir):
        cfg = compose_checked(overrides, config_name=PRIMARY_NAME, config_dir=config_dir)
        check_values(cfg)
        check_resume(run_dir, cfg, rest)
        lock = claim_run_dir(run_dir, fresh=False) if main_rank else None
    return Launch(
        ["--config-dir", config_dir, "--config-name", PRIMARY_NAME, *overrides],
        saved=remember_saved_config(run_dir),  # put back if this resume fails before it saves
        config_dir=config_dir,
        run_dir=run_dir,
        lock=lock,
    )


def distributed_args(launch: Launch) -> Launch:
    """Under torchrun: start the process group; every rank uses the run dir rank 0 chose,
    and only rank 0 writes it. Without torchrun `launch` is returned unchanged."""
    if not under_torchrun():
        return launch
    from .. import distributed

    if distributed.from_env().enabled and launch.sweep is not None:
        raise CnnbenchError(
            "cnnbench train -m does not run under torchrun: start one torchrun per run "
            "(README, Scaling out)"
        )
    env = distributed.setup()
    if not env.enabled:
        return launch
    args = launch.args
    extra: list[str] = []
    if launch.run_dir is not None:  # rank 0's run dir (its clock names a new one) for all
        run_dir = env.broadcast_object(str(launch.run_dir) if env.is_main else None)
        args = [a for a in args if not a.startswith("hydra.run.dir=")]
        extra.append(f"hydra.run.dir={quote(run_dir)}")
    if not env.is_main:
        extra += ["hydra.output_subdir=null", WORKER_LOGGING]
        launch.saved = None  # a failed resume is put back by rank 0 only
    launch.args = [*args, *extra]
    return launch


def under_torchrun() -> bool:
    """torchrun sets WORLD_SIZE; without it torch.distributed (and torch) need not load."""
    return "WORLD_SIZE" in os.environ


def run_cli(args: list[str]) -> None:
    """`cnnbench train ARGS`: validate, then hand over to Hydra (which reads sys.argv)."""
    check_train_args(args)  # `--epochs 3`, `+epochs=3`: name the override to use instead
    args = path_overrides(args)  # dataset.root=~/pets: expanded, quoted for Hydra
    if wants_help(args):  # Hydra's app_help takes ~1 s of CPU; this page, one composition
        with user_errors():
            print(help_text(args), end="")
        return
    with user_errors():
        launch = distributed_args(hydra_args(args))
    sys.argv = ["cnnbench train", *launch.args]
    register_configs()  # the schemas train.yaml's defaults name
    finished = False
    try:
        with saved_config_guard(launch.saved), sweep_running(launch.sweep):
            main()
        finished = True
    finally:
        if under_torchrun():
            from .. import distributed

            distributed.shutdown(finished)
        if launch.config_dir:  # resume=: the primary config written for it
            shutil.rmtree(launch.config_dir, ignore_errors=True)
        if launch.lock is not None:
            launch.lock.release()
    report_sweep(launch.sweep)  # after a sweep: where it is; the failed jobs, exit 1 if any
