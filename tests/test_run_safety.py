"""A run directory is one run's: locked while written, never written over; Ctrl-C anywhere is
one line and exit 130/143; damaged files, full disks and 20,000 classes are handled.

(The one-line errors of bad inputs are the table in tests/test_bad_inputs.py.)
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY, read_json, run_cnnbench
from omegaconf import OmegaConf

from cnnbench.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from cnnbench.errors import CnnbenchError

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
ENV.pop("HYDRA_FULL_ERROR", None)


def start(cwd: Path, *args: str, **kw) -> subprocess.Popen:
    """`cnnbench ARGS` in the background, its output to cwd/stdout and cwd/stderr."""
    return subprocess.Popen(
        [sys.executable, "-m", "cnnbench", *args],
        cwd=cwd,
        env=ENV,
        stdout=(cwd / "stdout").open("w"),
        stderr=(cwd / "stderr").open("w"),
        text=True,
        **kw,
    )


def output(cwd: Path, proc: subprocess.Popen) -> subprocess.CompletedProcess:
    proc.wait(timeout=240)
    out, err = (cwd / "stdout").read_text(), (cwd / "stderr").read_text()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for(check, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, "the process ended early"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def harness(cwd: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    """`cnnbench ARGS` in a fresh interpreter after `code` (patches that send signals)."""
    script = "import os, signal, sys\n" + textwrap.dedent(code)
    script += "\nfrom cnnbench.cli import main\nmain(sys.argv[1:])\n"
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def one_stop_message(proc, code: int, name: str) -> None:
    """Exit 128 + signal, one line saying so, no traceback."""
    assert proc.returncode == code, proc.stderr[-3000:]
    assert proc.stderr.count(f"{name} received") == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("finished")
    run_cnnbench("train", *TINY, "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"


# ---- one run directory, one process


def test_a_second_process_is_refused_while_the_first_writes_and_a_dead_ones_lock_is_not(
    tmp_path,
):
    run_dir = tmp_path / "run"
    long = ["dataset.size=2000", "epochs=100000"]  # runs for as long as the test needs
    first = start(tmp_path, "train", *TINY, *long, "hydra.run.dir=run")
    lock = run_dir / ".hydra" / "lock"
    wait_for(lambda: (run_dir / "last.pt").exists(), first)  # running, past its first epoch
    assert lock.read_text().strip() == str(first.pid)

    again = run_cnnbench("train", *TINY, "hydra.run.dir=run", cwd=tmp_path, check=False)
    resumed = run_cnnbench("train", f"resume={run_dir}", cwd=tmp_path, check=False)
    for proc in (again, resumed):
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith(
            f"error: {run_dir} is in use by another cnnbench process (pid {first.pid}) that "
            "writes there; wait for it to end (or stop it)"
        )
    assert "hydra.run.dir='" in again.stderr and "hydra.run.dir" not in resumed.stderr

    first.kill()  # SIGKILL: no clean-up; the OS drops the lock with the process
    first.wait()
    done = load_checkpoint(run_dir / "last.pt")["epoch"]
    proc = run_cnnbench("train", f"resume={run_dir}", f"epochs={done + 1}", cwd=tmp_path)
    assert f"resuming {run_dir} after epoch {done}" in proc.stdout
    assert read_json(run_dir / "results.json")["epochs"] == done + 1
    assert lock.read_text().strip() != str(first.pid)  # the resume held it


def test_resume_may_change_how_a_run_goes_on_not_what_it_learns(tmp_path):
    from cnnbench.config import compose_checked
    from cnnbench.runs import check_resume

    base = ["dataset=folder", "dataset.root=/data/a", "epochs=5"]
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(compose_checked(base), run_dir / ".hydra" / "config.yaml")
    save_checkpoint({"epoch": 2, "partial": None}, run_dir / "last.pt")

    moved = ["dataset.root=/data/b", "optimizer.lr=0.1"]
    with pytest.raises(CnnbenchError) as refused:
        check_resume(run_dir, compose_checked(base + moved), moved)
    assert str(refused.value).startswith(
        f"resume={run_dir} cannot change dataset.root ('/data/a' -> '/data/b'), optimizer.lr "
        "(0.001 -> 0.1): a resumed run keeps the values it was started with"
    )
    assert str(refused.value).endswith(
        f"cnnbench rerun {run_dir} dataset.root=/data/b optimizer.lr=0.1"
    )
    how = ["epochs=3", "num_workers=4", "batch_size=8", "device=cpu", "device.threads=1"]
    how += ["dataset.root=/data/a"]  # the same value is no change
    check_resume(run_dir, compose_checked(base + how), how)  # epochs=3 > 2 trained
    with pytest.raises(CnnbenchError, match="already trained 2 epoch"):
        check_resume(run_dir, compose_checked([*base, "epochs=1"]), ["epochs=1"])
    check_resume(run_dir, compose_checked([*base, "epochs=2"]), ["epochs=2"])  # its test is due
    (run_dir / "results.json").write_text("{}")  # ... and once done, nothing is left to do
    with pytest.raises(CnnbenchError, match="already trained 2 epoch.* and is finished"):
        check_resume(run_dir, compose_checked([*base, "epochs=2"]), ["epochs=2"])


# ---- Ctrl-C / SIGTERM anywhere: one line, 130/143, nothing half-written

SIGNAL_ON_IMPORT = """
import importlib
_import = importlib.import_module
def import_module(name, *args):
    if name.startswith("cnnbench.commands."):  # the command's heavy imports (torch, ...)
        os.kill(os.getpid(), signal.{sig})
    return _import(name, *args)
importlib.import_module = import_module
"""


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_during_start_up_stops_with_one_line(tmp_path, sig, code):
    proc = harness(tmp_path, SIGNAL_ON_IMPORT.format(sig=sig), "train", *TINY)
    one_stop_message(proc, code, sig)
    assert f"{sig} received: stopping" in proc.stderr
    assert not (tmp_path / "outputs").exists()


SIGNAL_IN = """
import {module} as m
_original = m.{name}
def patched(*args, **kwargs):
    os.kill(os.getpid(), signal.{sig})
    return _original(*args, **kwargs)
m.{name} = patched
"""


@pytest.mark.parametrize(
    "command,module,name,sig",
    [
        ("eval", "cnnbench.commands.eval", "evaluate", "SIGINT"),
        ("eval", "cnnbench.commands.eval", "evaluate", "SIGTERM"),
        ("predict", "cnnbench.commands.predict", "decode_file", "SIGINT"),
    ],
)
def test_a_signal_during_eval_or_predict_stops_with_one_line(
    finished, tmp_path, command, module, name, sig
):
    code = SIGNAL_IN.format(module=module, name=name, sig=sig)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (10, 200, 30)).save(image)
    args = [str(finished), *([str(image)] if command == "predict" else [])]
    proc = harness(tmp_path, code, command, *args, "--out", str(tmp_path / "out"))
    one_stop_message(proc, 130 if sig == "SIGINT" else 143, sig)
    assert not (tmp_path / "out").exists()  # nothing half-written


STOP_SECOND_JOB = """
import cnnbench.train as t
_run_epoch = t.run_epoch
def run_epoch(net, loader, step, state, cfg, *args):
    if cfg.seed == 2 and state.epoch == 1:  # job #1, as its second epoch starts
        os.kill(os.getpid(), signal.SIGINT)
    return _run_epoch(net, loader, step, state, cfg, *args)
t.run_epoch = run_epoch
"""


def test_ctrl_c_in_a_sweep_saves_the_job_and_reports_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["train", "-m", *TINY, "seed=1,2,3", f"hydra.sweep.dir={sweep}"]
    proc = harness(tmp_path, STOP_SECOND_JOB, *args)
    one_stop_message(proc, 130, "SIGINT")
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("sweep stopped")]
    assert line == (
        f"sweep stopped by SIGINT: #0 finished; #1 was stopped, resume it with: cnnbench train "
        f"resume={sweep}/1. The jobs after it did not start; the sweep's runs are in {sweep}"
    )
    assert (sweep / "0" / "results.json").is_file() and not (sweep / "2").exists()
    assert load_checkpoint(sweep / "1" / "last.pt")["epoch"] == 1
    run_cnnbench("train", f"resume={sweep}/1", cwd=tmp_path)  # the printed command
    assert read_json(sweep / "1" / "results.json")["epochs"] == 2


def test_dataloader_workers_stay_silent_on_ctrl_c(tmp_path):
    """Ctrl-C in a terminal signals the whole process group, the DataLoader workers of a
    streamed folder included: one message, from the main process, which saves last.pt."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(20):
            pixels = rng.integers(0, 255, (32, 32, 3), np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / c / f"{i}.png")
    args = ["dataset=folder", "dataset.root=imgs", "dataset.cache=off", "dataset.max_memory_mb=0"]
    args += ["num_workers=2"]
    args += ["epochs=500", "batch_size=8", "device=cpu", "progress=false", "hydra.run.dir=run"]
    args += [f"dataset.cache_dir={tmp_path / 'cache'}"]
    proc = start(tmp_path, "train", *args, start_new_session=True)
    wait_for(lambda: (tmp_path / "run" / "last.pt").exists(), proc)
    os.killpg(proc.pid, signal.SIGINT)
    done = output(tmp_path, proc)
    assert "streaming with 2 loader workers" in done.stdout
    one_stop_message(done, 130, "SIGINT")
    assert "last.pt saved" in done.stdout


# ---- files: full disks, damaged checkpoints and configs


def test_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)

    def disk_full_after(limit: int):
        written = [0]

        def write(self, data):  # the real file's write, on a disk with `limit` bytes left
            written[0] += len(data)
            if written[0] > limit:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        return write

    # torch.save turns the write's OSError into "unexpected pos ..." (a RuntimeError)
    real_fdopen = os.fdopen

    class FullDisk:  # the temp file, on a disk with 2,000 bytes left
        def __init__(self, f) -> None:
            self.f, self.left = f, 2000

        def write(self, data) -> int:
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    big = {"w": torch.zeros(100_000)}
    with pytest.raises(CnnbenchError) as full:
        save_checkpoint(big, path)
    assert str(full.value) == (
        f"could not write {path}: No space left on device; the previous last.pt is kept"
    )
    monkeypatch.undo()

    def torch_error(f):  # the RuntimeError alone, as a writer that hides the OSError gives it
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    with pytest.raises(CnnbenchError, match=r"could not write .*; the previous last.pt is kept"):
        atomic_write(path, torch_error)
    with pytest.raises(CnnbenchError, match="File name too long"):
        save_checkpoint(big, tmp_path / ("x" * 300))
    assert load_checkpoint(path) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_damaged_checkpoints_are_named_for_what_they_are(tmp_path):
    import pickle

    cases = {
        b"": "is empty (0 bytes)",
        b"epoch: 3\n": "is not a PyTorch checkpoint (neither a torch.save file nor a pickle",
        bytes([0x80, 2, 0xFF, 0x00, 0x13]): "could not read checkpoint",
        pickle.dumps({"a": 1}): "it is a pickle but not a torch.save checkpoint",
        pickle.dumps(os.getcwd): "refused to load",
    }
    for i, (data, expected) in enumerate(cases.items()):
        path = tmp_path / f"{i}.pt"
        path.write_bytes(data)
        with pytest.raises(CnnbenchError) as err:
            load_checkpoint(path)
        assert expected in str(err.value), (data, str(err.value))
        assert "could run code" not in str(err.value)
    assert "calls posix.getcwd when loaded" in str(err.value)


def test_check_finite_says_best_pt_is_kept_only_when_it_exists(tmp_path):
    import math

    from cnnbench.engine import TrainStep

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    step = TrainStep(opt, torch.nn.CrossEntropyLoss(), best_path=tmp_path / "best.pt")
    with pytest.raises(CnnbenchError) as none_yet:
        step.check_finite(math.inf, "at epoch 1, step 3")
    assert str(none_yet.value).startswith(
        "loss became inf at epoch 1, step 3 (lr 0.5); no best.pt was saved before it. Try"
    )
    save_checkpoint({"epoch": 1}, tmp_path / "best.pt")
    with pytest.raises(CnnbenchError, match=r"\(lr 0.5\); best.pt is kept as it was. Try"):
        step.check_finite(math.nan, "at epoch 2, step 3")


def test_a_saved_config_may_refer_to_its_own_keys(finished, tmp_path):
    """${epochs} is the run's own value; ${oc.env:...} is refused (tests/test_bad_inputs.py)."""
    import shutil

    from cnnbench.runs import compose_saved

    copy = tmp_path / "run"
    shutil.copytree(finished / ".hydra", copy / ".hydra")
    path = copy / ".hydra" / "config.yaml"
    path.write_text(path.read_text().replace("log_interval: 50", "log_interval: ${epochs}"))
    assert compose_saved(copy).log_interval == 2


# ---- eval with 20,000 classes


def test_eval_of_20000_classes_builds_no_class_by_class_matrix(tmp_path):
    """A 20,000 x 20,000 confusion matrix is 3.2 GB: eval of a few images must stay small."""
    args = ["dataset.size=40", "epochs=1", "model.num_classes=20000", "hydra.run.dir=run"]
    run_cnnbench("train", *TINY, *args, cwd=tmp_path)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a child forked from a
    # big pytest process would report the parent's size
    code = "import atexit, re\natexit.register(lambda: print('peak', re.search("
    code += "r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)))\n"
    proc = harness(tmp_path, code, "eval", "run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    peak_mb = int(proc.stdout.split("peak ")[-1]) / 1024  # VmHWM is in KiB
    assert peak_mb < 1500, peak_mb
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert metrics["confusion_matrix"] is None and len(metrics["classes"]) == 20000
    assert not (tmp_path / "run" / "eval" / "confusion_matrix.png").exists()
    rows = (tmp_path / "run" / "eval" / "per_class.csv").read_text().splitlines()
    assert len(rows) == 20001
