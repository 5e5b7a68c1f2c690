"""Plain-dict checkpoints: atomic writes, safe loads (weights_only=True), the train state."""

from __future__ import annotations

import glob
import math
import os
import pickle
import random
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

from .errors import CnnbenchError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (POSIX; a no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _KeepWriteError:
    """A file that remembers the OSError a write raised (a full disk): torch.save reports
    such a failure only as a RuntimeError ('unexpected pos ...')."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.error = f, None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = err
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)


def _is_torch_write_error(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("unexpected pos", "PytorchStreamWriter failed", "file write failed")
    )


def _write_failure(path: Path) -> str:
    """Why torch.save failed when the file object did not say: the disk's free space."""
    import shutil

    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return "the write failed"
    if free < 64 << 20:
        return f"No space left on device ({free >> 20} MB free)"
    return f"the write failed ({free >> 20} MB free on that disk)"


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through `write(file)` so readers see the old file or the new one, never a torn one.

    The data goes to a hidden temp file in the same directory (`.NAME.XXXX.tmp`), is flushed
    and fsynced, and then renamed over `path` (os.replace is atomic on POSIX and Windows).
    A process killed mid-write leaves at most such a temp file, which the next successful
    write of `path` removes. Failing to write (disk full, read-only) keeps the old file.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    except OSError as err:
        raise CnnbenchError(f"cannot write {path}: {err.strerror or err}") from err
    f = None
    try:
        with os.fdopen(fd, "wb") as raw:
            f = _KeepWriteError(raw)
            write(f)  # type: ignore[arg-type]
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        cause = f.error if f is not None and f.error is not None else err
        if isinstance(cause, OSError) or _is_torch_write_error(err):
            kept = f"; the previous {path.name} is kept" if path.exists() else ""
            reason = cause.strerror if isinstance(cause, OSError) else _write_failure(path)
            raise CnnbenchError(f"could not write {path}: {reason or cause}{kept}") from err
        raise
    _fsync_dir(path.parent)
    for stale in path.parent.glob(f"{glob.escape(_temp_prefix(path))}*.tmp"):
        stale.unlink(missing_ok=True)  # left behind by a save that was killed


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(obj: dict[str, Any], path: Path) -> None:
    """torch.save `obj` to `path` atomically."""
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(
    path: Path | str, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Load a checkpoint or state_dict without running code from the file (weights_only).

    `mmap` maps the tensors instead of reading them (cheap when only the counters are read).
    An empty file, a file that is no checkpoint at all (text, an image), a damaged one and a
    pickle that would run code are each one message naming the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CnnbenchError(f"checkpoint not found: {path}")
    kind = _file_kind(path)
    if kind == "empty":
        raise CnnbenchError(f"{path} is empty (0 bytes): a copy or a save of it was cut short")
    if kind == "other":
        raise CnnbenchError(
            f"{path} is not a PyTorch checkpoint (neither a torch.save file nor a pickle: it "
            "starts with other bytes); use a .pt/.pth file written by torch.save"
        )
    try:
        return torch.load(
            path, map_location=map_location, weights_only=True, mmap=mmap and kind == "zip"
        )
    except MemoryError:
        raise
    except Exception as err:  # torch raises anything from KeyError to OSError on bad bytes
        raise _load_failure(path, kind, err) from None


def _load_failure(path: Path, kind: str, err: Exception) -> CnnbenchError:
    """Why torch.load(weights_only=True) refused `path`: code in a pickle, or damage."""
    named = re.search(r"GLOBAL ([\w.]+)", str(err))
    calls = [named.group(1)] if named else None
    if kind == "pickle" and not calls:
        with open(path, "rb") as f:
            calls = _pickle_globals(f.read(1 << 20))
    if isinstance(err, pickle.UnpicklingError) and calls:
        return CnnbenchError(
            f"refused to load {path}: it is a pickle that calls {calls[0]} when loaded "
            "(code, not plain tensors); load only checkpoints you trust, saved with torch.save"
        )
    what = "the file is damaged or truncated"
    if kind == "pickle" and calls is not None:  # a readable pickle of plain values
        what = "it is a pickle but not a torch.save checkpoint (or a damaged one)"
    return CnnbenchError(f"could not read checkpoint {path}: {what} ({_first_line(err)})")


def _pickle_globals(data: bytes) -> list[str] | None:
    """The functions and classes a pickle would import (read, never run); None if unreadable."""
    import pickletools

    names, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            if isinstance(arg, str):
                strings.append(arg)
    except Exception:
        return None
    return names


def _file_kind(path: Path) -> str:
    """'zip' (torch.save's format), 'pickle' (the legacy format), 'empty' or 'other'."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        return "empty"
    if head.startswith(b"PK"):
        return "zip"
    return "pickle" if head[0] == 0x80 else "other"


def _first_line(err: BaseException) -> str:
    """'RuntimeError: its first sentence', at most 160 characters."""
    text = (str(err).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")[:160]
    name = err.__class__.__name__
    return f"{name}: {text}" if text else name


def _load_error_gist(err: BaseException) -> str:
    """One informative line from load_state_dict's multi-line report."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not lines:
        return err.__class__.__name__
    detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
    return detail if len(detail) <= 300 else detail[:297] + "..."


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers (so saved keys have no prefixes)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def _numpy_state() -> list[Any]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return [keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(ast.literal_eval(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainState:
    """What a run needs to continue: the trained objects plus the loop's own counters.

    `to_dict()` is last.pt's content; `load()` puts a last.pt back into the objects (weights,
    optimizer, scheduler, grad scaler, weight EMA, RNG streams) and the counters.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any | None = None
    scaler: Any | None = None
    model_name: str = ""
    ema: Any | None = None  # averaging.WeightEMA (ema.decay)
    monitor: str = "val_loss"  # the metric best_value is of (val_acc: higher is better)
    epoch: int = 0  # epochs finished
    partial: dict[str, Any] | None = None  # steps and sums of a stopped epoch: {step, seen, ...}
    best_value: float = math.inf
    best_epoch: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metrics.csv's rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": unwrap(self.model).state_dict(),
            "model_name": self.model_name,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "partial": self.partial,
            "monitor": self.monitor,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "metrics": self.metrics,
            "rng": rng_state(),
        }

    def save(self, path: Path) -> None:
        save_checkpoint(self.to_dict(), path)

    def load(self, path: Path) -> None:
        """Continue from `path` (last.pt): every object and counter as it recorded them."""
        state = load_checkpoint(path)
        try:
            unwrap(self.model).load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            saved = state.get("model_name")
            by = f" was written by model {saved!r} and" if saved else ""
            raise CnnbenchError(
                f"{path}{by} does not fit this run's {unwrap(self.model).__class__.__name__} or "
                f"its optimizer ({_load_error_gist(err)}); resume with the run's own model and "
                "optimizer, or start a new run"
            ) from None
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        self.epoch, self.partial = state["epoch"], state.get("partial")
        if state.get("monitor", "val_loss") == self.monitor:  # else: a new monitor starts afresh
            self.best_value = state.get("best_value", state.get("best_val_loss"))
            self.best_epoch = state["best_epoch"]
        self.metrics = state["metrics"]
