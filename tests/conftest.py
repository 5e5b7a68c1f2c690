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


# ---------------------------------------------------------------- images that are easy to get wrong


def upright_pattern(h: int = 96, w: int = 160):
    """An H x W RGB array whose orientation shows: green top band, red left, blue right below."""
    import numpy as np

    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (220, 30, 30)
    arr[:, w // 2 :] = (30, 30, 220)
    arr[: h // 4] = (30, 220, 30)
    return arr


def assert_upright(x) -> None:
    """`x` (3 x H x W uint8) shows upright_pattern: bands where they belong, at any size."""
    h, w = x.shape[1:]
    regions = {
        (30, 220, 30): x[:, : h // 5, :],
        (220, 30, 30): x[:, h // 2 :, : w * 2 // 5],
        (30, 30, 220): x[:, h // 2 :, w * 3 // 5 :],
    }
    for color, region in regions.items():
        mean = region.float().mean(dim=(1, 2)).tolist()
        assert mean == pytest.approx(color, abs=15), (color, mean)


def save_sideways_jpeg(path: Path, arr) -> None:
    """`arr` stored turned 90 degrees counterclockwise, with EXIF orientation 6 (turn it back)."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(arr).transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)


def odd_name(folder: Path, raw: bytes) -> Path:
    """An empty file folder/raw whose name is not UTF-8 (skips where the file system refuses)."""
    path = os.fsencode(folder) + b"/" + raw
    try:
        open(path, "wb").close()
    except OSError:
        pytest.skip("this file system refuses file names that are not UTF-8")
    return Path(os.fsdecode(path))
