"""train.log's line format (configs/hydra/job_logging/cnnbench.yaml)."""

from __future__ import annotations

import logging


class FileFormatter(logging.Formatter):
    """`[time][LEVEL] message`, without the level twice when the message already starts with
    it (the seeds' `[INFO] val_loss has been improved ...` lines, shown as such on screen)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        tag = f"[{record.levelname}] "
        return super().formatMessage(record).replace(tag + tag, tag, 1)
