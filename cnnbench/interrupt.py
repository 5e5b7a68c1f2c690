"""Ctrl-C (SIGINT) and SIGTERM: stop a training run at a point it can be resumed from.

While training is *armed* (the epoch loop), the first signal only raises a flag: the engine
finishes the step it is in and returns, train.py saves last.pt (mid-epoch state included) and
calls `exit_for_resume`, which prints the resume command and exits with 128 + the signal
number (130 for SIGINT, 143 for SIGTERM). A second signal stops at once without saving
(atomic writes keep the files already on disk whole); a third gets the OS default.
Outside the loop (loading data, the final test) the first signal stops at once.

    with graceful_stop():          # around the whole run (the Hydra entrypoint)
        arm(); ...loop...; disarm()
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import NoReturn

log = logging.getLogger("cnnbench")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    armed = False
    signum: int | None = None  # the first signal received, once one arrived
    quiet = False  # DDP ranks > 0: rank 0 does the talking
    owner = 0  # the process that installed the handler (forked DataLoader workers inherit it)


_state = _State()


def _say(text: str) -> None:
    # os.write, not print: a handler may run while the main thread is inside print().
    if _state.quiet:
        return
    with suppress(OSError):
        os.write(2, f"\n{text}\n".encode())


def _handler(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _state.owner:  # a forked worker: its parent speaks, stops and ends it
        return
    name = signal.Signals(signum).name
    if _state.armed and _state.signum is None:
        _state.signum = signum
        _say(
            f"{name} received: finishing the current step, then saving last.pt "
            "(press Ctrl-C again to stop at once without saving)"
        )
        return
    if _state.signum is not None:  # the second one: a third gets the OS default
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        _say(f"{name} received again: stopping now, without saving")
    else:
        _say(f"{name} received: stopping")
    raise SystemExit(128 + signum)


@contextmanager
def graceful_stop() -> Iterator[None]:
    """Route SIGINT/SIGTERM to this module for the duration (main thread only; else a no-op).

    `cnnbench` wraps every command in one (cli.py), so start-up, imports, eval and predict
    stop with one line and exit 130/143; the training run nests its own around the loop.
    On the way out the handlers and state of before are put back.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    before = (_state.armed, _state.signum, _state.quiet, _state.owner)
    _state.armed, _state.signum, _state.owner = False, None, os.getpid()
    try:
        for sig in SIGNALS:
            signal.signal(sig, _handler)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _state.armed, _state.signum, _state.quiet, _state.owner = before


def set_quiet(quiet: bool = True) -> None:
    """Say nothing on signals and on exit (the other processes of a DDP run)."""
    _state.quiet = quiet


def arm() -> None:
    """From now on the first signal asks for a graceful stop instead of stopping at once."""
    _state.armed = True


def disarm() -> None:
    _state.armed = False


def requested() -> bool:
    """True once a SIGINT/SIGTERM asked the armed run to stop (cheap: read every step)."""
    return _state.signum is not None


def resume_command(run_dir: Path) -> str:
    return f"cnnbench train {shlex.quote(f'resume={Path(run_dir).resolve()}')}"


def exit_for_resume(run_dir: Path, where: str) -> NoReturn:
    """After last.pt was saved: say where the run stopped and how to resume it, then exit."""
    signum = _state.signum or signal.SIGINT
    name = signal.Signals(signum).name
    if _state.quiet:
        raise SystemExit(128 + signum)
    log.warning(f"stopped by {name} {where}; last.pt saved. Resume with:")
    log.warning(f"  {resume_command(run_dir)}")
    raise SystemExit(128 + signum)
