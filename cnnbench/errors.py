"""One exception type for problems the user can fix, shown as one message without a traceback."""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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


def is_out_of_memory(err: BaseException) -> bool:
    """A GPU or CPU allocation failure (torch.OutOfMemoryError, DefaultCPUAllocator, MemoryError)."""
    import torch

    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "DefaultCPUAllocator: can't allocate memory" in text
        or "DefaultCPUAllocator: not enough memory" in text
        or "out of memory" in text.lower()
    )


def _gist(err: BaseException) -> str:
    """The first sentences of an allocator message, without C++ assertion noise."""
    text = (str(err).strip().splitlines() or [err.__class__.__name__])[0]
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*[^.]*\.\s*", "", text)
    return ". ".join(text.split(". ")[:2]).rstrip(".")


@contextmanager
def out_of_memory_hint(batch_size: int, run_dir: Path) -> Iterator[None]:
    """Turn running out of memory into a CnnbenchError that suggests a smaller batch_size.

    Nothing is written on the way out, so the run's last.pt (if any) stays as it was.
    """
    try:
        yield
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        smaller = max(1, batch_size // 2)
        message = (
            f"out of memory at batch_size={batch_size} ({_gist(err)}). Use a smaller batch, e.g. "
            f"batch_size={smaller} (evaluation uses eval_batch_size, 2 x batch_size by default)"
        )
        if (Path(run_dir) / "last.pt").is_file():
            message += (
                f"; last.pt is kept, continue from it with: cnnbench train "
                f"{shlex.quote(f'resume={Path(run_dir).resolve()}')} batch_size={smaller}"
            )
        raise CnnbenchError(message) from err
