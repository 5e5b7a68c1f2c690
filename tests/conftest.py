"""Shared helpers: run the real CLI in a subprocess, exactly as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Small, fast runs: fake data, few epochs, CPU, no progress bars.
TINY = [
    "dataset=fake",
    "dataset.size=96",
    "epochs=2",
    "batch_size=16",
    "device=cpu",
    "progress=false",
]


# Harness code for `python -c` / script runs of the CLI that must be signalled at an exact
# step: HARNESS_HEAD + SIGNAL_AT_STEP.format(...) + "main(sys.argv[1:])".
HARNESS_HEAD = """
import os, signal, sys
import torch
import cnnbench.train as t
from cnnbench.cli import main
"""

# Send `signum` to ourselves as batch `at_step` of epoch `at_epoch` is handed to the engine,
# in the process of DDP rank `rank` (0 without torchrun).
SIGNAL_AT_STEP = """
AT_EPOCH, AT_STEP, SIGNUM, RANK = {at_epoch}, {at_step}, {signum}, {rank}
_run_epoch = t.run_epoch

class SignalAt:
    def __init__(self, loader):
        self.loader = loader
    def __getattr__(self, name):
        return getattr(self.loader, name)
    def __len__(self):
        return len(self.loader)
    def __iter__(self):
        for step, batch in enumerate(self.loader, self.loader.start_step + 1):
            if step == AT_STEP:
                os.kill(os.getpid(), SIGNUM)
            yield batch

def run_epoch(net, loader, step, state, *args):
    if state.epoch + 1 == AT_EPOCH and int(os.environ.get("RANK", "0")) == RANK:
        loader = SignalAt(loader)
    return _run_epoch(net, loader, step, state, *args)

t.run_epoch = run_epoch
"""


def run_cnnbench(
    *args: str, cwd: Path, check: bool = True, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`python -m cnnbench ARGS` in `cwd`, importing this checkout; returns the finished process."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR") if full_env["HYDRA_FULL_ERROR"] == "0" else None
    proc = subprocess.run(
        [sys.executable, "-m", "cnnbench", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"cnnbench {' '.join(args)} exited {proc.returncode}\n"
            f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return proc


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture
def cli(tmp_path):
    """run_cnnbench bound to a fresh working directory."""

    def run(*args: str, **kw) -> subprocess.CompletedProcess:
        return run_cnnbench(*args, cwd=kw.pop("cwd", tmp_path), **kw)

    return run
