"""DDP through torchrun: 2 CPU processes (gloo) on tiny data, checked against one process."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HARNESS_HEAD, REPO, SIGNAL_AT_STEP, TINY, read_json, run_cnnbench

from cnnbench.data import ImageTensors, TensorLoader
from cnnbench.data.transforms import BatchTransform


def torchrun(*args: str, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=N -m cnnbench ARGS` with this checkout."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        + [f"--nproc_per_node={nproc}", "-m", "cnnbench", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def only_run_dir(cwd: Path) -> Path:
    runs = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs  # all ranks wrote into one directory
    return runs[0]


def test_ddp_run_writes_one_run_dir_matching_single_process_eval(tmp_path):
    # scheduler=step: extended below (a finished cosine schedule is refused: lr = min_lr)
    proc = torchrun("train", *TINY, "epochs=3", "scheduler=step", "device.threads=1", cwd=tmp_path)
    run = only_run_dir(tmp_path)
    # Rank 0 alone prints, logs and writes; the effective batch is reported.
    assert proc.stdout.count("Total params: 62,006") == 1
    assert proc.stdout.count("DDP over 2 processes: batch 16 per process, 32 effective") == 1
    assert sorted(p.name for p in run.iterdir()) == [
        ".hydra", "best.pt", "curves.png", "last.pt", "metrics.csv", "results.json",
        "summary.txt", "train.log",
    ]  # fmt: skip
    log = (run / "train.log").read_text()
    assert log.count("epoch 3/3") == 1 and "32 effective" in log
    results = read_json(run / "results.json")
    assert (results["world_size"], results["effective_batch_size"]) == (2, 32)

    # Checkpoints are plain (no `module.` prefix) and load in one process.
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["model"] and not any(k.startswith("module.") for k in best["model"])
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == 3 and set(last["model"]) == set(best["model"])

    # The validation metrics the DDP run reduced over its ranks equal a single-process
    # evaluation of the saved model; so do the test metrics.
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    best_row = rows[best["epoch"] - 1]
    run_cnnbench("eval", str(run), "split=val", cwd=tmp_path)
    val = read_json(run / "eval" / "metrics.json")
    assert val["images"] == 8  # the whole val split: no sample dropped or counted twice
    assert val["loss"] == pytest.approx(best["val_loss"], abs=1e-6)
    assert val["loss"] == pytest.approx(float(best_row["val_loss"]), abs=1e-5)
    assert val["top1"] == pytest.approx(float(best_row["val_acc"]), abs=1e-6)
    run_cnnbench("eval", str(run), "split=test", cwd=tmp_path)
    test = read_json(run / "eval" / "metrics.json")
    assert test["loss"] == pytest.approx(results["test_loss"], abs=1e-6)
    assert test["top1"] == pytest.approx(results["test_top1"], abs=1e-6)

    # A single process resumes the DDP run and trains a fourth epoch in the same dir.
    run_cnnbench("train", f"resume={run}", "epochs=4", cwd=tmp_path)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 4


def test_ddp_resume_continues_under_torchrun(tmp_path):
    torchrun("train", *TINY, "scheduler=step", "device.threads=1", cwd=tmp_path)
    run = only_run_dir(tmp_path)
    proc = torchrun("train", f"resume={run}", "epochs=3", cwd=tmp_path)
    assert "resuming" in proc.stdout and proc.stdout.count("epoch 3/3") == 1
    assert only_run_dir(tmp_path) == run
    assert read_json(run / "results.json")["epochs"] == 3


def shards(n: int, world: int, *, shuffle: bool, batch: int = 4, epoch: int = 1) -> list[list]:
    data = ImageTensors(torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.arange(n))
    tf = BatchTransform(train=shuffle, mean=[0.0], std=[1.0])
    out = []
    for rank in range(world):
        loader = TensorLoader(
            data, batch, tf, torch.device("cpu"), shuffle=shuffle, rank=rank, world_size=world
        )
        loader.set_epoch(epoch)
        labels = [i for _, y in loader for i in y.tolist()]
        assert len(loader) == len(list(loader))
        out.append(labels)
    return out


@pytest.mark.parametrize("n,world", [(10, 2), (11, 3), (8, 4)])
def test_training_shards_cover_the_epoch_with_equal_sizes(n, world):
    parts = shards(n, world, shuffle=True, batch=100)
    sizes = {len(p) for p in parts}
    assert len(sizes) == 1  # every rank takes the same number of steps (DDP needs it)
    everything = [i for p in parts for i in p]
    assert set(everything) == set(range(n))  # each sample, padded by wrapping around
    assert len(everything) == -(-n // world) * world
    assert shards(n, world, shuffle=True, batch=100, epoch=2) != parts  # reshuffled per epoch


@pytest.mark.parametrize("n,world", [(10, 2), (11, 3), (3, 4)])
def test_evaluation_shards_split_the_samples_exactly(n, world):
    parts = shards(n, world, shuffle=False)
    assert sorted(i for p in parts for i in p) == list(range(n))  # no padding, no repeats


def test_sweeps_and_missing_rendezvous_fail_clearly(cli):
    env = {"WORLD_SIZE": "2", "RANK": "0"}
    proc = cli("train", "-m", *TINY, "epochs=1,2", env=env, check=False)
    assert proc.returncode == 1 and "does not run under torchrun" in proc.stderr
    proc = cli("train", *TINY, env=env, check=False)
    assert proc.returncode == 1
    assert "cannot start the process group (rank 0 of 2)" in proc.stderr
    assert "MASTER_ADDR" in proc.stderr and "Traceback" not in proc.stderr


RUN = [*TINY, "transforms=cifar", "batch_size=8", "epochs=3", "log_interval=2"]


def test_ctrl_c_on_one_rank_stops_all_at_a_resumable_step(tmp_path):
    torchrun("train", *RUN, "hydra.run.dir=full", cwd=tmp_path)
    # Rank 1 alone gets a SIGINT as batch 4 of epoch 2 reaches the engine (log_interval=2).
    code = SIGNAL_AT_STEP.format(at_epoch=2, at_step=4, signum=int(signal.SIGINT), rank=1)
    script = tmp_path / "harness.py"
    script.write_text(HARNESS_HEAD + code + "\nmain(sys.argv[1:])\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + [str(script), "train", *RUN, "hydra.run.dir=stopped"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    # Rank 0 saw no signal, yet the ranks agreed to stop after step 4 and rank 0 saved it.
    assert "stopped by SIGINT in epoch 2 after step 4; last.pt saved" in proc.stdout
    assert "[rank 1]" not in proc.stderr  # rank 1 stops quietly
    stopped = tmp_path / "stopped"
    last = torch.load(stopped / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and last["partial"]["step"] == 4
    assert (last["partial"]["seen"], last["partial"]["world"]) == (4 * 8 * 2, 2)

    torchrun("train", f"resume={stopped}", cwd=tmp_path)
    full = list(csv.DictReader((tmp_path / "full" / "metrics.csv").open()))
    resumed = list(csv.DictReader((stopped / "metrics.csv").open()))
    assert len(resumed) == len(full) == 3
    for a, b in zip(full, resumed, strict=True):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4), key
