"""Optional metric loggers (`logger=...`): the scalars of metrics.csv, per epoch.

`none` (default) logs nothing beyond metrics.csv; `tensorboard` writes the same columns to
RUN_DIR/tb with torch.utils.tensorboard (extra: pip install 'cnnbench[tensorboard]').
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import CnnbenchError

LOGGERS = ("none", "tensorboard")


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


def open_logger(lcfg: Any, run_dir: Path) -> NullLogger | TensorBoardLogger:
    """The logger `lcfg.name` picks, writing under `run_dir`."""
    if lcfg.name == "none":
        return NullLogger()
    if lcfg.name == "tensorboard":
        return TensorBoardLogger(Path(run_dir) / "tb")
    raise CnnbenchError(f"unknown logger {lcfg.name!r}; valid loggers: {', '.join(LOGGERS)}")
