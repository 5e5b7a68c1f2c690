"""Sweeps (`cnnbench train -m ...`): check the swept values up front, survive failing jobs.

Hydra's basic launcher runs the jobs one after another in this process. A job that fails is
recorded in its directory (`error.txt`) and on screen, and the sweep goes on; a typo in a
swept value stops the sweep before the first job.
"""

from __future__ import annotations

import logging
import math
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text
from .config import check_values, compose_checked, composition_error
from .errors import CnnbenchError

log = logging.getLogger("cnnbench")

MULTIRUN_FLAGS = ("-m", "--multirun")
ERROR_FILE = "error.txt"


def is_multirun(args: list[str]) -> bool:
    return any(a in MULTIRUN_FLAGS for a in args)


def _optuna_missing(overrides: list[str]) -> bool:
    """True when a sweeper other than basic is asked for and the Optuna plugin is absent."""
    sweepers = [a.split("=", 1)[1].strip() for a in overrides if a.startswith("hydra/sweeper=")]
    if not any(name != "basic" for name in sweepers):
        return False
    try:
        import hydra_plugins.hydra_optuna_sweeper  # noqa: F401
    except ImportError:
        return True
    return False


def check_sweep(args: list[str], config_name: str = "train", config_dir: str | None = None) -> None:
    """Compose each value of each swept key once (the others at their first value).

    Raises one CnnbenchError naming the first bad value. Sweeps a sweeper plugin expands
    itself (interval(), glob()) are left to it. Flags other than -m (--cfg, --help, ...) are
    Hydra's: nothing is checked then.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType
    from hydra.errors import HydraException

    overrides = [a for a in args if a not in MULTIRUN_FLAGS]
    if any(a.startswith("-") for a in overrides):
        return
    if _optuna_missing(overrides):
        raise CnnbenchError(
            "the Optuna sweeper (hydra/sweeper=optuna or lr_search) is not installed: "
            "pip install 'cnnbench[optuna]' (hydra-optuna-sweeper)"
        )
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise composition_error(err) from err
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


@dataclass
class SweepLedger:
    """Outcome of the jobs this process ran (Hydra's basic launcher runs them in-process)."""

    sweep_dir: Path | None = None
    done: int = 0
    failed: list[str] = field(default_factory=list)


ledger = SweepLedger()


def _failed_objective(hydra_cfg: Any) -> float:
    """The worst value for the sweeper's direction: a failed trial ranks last, the study goes on.

    (NaN would mark it failed, but hydra-optuna-sweeper with optuna 2.x then stops the study.)
    """
    from omegaconf import OmegaConf

    direction = OmegaConf.select(hydra_cfg, "sweeper.direction", default="minimize")
    return -math.inf if str(direction).endswith("maximize") else math.inf


def run_sweep_job(train_fn: Callable[[Any, Path], dict], cfg: Any, out_dir: Path) -> float:
    """Run one sweep job; on failure write `error.txt`, log one line and return +-inf.

    Returns the job's best validation loss: the objective a sweeper plugin (Optuna)
    minimizes.
    """
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    ledger.sweep_dir = Path(hc.sweep.dir)
    ledger.done += 1
    try:
        return float(train_fn(cfg, out_dir)["best_val_loss"])
    except Exception as err:
        if isinstance(err, CnnbenchError):
            message, detail = str(err), ""
        else:
            message, detail = f"{err.__class__.__name__}: {err}", "\n" + traceback.format_exc()
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / ERROR_FILE, message + "\n" + detail)
        log.error(f"job #{hc.job.num} failed (the sweep goes on): {message}")
        ledger.failed.append(f"#{hc.job.num}")
        return _failed_objective(hc)


def report_failures() -> None:
    """After a sweep: name the failed jobs on stderr and exit 1 if there were any."""
    if not ledger.failed:
        return
    where = ledger.sweep_dir or Path("multirun")
    print(
        f"error: {len(ledger.failed)} of {ledger.done} sweep jobs failed "
        f"({', '.join(ledger.failed)}; the reason is in each one's {ERROR_FILE}); the others "
        f"finished. Leaderboard: cnnbench report {where}",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(1)
