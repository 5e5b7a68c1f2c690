"""Sweeps (`cnnbench train -m ...`): check the swept values up front, survive failing jobs.

Hydra's basic launcher runs the jobs one after another in this process; `hydra/launcher=joblib`
runs them in parallel worker processes, `hydra/launcher=slurm` as SLURM jobs. A job that fails
is recorded in its directory (`error.txt`) and on screen, and the sweep goes on; a typo in a
swept value stops the sweep before the first job. The sweep directory is fixed before launch,
so the failed jobs are found there afterwards whichever launcher ran them.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import check_values, compose_checked, composition_error
from .errors import CnnbenchError

log = logging.getLogger("cnnbench")

MULTIRUN_FLAGS = ("-m", "--multirun")
ERROR_FILE = "error.txt"


def is_multirun(args: list[str]) -> bool:
    return any(a in MULTIRUN_FLAGS for a in args)


# (group, option) -> (plugin module, pip extra); None matches every option but "basic".
PLUGINS: dict[tuple[str, str | None], tuple[str, str]] = {
    ("hydra/sweeper", None): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
    ("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "joblib"),
    ("hydra/launcher", "slurm"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/launcher", "submitit_slurm"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
    ("hydra/launcher", "submitit_local"): ("hydra_plugins.hydra_submitit_launcher", "slurm"),
}


def importable(module: str) -> bool:
    """True when `module` can be imported (its parent packages included)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (hydra_plugins) is missing
        return False


def check_plugins(args: list[str]) -> None:
    """One clear error when a sweeper or launcher is picked whose Hydra plugin is absent."""
    for arg in args:
        group, _, option = arg.partition("=")
        option = option.strip()
        if not option or option == "basic":
            continue
        plugin = PLUGINS.get((group, option)) or PLUGINS.get((group, None))
        if plugin and not importable(plugin[0]):
            raise CnnbenchError(
                f"{arg} needs a Hydra plugin that is not installed: "
                f"pip install 'cnnbench[{plugin[1]}]'"
            )


def check_sweep(
    args: list[str], config_name: str = "train", config_dir: str | None = None
) -> list[str]:
    """Compose each value of each swept key once (the others at their first value); returns
    the first job's overrides.

    Raises one CnnbenchError naming the first bad value. Sweeps a sweeper plugin expands
    itself (interval(), glob()) are left to it. Flags other than -m (--cfg, --help, ...) are
    Hydra's: nothing is checked then.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType
    from hydra.errors import HydraException

    overrides = [a for a in args if a not in MULTIRUN_FLAGS]
    if any(a.startswith("-") for a in overrides):
        return overrides
    check_plugins(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise composition_error(err, overrides) from err
    choices: list[list[str]] = []  # one list of `key=value` strings per override
    for override in parsed:
        if not override.is_sweep_override():
            choices.append([override.input_line])
        elif override.is_discrete_sweep() and override.value_type != ValueType.GLOB_CHOICE_SWEEP:
            key = override.get_key_element()
            values = [f"{key}={v}" for v in override.sweep_string_iterator()]
            if not values:
                raise CnnbenchError(f"sweep {override.input_line!r} has no values")
            choices.append(values)
        else:  # glob(), interval(), ...: expanded by the sweeper itself
            choices.append([])
    base = [values[0] for values in choices if values]

    def compose_one(selection: list[str], what: str) -> None:
        try:
            check_values(compose_checked(selection, config_name, config_dir))
        except CnnbenchError as err:
            raise CnnbenchError(f"{what}: {err} (no job was started)") from None

    compose_one(base, "sweep")
    position = 0  # index of this override's value in `base`
    for values in choices:
        for value in values[1:]:
            selection = list(base)
            selection[position] = value
            compose_one(selection, f"sweep value {value!r}")
        position += 1 if values else 0
    return base


CFG_FLAGS = {"--cfg": 1, "-c": 1, "--package": 1, "-p": 1, "--resolve": 0}  # flag: values


def first_job_cfg(args: list[str]) -> list[str] | None:
    """`-m ... --cfg job` (which Hydra refuses): check the whole sweep, then Hydra's
    arguments that print the first job's config. None without --cfg/-c."""
    if not any(a in ("--cfg", "-c") for a in args):
        return None
    flags, rest, i = [], [], 0
    while i < len(args):
        width = CFG_FLAGS.get(args[i], -1) + 1
        (flags if width else rest).extend(args[i : i + max(width, 1)])
        i += max(width, 1)
    return [*check_sweep(rest), *flags]


@dataclass(frozen=True)
class Sweep:
    """A sweep this process launches: where its jobs write, and since when."""

    sweep_dir: Path
    started: float = field(default_factory=time.time)
    lock: Any = field(default=None, compare=False)  # runs.RunLock on sweep_dir, held throughout


def fix_sweep_dir(
    args: list[str], config_name: str = "train", config_dir: str | None = None
) -> tuple[list[str], Sweep | None]:
    """`args` plus hydra.sweep.dir=DIR, resolved now (its ${now:...} included), and the sweep.

    Jobs run by a launcher in other processes or on other machines then write where this
    process will look for their error.txt files (report_sweep). No sweep for --cfg,
    --help and other flags: Hydra prints and launches nothing.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .runs import claim_sweep_dir, planned_hydra, quote, split_override

    started = time.time()
    given, _ = split_override(args, "hydra.sweep.dir")
    if any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in args):
        return args, None
    if given:  # an earlier sweep's runs there are never written over
        sweep_dir = Path(given).expanduser()
        return args, Sweep(sweep_dir, started, claim_sweep_dir(sweep_dir))
    # Only the plain (not swept) overrides can be composed; the sweep dir depends on no other.
    plain = [
        o.input_line
        for o in OverridesParser.create().parse_overrides(
            [a for a in args if a not in MULTIRUN_FLAGS]
        )
        if not o.is_sweep_override()
    ]
    sweep_dir = Path(str(planned_hydra(plain, config_name, config_dir).sweep.dir))
    pinned = [*args, f"hydra.sweep.dir={quote(str(sweep_dir))}"]
    return pinned, Sweep(sweep_dir, started, claim_sweep_dir(sweep_dir))


def parallel_jobs() -> int:
    """How many jobs of the running sweep share this machine at once (joblib's n_jobs)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .device import cpu_count

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return 1
    launcher = HydraConfig.get().launcher
    if not str(launcher.get("_target_", "")).endswith("JoblibLauncher"):
        return 1
    n = int(launcher.get("n_jobs") or 1)
    return max(1, n if n > 0 else cpu_count() + 1 + n)  # joblib: -1 = every core


def _failed_objective(hydra_cfg: Any) -> float:
    """The worst value for the sweeper's direction: a failed trial ranks last, the study goes on.

    (NaN would mark it failed, but hydra-optuna-sweeper with optuna 2.x then stops the study.)
    """
    from omegaconf import OmegaConf

    direction = OmegaConf.select(hydra_cfg, "sweeper.direction", default="minimize")
    return -math.inf if str(direction).endswith("maximize") else math.inf


def write_failure(out_dir: Path, err: Exception) -> str:
    """`error.txt` in a failed run's dir: the message (and a traceback for a crash, not for
    a CnnbenchError); returns the message. `cnnbench report` shows the run as failed."""
    from .checkpoint import atomic_write_text

    if isinstance(err, CnnbenchError):
        message, detail = str(err), ""
    else:
        message, detail = f"{err.__class__.__name__}: {err}", "\n" + traceback.format_exc()
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / ERROR_FILE, message + "\n" + detail)
    return message


@contextmanager
def failure_recorded(out_dir: Path, resumed: bool) -> Iterator[None]:
    """A run outside a sweep records its failure as a sweep job does (`write_failure`).

    A resume that fails before it changed last.pt (refused, or the wrong model) leaves the
    run's record as it was; one that trained replaces an older error.txt (and removes it
    when stopped with Ctrl-C, or finished: the run is resumable or done, not failed).
    """
    from .runs import _last_pt_stamp

    before = _last_pt_stamp(out_dir)
    try:
        yield
    except BaseException as err:
        changed = _last_pt_stamp(out_dir) != before
        if changed:
            (out_dir / ERROR_FILE).unlink(missing_ok=True)
        if isinstance(err, Exception) and (changed or not resumed):
            write_failure(out_dir, err)
        raise
    (out_dir / ERROR_FILE).unlink(missing_ok=True)


def run_sweep_job(train_fn: Callable[[Any, Path], dict], cfg: Any, out_dir: Path) -> float:
    """Run one sweep job; on failure write `error.txt`, log one line and return +-inf.

    Returns the job's best validation loss: the objective a sweeper plugin (Optuna)
    minimizes.
    """
    from hydra.core.hydra_config import HydraConfig

    from .runs import lock_dir

    hc = HydraConfig.get()
    try:
        lock = lock_dir(out_dir)  # another process writes this job's dir: leave it alone
        lock.stamp()
    except CnnbenchError as err:
        log.error(f"job #{hc.job.num} not run (the sweep goes on): {err}")
        return _failed_objective(hc)
    try:
        return float(train_fn(cfg, out_dir)["best_val_loss"])
    except Exception as err:
        message = write_failure(out_dir, err)
        log.error(f"job #{hc.job.num} failed (the sweep goes on): {message}")
        return _failed_objective(hc)
    finally:
        lock.release()


@contextmanager
def sweep_running(sweep: Sweep | None) -> Iterator[None]:
    """Around a sweep's jobs: when Ctrl-C/SIGTERM stops it (exit 130/143), say which jobs
    finished, which was stopped and how to resume it; at the end unlock its directory."""
    try:
        yield
    except SystemExit as stop:
        if sweep is not None and stop.code in (130, 143) and sweep.sweep_dir.is_dir():
            print(stopped_sweep_text(sweep, int(stop.code)), file=sys.stderr, flush=True)
        raise
    finally:
        if sweep is not None and sweep.lock is not None:
            sweep.lock.release()


def stopped_sweep_text(sweep: Sweep, code: int) -> str:
    """'sweep stopped by SIGINT: #0, #1 finished; #2 was stopped ...'."""
    import signal

    from .interrupt import resume_command

    jobs = _fresh_jobs(sweep)
    done = [f"#{j.name}" for j in jobs if (j / "results.json").is_file()]
    failed = [f"#{j.name}" for j in jobs if _fresh(j / ERROR_FILE, sweep)]
    parts = [f"{', '.join(done) or 'no job'} finished"]
    parts += [f"{', '.join(failed)} failed"] if failed else []
    for job in (j for j in jobs if f"#{j.name}" not in done + failed):
        if (job / "last.pt").is_file():
            parts.append(f"#{job.name} was stopped, resume it with: {resume_command(job)}")
        else:
            parts.append(f"#{job.name} was stopped before its first epoch ended (no last.pt)")
    return (
        f"sweep stopped by {signal.Signals(code - 128).name}: {'; '.join(parts)}. The jobs "
        f"after it did not start; the sweep's runs are in {sweep.sweep_dir.absolute()}"
    )


def _fresh(path: Path, sweep: Sweep) -> bool:
    """True when `path` was written since `sweep` started (not left by an earlier one)."""
    try:
        return os.stat(path).st_mtime >= sweep.started - 1
    except OSError:
        return False


def _fresh_jobs(sweep: Sweep) -> list[Path]:
    """This sweep's job dirs: written (.hydra/config.yaml) since it started, in job order."""
    found = (p for p in sweep.sweep_dir.iterdir() if _fresh(p / ".hydra" / "config.yaml", sweep))
    return sorted(found, key=_job_key)


def _job_key(job: Path) -> tuple[int, str]:
    return (int(job.name), "") if job.name.isdigit() else (1 << 30, job.name)


def report_sweep(sweep: Sweep | None) -> None:
    """After a sweep: where its jobs are and how to compare them; the failed jobs on stderr
    and exit 1 if there were any.

    The jobs of this sweep are the directories under its sweep dir that Hydra wrote since
    it started (.hydra/config.yaml); a failed one holds error.txt.
    """
    if sweep is None or not sweep.sweep_dir.is_dir():
        return
    where, jobs = sweep.sweep_dir, _fresh_jobs(sweep)
    failed = [f"#{job.name}" for job in jobs if _fresh(job / ERROR_FILE, sweep)]
    if not failed:
        if jobs:
            print(f"sweep: {len(jobs)} jobs in {where}; leaderboard: cnnbench report {where}")
        return
    print(
        f"error: {len(failed)} of {len(jobs)} sweep jobs failed "
        f"({', '.join(failed)}; the reason is in each one's {ERROR_FILE}); the others "
        f"finished. Leaderboard: cnnbench report {where}",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(1)
