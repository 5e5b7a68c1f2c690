"""One exception type for problems the user can fix, shown as one message without a traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class CnnbenchError(Exception):
    """A bad option, missing file or unusable input: the message says what and how to fix it."""


def full_errors() -> bool:
    """True when the user asked for full tracebacks (Hydra's convention)."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


@contextmanager
def user_errors(exit_code: int = 1) -> Iterator[None]:
    """Turn a CnnbenchError into `error: <message>` on stderr and a non-zero exit."""
    try:
        yield
    except CnnbenchError as err:
        if full_errors():
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(exit_code) from None
