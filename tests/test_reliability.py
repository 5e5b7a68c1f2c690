"""Runs survive interruptions: Ctrl-C/SIGTERM, SIGKILL during saves, out of memory, NaN loss.

Signals that must land at an exact step are sent by the run to itself: a small harness
(`python -c HARNESS train ...`) wraps cnnbench.train's hooks, then runs the real CLI.
"""

from __future__ import annotations

import csv
import os
import random
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import HARNESS_HEAD, REPO, SIGNAL_AT_STEP, read_json

from cnnbench import interrupt
from cnnbench.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from cnnbench.errors import CnnbenchError

# 74 train images in batches of 8: 10 steps per epoch; `transforms=cifar` draws random crops
# and flips from the loader's generator, so a resumed epoch must replay them exactly.
RUN = [
    "dataset=fake",
    "dataset.size=96",
    "transforms=cifar",
    "batch_size=8",
    "epochs=3",
    "device=cpu",
    "progress=false",
]


def harness(cwd: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    """Run `cnnbench ARGS` in a fresh interpreter after executing `code` (patches)."""
    script = HARNESS_HEAD + textwrap.dedent(code) + "\nmain(sys.argv[1:])\n"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def metrics(run_dir: Path) -> list[list[str]]:
    """metrics.csv without the wall-clock `seconds` column."""
    return [row[:-1] for row in csv.reader((run_dir / "metrics.csv").open())]


def resume_command(stdout: str) -> list[str]:
    (line,) = [ln.strip() for ln in stdout.splitlines() if ln.strip().startswith("cnnbench train")]
    return shlex.split(line)


def test_ctrl_c_mid_epoch_saves_a_resumable_point_and_resume_matches(cli, tmp_path):
    cli("train", *RUN, "hydra.run.dir=full")

    code = SIGNAL_AT_STEP.format(at_epoch=2, at_step=4, signum=int(signal.SIGINT), rank=0)
    proc = harness(tmp_path, code, "train", *RUN, "hydra.run.dir=stopped")
    stopped = tmp_path / "stopped"
    assert proc.returncode == 130, proc.stderr
    assert "SIGINT received: finishing the current step" in proc.stderr
    assert "stopped by SIGINT in epoch 2 after step 4; last.pt saved" in proc.stdout
    assert "Traceback" not in proc.stderr
    command = resume_command(proc.stdout)
    assert command == ["cnnbench", "train", f"resume={stopped}"]

    last = load_checkpoint(stopped / "last.pt")
    assert last["epoch"] == 1 and last["partial"]["step"] == 4
    assert last["partial"]["seen"] == 4 * 8
    assert len(metrics(stopped)) == 2  # header + epoch 1
    assert not (stopped / "results.json").exists()

    # The loader must replay the same batches: another batch_size cannot continue mid-epoch.
    bad = cli(*command[1:], "batch_size=16", check=False)
    assert bad.returncode == 1
    assert "last.pt was saved 4 steps (32 images) into epoch 2" in bad.stderr
    assert "resume with the batch_size and dataset the run was started with" in bad.stderr

    resumed = cli(*command[1:])  # exactly the printed command
    assert "resuming " + str(stopped) + " after epoch 1 and 4 steps of epoch 2" in resumed.stdout
    assert metrics(stopped) == metrics(tmp_path / "full")
    assert read_json(stopped / "results.json")["test_loss"] == pytest.approx(
        read_json(tmp_path / "full" / "results.json")["test_loss"], rel=1e-6
    )
    full_best = load_checkpoint(tmp_path / "full" / "best.pt")["model"]
    for key, value in load_checkpoint(stopped / "best.pt")["model"].items():
        assert torch.equal(value, full_best[key]), key


def test_sigterm_from_outside_saves_last_pt_and_exits_143(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [*RUN, "epochs=200", "hydra.run.dir=run"]
    out = (tmp_path / "stdout").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnbench", "train", *args],
        cwd=tmp_path,
        env=env,
        stdout=out,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir = tmp_path / "run"
    deadline = time.monotonic() + 120
    while not (run_dir / "last.pt").exists():  # the loop is running (armed) once epoch 1 saved
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    stdout = (tmp_path / "stdout").read_text()
    assert proc.returncode == 143, stderr
    assert "SIGTERM received: finishing the current step" in stderr
    assert "stopped by SIGTERM" in stdout and "last.pt saved" in stdout
    assert resume_command(stdout) == ["cnnbench", "train", f"resume={run_dir}"]
    last = load_checkpoint(run_dir / "last.pt")
    done = last["epoch"] + (1 if last["partial"] else 0)
    assert 1 <= done < 200
    assert [int(r[0]) for r in metrics(run_dir)[1:]] == list(range(1, last["epoch"] + 1))
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))


def test_second_ctrl_c_stops_at_once_and_keeps_the_saved_files(tmp_path):
    # The first SIGINT arrives in epoch 2; the second while last.pt is being written.
    code = (
        SIGNAL_AT_STEP.format(at_epoch=2, at_step=3, signum=int(signal.SIGINT), rank=0)
        + """
import cnnbench.checkpoint as ckpt
_save = ckpt.save_checkpoint

def save_checkpoint(obj, path):
    if obj.get("partial"):
        def write(f):
            f.write(b"half a checkpoint")
            os.kill(os.getpid(), signal.SIGINT)
            torch.save(obj, f)
        return ckpt.atomic_write(path, write)
    return _save(obj, path)

ckpt.save_checkpoint = save_checkpoint  # what TrainState.save writes last.pt with
"""
    )
    proc = harness(tmp_path, code, "train", *RUN, "hydra.run.dir=run")
    assert proc.returncode == 130
    assert "SIGINT received again: stopping now, without saving" in proc.stderr
    assert "Traceback" not in proc.stderr
    run_dir = tmp_path / "run"
    last = load_checkpoint(run_dir / "last.pt")
    assert last["epoch"] == 1 and last["partial"] is None  # epoch 1's, intact
    assert load_checkpoint(run_dir / "best.pt")["epoch"] == 1
    assert sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")) == []


def test_ctrl_c_before_training_stops_at_once(tmp_path):
    code = """
_load = t.load_dataset
def load_dataset(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    return _load(*args, **kwargs)
t.load_dataset = load_dataset
"""
    proc = harness(tmp_path, code, "train", *RUN, "hydra.run.dir=run")
    assert proc.returncode == 130
    assert "SIGINT received: stopping" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def _temp_files(run_dir: Path) -> list[str]:
    return [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def _torn_checkpoints(run_dir: Path) -> list[str]:
    return [n for n in _temp_files(run_dir) if n.startswith((".last.pt.", ".best.pt."))]


def test_sigkill_during_saves_never_leaves_a_torn_checkpoint(tmp_path):
    """SIGKILL one run again and again (resuming it each time), half of the kills at the
    moment a save's temp file appears, half at random moments; every surviving .pt loads.

    A 1.7M-parameter head (model.num_classes=20000) makes last.pt ~21 MB, so a save lasts
    long enough (tens of ms) to be caught in the middle.
    """
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run_dir = tmp_path / "run"
    start = [*RUN, "dataset.size=40", "model.num_classes=20000", "epochs=1000"]
    start += ["scheduler=none", f"hydra.run.dir={run_dir}"]
    torn_saves = 0
    for attempt in range(4):
        args = [f"resume={run_dir}"] if (run_dir / "last.pt").exists() else start
        before = (run_dir / "last.pt").stat().st_mtime_ns if attempt else 0
        proc = subprocess.Popen(
            [sys.executable, "-m", "cnnbench", "train", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 120

        def alive(proc: subprocess.Popen = proc, deadline: float = deadline) -> bool:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            return True

        # this attempt has saved last.pt once: the run is in its loop
        while alive() and not (
            (run_dir / "last.pt").exists() and (run_dir / "last.pt").stat().st_mtime_ns != before
        ):
            time.sleep(0.01)
        if attempt % 2 == 0:  # kill inside the next save
            while alive() and not _torn_checkpoints(run_dir):
                time.sleep(0.0005)
        else:
            time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        proc.wait()
        torn_saves += bool(_torn_checkpoints(run_dir))
        # killed writes leave hidden .NAME.XXXX.tmp files (checkpoints, metrics.csv) only
        assert all(name.startswith(".") for name in _temp_files(run_dir))
        checkpoints = sorted(p.name for p in run_dir.glob("*.pt"))
        assert checkpoints == ["best.pt", "last.pt"]  # temp files never look like checkpoints
        last = load_checkpoint(run_dir / "last.pt")
        best = load_checkpoint(run_dir / "best.pt")
        assert last["epoch"] >= 1 and len(last["metrics"]) == last["epoch"]
        assert 1 <= best["epoch"] <= last["epoch"] + 1  # best.pt is written just before last.pt
    assert torn_saves >= 1, "the kills never landed inside a save"
    # Resuming works, and the run's next save clears the temp files of killed saves.
    epochs = last["epoch"] + 1
    proc = subprocess.run(
        [sys.executable, "-m", "cnnbench", "train", f"resume={run_dir}", f"epochs={epochs}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert not _temp_files(run_dir)
    assert read_json(run_dir / "results.json")["epochs"] == epochs


OOM_AT_EPOCH_2 = """
_run_epoch = t.run_epoch
def run_epoch(net, loader, step, state, *args):
    if state.epoch + 1 == 2:
        {raise_oom}
    return _run_epoch(net, loader, step, state, *args)
t.run_epoch = run_epoch
"""


@pytest.mark.parametrize(
    "raise_oom,gist",
    [
        (
            "raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB. "
            "GPU 0 has a total capacity of 7.79 GiB of which 1.06 GiB is free.')",
            "(CUDA out of memory. Tried to allocate 2.00 GiB)",
        ),
        # a real allocation failure of the CPU allocator (64 TiB)
        ("torch.empty(1 << 46, dtype=torch.uint8)", "(DefaultCPUAllocator: can't allocate memory"),
    ],
    ids=["cuda", "cpu"],
)
def test_out_of_memory_suggests_a_smaller_batch_and_keeps_last_pt(tmp_path, raise_oom, gist):
    code = OOM_AT_EPOCH_2.format(raise_oom=raise_oom)
    proc = harness(tmp_path, code, "train", *RUN, "hydra.run.dir=run")
    run_dir = tmp_path / "run"
    assert proc.returncode == 1
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith(f"error: out of memory at batch_size=8 {gist}")
    assert "Use a smaller batch, e.g. batch_size=4" in line
    assert (
        f"last.pt is kept, continue from it with: cnnbench train resume={run_dir} batch_size=4"
        in line
    )
    assert "Traceback" not in proc.stderr
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1


def test_non_finite_loss_stops_with_one_message_and_keeps_best_pt(cli, tmp_path):
    # lr x 1e4 each epoch: epoch 1 trains (lr 1e-3), epoch 2 at lr 10 and epoch 3 at 1e5 blow up.
    args = [*RUN, "transforms=basic", "optimizer=sgd", "scheduler=step", "log_interval=1"]
    args += ["scheduler.step_size=1", "scheduler.gamma=1e4", "hydra.run.dir=run"]
    proc = cli("train", *args, check=False)
    run_dir = tmp_path / "run"
    assert proc.returncode == 1
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "error: loss became nan at epoch " in line or "error: loss became inf at epoch " in line
    assert "best.pt is kept as it was. Try a smaller optimizer.lr" in line
    assert "Traceback" not in proc.stderr
    best = load_checkpoint(run_dir / "best.pt")
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert best["epoch"] == 1 and best["val_loss"] == pytest.approx(float(rows[0]["val_loss"]))
    assert all(torch.isfinite(w).all() for w in best["model"].values())
    failed_epoch = int(line.split("at epoch ")[1].split(",")[0])
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == failed_epoch - 1 == len(rows)
    assert not (run_dir / "results.json").exists()


def test_graceful_stop_flag_and_handler_restoring():
    before = signal.getsignal(signal.SIGINT)
    with interrupt.graceful_stop():
        interrupt.arm()
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.requested()  # a flag, no exception: the step goes on
        interrupt.disarm()
    assert signal.getsignal(signal.SIGINT) is before and not interrupt.requested()
    with pytest.raises(SystemExit) as exc, interrupt.graceful_stop():
        os.kill(os.getpid(), signal.SIGTERM)  # not armed: stop at once
    assert exc.value.code == 143


def test_failed_write_keeps_the_old_file_and_killed_writes_are_cleaned(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"torn")  # as a SIGKILL mid-save leaves

    def disk_full(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(
        CnnbenchError, match="No space left on device; the previous last.pt is kept"
    ):
        atomic_write(path, disk_full)
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".last.pt.abc123.tmp", "last.pt"]
    save_checkpoint({"epoch": 2}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert load_checkpoint(path)["epoch"] == 2
