"""Optional metric loggers (`logger=...`): the scalars of metrics.csv, per epoch.

`none` (default) logs nothing beyond metrics.csv; `tensorboard` writes the same columns to
RUN_DIR/tb with torch.utils.tensorboard (extra: pip install 'cnnbench[tensorboard]');
`mlflow` logs the flattened config as params, the columns as metrics (step = epoch) and
best.pt and curves.png as artifacts, into RUN_DIR/mlruns unless MLFLOW_TRACKING_URI is set
(extra: 'cnnbench[mlflow]'); `wandb` logs the config and the columns to a Weights & Biases
run under RUN_DIR/wandb, offline unless WANDB_MODE says otherwise (extra: 'cnnbench[wandb]').
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text
from .config import LOGGERS
from .errors import CnnbenchError

EXPERIMENT = "cnnbench"  # MLflow experiment / wandb project unless the environment names one
RUN_DIR_TAG = "cnnbench.run_dir"  # MLflow tag: which run dir an MLflow run belongs to
# The logger's run id, kept in the run dir: a resumed run logs into the same MLflow/wandb run
MLFLOW_ID_FILE, WANDB_ID_FILE = "mlflow_run_id.txt", "wandb_run_id.txt"

log = logging.getLogger("cnnbench")


class NullLogger:
    def log(self, row: dict[str, Any]) -> None:
        """Nothing to do: metrics.csv already holds the row."""

    def close(self) -> None:
        pass


class TensorBoardLogger:
    """One scalar per metrics.csv column (epoch is the step), flushed every epoch."""

    def __init__(self, log_dir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise CnnbenchError(
                "logger=tensorboard needs the tensorboard package: pip install "
                "'cnnbench[tensorboard]' (or use logger=none)"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"])
        for key, value in row.items():
            if key != "epoch":
                self.writer.add_scalar(key, float(value), step)
        self.writer.flush()  # a killed run keeps every finished epoch

    def close(self) -> None:
        self.writer.close()


def _run_name(run_dir: Path) -> str:
    """`2026-11-23/12-00-00` for outputs/2026-11-23/12-00-00."""
    run_dir = Path(run_dir).resolve()
    return f"{run_dir.parent.name}/{run_dir.name}"


def run_params(run_dir: Path, config: Any = None) -> dict[str, Any]:
    """The config to log as parameters, flattened (`optimizer.lr`): `config` when given,
    else the run's saved `.hydra/config.yaml`; {} when there is neither."""
    from omegaconf import OmegaConf

    from .flatconfig import flat_config
    from .runs import SAVED_CONFIG

    if config is None:
        saved = Path(run_dir) / SAVED_CONFIG
        if not saved.is_file():
            return {}
        config = OmegaConf.load(saved)
    return flat_config(config, resolve=True)


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """INFO lines of these loggers off (warnings still show)."""
    saved = {name: logging.getLogger(name).level for name in names}
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.WARNING)
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _gist(err: BaseException) -> str:
    """`ErrorClass: first line of the message`."""
    lines = str(err).strip().splitlines()
    return f"{err.__class__.__name__}: {lines[0]}" if lines else err.__class__.__name__


def _remembered_id(path: Path) -> str | None:
    """The run id a logger stored in the run dir on its first start, if any."""
    text = path.read_text().strip() if path.is_file() else ""
    return text or None


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class MLflowLogger:
    """An MLflow run: params (the flattened config) at the start, every metrics.csv column
    per epoch (step = epoch), best.pt and curves.png as artifacts at close.

    Tracking store: MLFLOW_TRACKING_URI when set, else a SQLite store in RUN_DIR/mlruns
    (mlflow.db, artifacts/), MLflow's own default backend. The experiment is
    MLFLOW_EXPERIMENT_NAME or `cnnbench`. The run id is kept in RUN_DIR/mlflow_run_id.txt,
    so a resumed run dir continues its MLflow run (in the same tracking store).
    """

    def __init__(self, run_dir: Path, config: Any = None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise CnnbenchError(
                "logger=mlflow needs the mlflow package: pip install 'cnnbench[mlflow]' "
                "(or use logger=none)"
            ) from None
        self.run_dir = Path(run_dir).resolve()
        env_uri = os.environ.get("MLFLOW_TRACKING_URI")
        own_store = None if env_uri else self.run_dir / "mlruns"
        if own_store is not None:
            own_store.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = env_uri or f"sqlite:///{own_store / 'mlflow.db'}"
        try:
            with _quiet("mlflow.store.db.utils", "alembic"):  # "Creating initial ... tables"
                self.client = MlflowClient(tracking_uri=self.tracking_uri)
                self.run_id = self._start_run(own_store)
            self._log_params(run_params(run_dir, config))
        except Exception as err:
            raise CnnbenchError(
                f"logger=mlflow could not start a run at {self.tracking_uri}: {_gist(err)} "
                "(check MLFLOW_TRACKING_URI, or use logger=none)"
            ) from err

    def _start_run(self, store: Path | None) -> str:
        """This run dir's MLflow run: the one it started before (a resume), else a new one."""
        earlier = _remembered_id(self.run_dir / MLFLOW_ID_FILE)
        if earlier and self.client.search_runs(
            self._experiment_ids(), filter_string=f"attributes.run_id = '{earlier}'"
        ):
            self.client.update_run(earlier, status="RUNNING")
            return earlier
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = (store / "artifacts").as_uri() if store else None
            experiment_id = self.client.create_experiment(name, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        run = self.client.create_run(
            experiment_id, run_name=_run_name(self.run_dir), tags={RUN_DIR_TAG: str(self.run_dir)}
        )
        atomic_write_text(self.run_dir / MLFLOW_ID_FILE, run.info.run_id + "\n")
        return run.info.run_id

    def _experiment_ids(self) -> list[str]:
        return [e.experiment_id for e in self.client.search_experiments()]

    def _log_params(self, params: dict[str, Any]) -> None:
        """Log params in batches of 100 (MLflow's limit). MLflow params cannot change, so a
        resume logs only keys the run does not have yet."""
        from mlflow.entities import Param

        known = self.client.get_run(self.run_id).data.params
        items = [Param(k, _param_text(v)[:6000]) for k, v in params.items() if k not in known]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step, now = int(row["epoch"]), int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in row.items() if k != "epoch"]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        for name in ("best.pt", "curves.png"):
            path = self.run_dir / name
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED")


class WandbLogger:
    """A Weights & Biases run in RUN_DIR/wandb: the config, then every metrics.csv column per
    epoch (step = epoch).

    Offline by default (WANDB_MODE=online, or `wandb sync RUN_DIR/wandb/offline-run-*`, to
    upload); the project is WANDB_PROJECT or `cnnbench`. The run id is kept in
    RUN_DIR/wandb_run_id.txt, so a resumed run continues the same wandb run.
    """

    def __init__(self, run_dir: Path, config: Any = None) -> None:
        try:
            import wandb
        except ImportError:
            raise CnnbenchError(
                "logger=wandb needs the wandb package: pip install 'cnnbench[wandb]' "
                "(or use logger=none)"
            ) from None
        run_dir = Path(run_dir).resolve()
        mode = os.environ.get("WANDB_MODE") or "offline"
        run_id = _remembered_id(run_dir / WANDB_ID_FILE) or secrets.token_hex(8)
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT") or EXPERIMENT,
                name=_run_name(run_dir),
                id=run_id,
                dir=str(run_dir),
                mode=mode,
                config=run_params(run_dir, config),  # flat: `optimizer.lr`
                resume="allow",
                reinit="create_new",
                settings=wandb.Settings(console="off", quiet=True),
            )
        except Exception as err:
            raise CnnbenchError(
                f"logger=wandb could not start a run (WANDB_MODE={mode}): {_gist(err)} "
                "(run `wandb login`, or leave WANDB_MODE unset for an offline run)"
            ) from err
        atomic_write_text(run_dir / WANDB_ID_FILE, run_id + "\n")

    def log(self, row: dict[str, Any]) -> None:
        self.run.log({k: float(v) for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))

    def close(self) -> None:
        self.run.finish()


Logger = NullLogger | TensorBoardLogger | MLflowLogger | WandbLogger


def open_logger(lcfg: Any, run_dir: Path, config: Any = None) -> Logger:
    """The logger `lcfg.name` picks, writing under `run_dir`.

    `config` (the run's config) gives MLflow and wandb their parameters; without it they
    read the run's saved `.hydra/config.yaml`.
    """
    if lcfg.name == "none":
        return NullLogger()
    if lcfg.name == "tensorboard":
        return TensorBoardLogger(Path(run_dir) / "tb")
    if lcfg.name == "mlflow":
        return MLflowLogger(Path(run_dir), config)
    if lcfg.name == "wandb":
        return WandbLogger(Path(run_dir), config)
    raise CnnbenchError(f"unknown logger {lcfg.name!r}; valid loggers: {', '.join(LOGGERS)}")
