"""cnnbench rerun: train a saved run's config again, into a new run directory.

    cnnbench rerun outputs/2026-11-23/12-00-00 [overrides...] [-m sweep overrides...]

The run's `.hydra/config.yaml` holds the whole composed config, so it is re-executed as is
(plus overrides) from any working directory and with any installed copy of cnnbench; the
same seed on CPU reproduces the metrics. Output goes where `cnnbench train` would put it
(outputs/DATE/TIME, or hydra.run.dir=PATH).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ..config import check_values, compose_checked
from ..errors import CnnbenchError, user_errors
from ..runs import (
    PRIMARY_NAME,
    RunLock,
    claim_run_dir,
    pin_run_dir,
    planned_hydra,
    primary_from_saved,
    removed_on_error,
    saved_config,
    split_override,
)
from ..sweep import (
    Sweep,
    check_sweep,
    fix_sweep_dir,
    is_multirun,
    report_sweep,
    sweep_running,
)
from .args import add_overrides, command_parser, parse_command, run_dir_arg

USAGE = "cnnbench rerun RUN_DIR [overrides...] [-m]"
DESCRIPTION = """
Re-executes RUN_DIR/.hydra/config.yaml (plus overrides, e.g. seed=1 epochs=5) into a new
run dir: outputs/DATE/TIME, or hydra.run.dir=PATH. With -m the overrides sweep around it.
To continue the same run instead, use: cnnbench train resume=RUN_DIR
"""
EXAMPLES = (
    "cnnbench rerun outputs/2026-11-23/12-00-00",
    "cnnbench rerun outputs/2026-11-23/12-00-00 seed=1 optimizer=sgd hydra.run.dir=runs/seed1",
    "cnnbench rerun outputs/2026-11-23/12-00-00 -m seed=1,2,3",
)


def hydra_args(
    run_dir: Path, overrides: list[str]
) -> tuple[list[str], Sweep | None, RunLock | None]:
    """Check `overrides` on the saved config; the arguments that make Hydra run it, the
    sweep they start (with -m), and the lock on the new run's directory (without)."""
    resume, _ = split_override(overrides, "resume")
    if resume is not None:
        raise CnnbenchError(
            "rerun starts a new run; to continue this one use `cnnbench train resume=RUN_DIR`"
        )
    saved_config(run_dir)  # a clear error when RUN_DIR is not a run
    config_dir = str(
        primary_from_saved(run_dir, clear=("resume",), anchor_paths=True, overrides=overrides)
    )
    sweep, lock = None, None
    with removed_on_error(config_dir):
        if is_multirun(overrides):
            check_sweep(overrides, config_name=PRIMARY_NAME, config_dir=config_dir)
            overrides, sweep = fix_sweep_dir(overrides, PRIMARY_NAME, config_dir)
        else:  # the new run's dir: never one that holds a run (RUN_DIR itself included)
            check_values(
                compose_checked(overrides, config_name=PRIMARY_NAME, config_dir=config_dir)
            )
            new_dir = Path(str(planned_hydra(overrides, PRIMARY_NAME, config_dir).run.dir))
            lock = claim_run_dir(new_dir)
            overrides = pin_run_dir(overrides, new_dir)
    argv = ["--config-dir", config_dir, "--config-name", PRIMARY_NAME, *overrides]
    return argv, sweep, lock


def run_cli(args: list[str]) -> None:
    parser = command_parser("rerun", USAGE, DESCRIPTION, EXAMPLES)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run dir (outputs/DATE/TIME)")
    add_overrides(parser, "overrides of the saved config (seed=1, hydra.run.dir=PATH, ...)")
    parser.add_argument(
        "-m", "--multirun", action="store_true", help="sweep: one job per comma-separated value"
    )
    opts = parse_command(parser, args)
    run_dir = run_dir_arg(parser, opts.run_dir).resolve()
    overrides = ["-m", *opts.overrides] if opts.multirun else opts.overrides
    with user_errors():
        argv, sweep, lock = hydra_args(run_dir, overrides)
    from . import train  # Hydra's entrypoint (imports torch and the recipe)

    sys.argv = ["cnnbench rerun", *argv]
    try:
        with sweep_running(sweep):
            train.main()
    finally:
        shutil.rmtree(argv[1], ignore_errors=True)  # the generated primary config
        if lock is not None:
            lock.release()
    report_sweep(sweep)
