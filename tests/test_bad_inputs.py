"""The bad-input table: every case is one `error:` line that says what is wrong and how to
fix it, exit code 1, no traceback (HYDRA_FULL_ERROR=1 shows one: tests/test_errors.py), no
checkpoint written, every file that existed before (a run's checkpoints, its saved config)
byte-identical afterwards, and no generated config left in the temp directory.

Cases that stop before Hydra starts a run (value checks, run-dir protection, damaged run
files) run the CLI in this process; the others run it as a subprocess, four at a time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_cnnbench


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 2-epoch lenet5 run (best.pt, last.pt, saved config) for the cases."""
    cwd = tmp_path_factory.mktemp("finished")
    run_cnnbench("train", *TINY, "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"


@dataclass
class Call:
    """A command line other than `cnnbench train ARGS` in the case's directory."""

    args: list[str]
    command: str = "train"
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


def _copy_run(finished: Path, tmp: Path, name: str = "copied-run") -> Path:
    copy = tmp / name
    shutil.copytree(finished, copy)
    return copy


def _damaged(run: Path, tmp: Path, file: str, content: bytes | None) -> Path:
    """A copy of the run with `file` replaced by `content` (removed when None)."""
    copy = _copy_run(run, tmp)
    (copy / file).unlink()
    if content is not None:
        (copy / file).write_bytes(content)
    return copy


def _saved_config_with(run: Path, tmp: Path, edit: Callable[[str], str]) -> Path:
    copy = _copy_run(run, tmp)
    path = copy / ".hydra" / "config.yaml"
    path.write_text(edit(path.read_text()))
    return copy


def _plain_state_dict_best(run: Path, tmp: Path) -> Path:
    copy = _copy_run(run, tmp)
    torch.save(torch.load(run / "best.pt", weights_only=True)["model"], copy / "best.pt")
    return copy


def _foreign_last(run: Path, tmp: Path) -> Path:
    """A copy whose last.pt holds another network's weights (same model name)."""
    copy = _copy_run(run, tmp)
    last = torch.load(run / "last.pt", weights_only=True)
    last["model"] = {"backbone.conv.weight": torch.zeros(4, 3, 3, 3)}
    torch.save(last, copy / "last.pt")
    return copy


def _started_only(run: Path, tmp: Path, keep_last: bool) -> Path:
    """A run dir as a run leaves it before its first epoch ends (last.pt if stopped in it)."""
    copy = tmp / "copied-run"
    shutil.copytree(run / ".hydra", copy / ".hydra")
    if keep_last:
        shutil.copy(run / "last.pt", copy / "last.pt")
    return copy


def _earlier_sweep(run: Path, tmp: Path) -> Path:
    """A sweep dir whose job 0 is a finished run."""
    _copy_run(run, tmp / "sweep", "0")
    return tmp / "sweep"


def _same_channel_images(tmp: Path) -> Path:
    """Two classes of images whose green and blue channels are one value throughout."""
    return _image_folder(tmp, ["cat", "dog"])


def _image_folder(tmp: Path, classes: list[str]) -> Path:
    from PIL import Image

    root = tmp / "images"
    root.mkdir()
    for name in classes:
        (root / name).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(root / name / f"{i}.png")
    return root


def _unwritable_dir(tmp: Path) -> Path:
    """A directory this process cannot write: chmod 555, or /sys when running as root."""
    ro = tmp / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        os.rmdir(tempfile.mkdtemp(dir=ro))
    except OSError:
        return ro
    ro.chmod(0o755)  # root writes anyway; a read-only kernel file system doesn't let it
    sys_dir = Path("/sys")
    try:
        os.rmdir(tempfile.mkdtemp(dir=sys_dir))
    except OSError:
        return sys_dir
    pytest.skip("no directory here is read-only for this user")


NO_DATA = [a for a in TINY if not a.startswith("dataset")]  # cases that pick another dataset

# name -> (overrides(tmp_path, finished_run) -> args, the expected part of the error line)
# the expected text: one string, or parts that must appear in this order
Case = tuple[Callable[[Path, Path], list[str]], str | tuple[str, ...]]
CASES: dict[str, Case] = {
    "nonexistent dataset root (cifar10)": (
        lambda tmp, run: [*NO_DATA, "dataset=cifar10", f"dataset.root={tmp}/nowhere"],
        "CIFAR-10 files not found under {tmp}/nowhere (expected {tmp}/nowhere/cifar-10-batches-py",
    ),
    "unknown model option": (
        lambda tmp, run: [*TINY, "model=alexnett"],
        "unknown model option 'alexnett'; valid model options: alexnet, alexnet_512, alexnet_cifar,",
    ),
    "unknown model name": (
        lambda tmp, run: [*TINY, "model.name=foo"],
        "unknown model 'foo'; valid models: alexnet, alexnet_512, alexnet_cifar,",
    ),
    "unknown dataset": (
        lambda tmp, run: [*TINY, "dataset=imagenet"],
        ("unknown dataset option 'imagenet'; valid dataset options: cifar10, ", "digits", "fake"),
    ),
    "unknown optimizer": (
        lambda tmp, run: [*TINY, "optimizer=adamm"],
        "unknown optimizer option 'adamm'; valid optimizer options: adam, adamw, sgd",
    ),
    "misspelled key": (
        lambda tmp, run: [*TINY, "optimizer.lrr=1"],
        "unknown config key 'optimizer.lrr'; valid keys in 'optimizer' (optimizer=adam): name, lr,",
    ),
    "wrong type": (
        lambda tmp, run: [*TINY, "epochs=abc"],
        "bad value for 'epochs': Value 'abc' of type 'str' could not be converted to Integer",
    ),
    "batch_size=0": (lambda tmp, run: [*TINY, "batch_size=0"], "batch_size must be >= 1 (got 0)"),
    "zero lr": (
        lambda tmp, run: [*TINY, "optimizer.lr=0"],
        "optimizer.lr must be a finite number > 0 (got 0.0)",
    ),
    "negative lr": (
        lambda tmp, run: [*TINY, "optimizer.lr=-1e-3"],
        "optimizer.lr must be a finite number > 0 (got -0.001)",
    ),
    "epochs=0": (lambda tmp, run: [*TINY, "epochs=0"], "epochs must be >= 1 (got 0)"),
    "output dir under a file": (
        lambda tmp, run: [*TINY, f"hydra.run.dir={_file(tmp)}/run"],
        "cannot create the run directory {tmp}/a-file/run: {tmp}/a-file is a file, not a "
        "directory; choose another hydra.run.dir=PATH",
    ),
    "output dir not writable": (
        lambda tmp, run: [*TINY, f"hydra.run.dir={_unwritable_dir(tmp)}/run"],
        "is not writable",
    ),
    "resume a dir with no checkpoint": (
        lambda tmp, run: [f"resume={_empty(tmp)}"],
        "resume={tmp}/empty: no last.pt in {tmp}/empty, so there is nothing to resume",
    ),
    "resume a dir that does not exist": (
        lambda tmp, run: [f"resume={tmp}/nowhere"],
        "resume={tmp}/nowhere: no such run directory",
    ),
    "resume with another model.name": (
        lambda tmp, run: [f"resume={_copy_run(run, tmp)}", "model.name=alexnet_cifar", "epochs=3"],
        (
            "resume={tmp}/copied-run cannot change model.name ('lenet5' -> 'alexnet_cifar'): ",
            "cnnbench rerun {tmp}/copied-run model.name=alexnet_cifar",
        ),
    ),
    "resume with a checkpoint from another network": (
        lambda tmp, run: [f"resume={_foreign_last(run, tmp)}", "epochs=3"],
        "{tmp}/copied-run/last.pt was written by model 'lenet5' and does not fit this run's "
        "LeNet5 or its optimizer (Missing key(s) in state_dict:",
    ),
    "resume switching the model group": (
        lambda tmp, run: [f"resume={_copy_run(run, tmp)}", "model=alexnet_cifar"],
        "cannot switch model= when continuing a saved run",
    ),
    "image size the model cannot take": (
        lambda tmp, run: [*TINY, "model=alexnet_cifar", "dataset.image_size=16"],
        ("model 'alexnet_cifar' cannot take 3x16x16 images", "expects 3x32x32", "resize=32"),
    ),
    "cuda without a GPU": (
        lambda tmp, run: [*TINY, "device=cuda"],
        "device=cuda was asked for but no CUDA GPU is available",
    ),
    "weights from another model": (
        lambda tmp, run: [*TINY, "dataset.size=40", "epochs=1", f"model.weights={_foreign(tmp)}"],
        ("{tmp}/other_model.pt", "does not fit", "Nothing was loaded"),
    ),
    # dataset=folder (the data layer's image folders)
    "nonexistent folder root": (
        lambda tmp, run: [*NO_DATA, "dataset=folder", f"dataset.root={tmp}/nowhere"],
        "{tmp}/nowhere",
    ),
    "empty folder": (
        lambda tmp, run: [*NO_DATA, "dataset=folder", f"dataset.root={_empty(tmp)}"],
        "{tmp}/empty",
    ),
    "one-class folder": (
        lambda tmp, run: [
            *NO_DATA,
            "dataset=folder",
            f"dataset.root={_image_folder(tmp, ['cat'])}",
        ],
        "cat",
    ),
    "class folder linked to another class folder": (
        lambda tmp, run: [*NO_DATA, "dataset=folder", f"dataset.root={_linked_class(tmp)}"],
        ("images/dog is a link to ", "images/cat, which overlaps the dataset folder", "link"),
    ),
    # ---- a run directory is never written over, a resume never rewrites the run's history
    "new run into a dir that holds a run": (
        lambda tmp, run: [*TINY, f"hydra.run.dir={_copy_run(run, tmp)}"],
        (
            "{tmp}/copied-run already holds a run (last.pt, best.pt, metrics.csv, results.json)",
            "continue it with `cnnbench train resume={tmp}/copied-run`",
            "another directory, e.g. hydra.run.dir='{tmp}/copied-run-2'",
        ),
    ),
    "new run with an empty hydra.run.dir= inside a run dir": (
        lambda tmp, run: Call([*TINY, "hydra.run.dir="], cwd=_copy_run(run, tmp)),
        ("{tmp}/copied-run already holds a run", "resume={tmp}/copied-run`", "copied-run-2"),
    ),
    "rerun into the run's own dir": (
        lambda tmp, run: Call(
            [str(_copy_run(run, tmp)), f"hydra.run.dir={tmp}/copied-run"], command="rerun"
        ),
        "{tmp}/copied-run already holds a run (last.pt, best.pt, metrics.csv, results.json)",
    ),
    "sweep into a dir that holds an earlier sweep": (
        lambda tmp, run: ["-m", *TINY, "seed=1,2", f"hydra.sweep.dir={_earlier_sweep(run, tmp)}"],
        (
            "hydra.sweep.dir={tmp}/sweep already holds 1 run(s) of an earlier sweep (0)",
            "hydra.sweep.dir='{tmp}/sweep-2'",
        ),
    ),
    "resume with another seed": (
        lambda tmp, run: [f"resume={_copy_run(run, tmp)}", "seed=3"],
        (
            "resume={tmp}/copied-run cannot change seed (0 -> 3): a resumed run keeps the values",
            "A resume may change only epochs, batch_size,",
            "cnnbench rerun {tmp}/copied-run seed=3",
        ),
    ),
    "resume a finished 2-epoch run with epochs=1": (
        lambda tmp, run: [f"resume={_copy_run(run, tmp)}", "epochs=1"],
        "resume={tmp}/copied-run epochs=1: the run has already trained 2 epoch(s) and is "
        "finished; epochs can only grow on resume",
    ),
    "resume a finished run without more epochs": (
        lambda tmp, run: [f"resume={_copy_run(run, tmp)}"],
        (
            "epochs=2: the run has already trained 2 epoch(s) and is finished",
            "its cosine schedule has ended",
            "cnnbench rerun {tmp}/copied-run model.weights={tmp}/copied-run/best.pt epochs=N",
        ),
    ),
    "run dir name too long": (
        lambda tmp, run: [*TINY, f"hydra.run.dir={tmp}/{'x' * 300}"],
        ("the folder name xxxx", "is 300 bytes long and this file system allows 255"),
    ),
    # ---- values checked before any data is loaded
    "seed below numpy's range": (
        lambda tmp, run: [*TINY, "seed=-1"],
        "seed must be in [0, 4294967295] (numpy's seed range; got -1)",
    ),
    "seed above numpy's range": (
        lambda tmp, run: [*TINY, "seed=4294967296"],
        "seed must be in [0, 4294967295] (numpy's seed range; got 4294967296)",
    ),
    "scheduler.step_size=0": (
        lambda tmp, run: [*TINY, "scheduler=step", "scheduler.step_size=0"],
        "scheduler.step_size must be >= 1 (got 0)",
    ),
    "negative momentum": (
        lambda tmp, run: [*TINY, "optimizer=sgd", "optimizer.momentum=-1"],
        "optimizer.momentum must be >= 0 (got -1.0)",
    ),
    "betas outside [0, 1)": (
        lambda tmp, run: [*TINY, "optimizer.betas=[1.5,0.9]"],
        "optimizer.betas must be two values in [0, 1) (got [1.5, 0.9])",
    ),
    "lr=nan": (
        lambda tmp, run: [*TINY, "optimizer.lr=nan"],
        "optimizer.lr must be a finite number > 0 (got nan)",
    ),
    "lr=inf": (
        lambda tmp, run: [*TINY, "optimizer.lr=inf"],
        "optimizer.lr must be a finite number > 0 (got inf)",
    ),
    "dataset.size=0": (lambda tmp, run: [*TINY, "dataset.size=0"], "dataset.size must be >= 1"),
    "dataset.channels=0": (
        lambda tmp, run: [*TINY, "dataset.channels=0"],
        "dataset.channels must be >= 1 (got 0)",
    ),
    "fake data of one class": (
        lambda tmp, run: [*TINY, "dataset.num_classes=1"],
        "dataset.num_classes must be >= 2 (got 1): a classifier needs at least two classes",
    ),
    "a zero transforms.std": (
        lambda tmp, run: [*TINY, "transforms.mean=[0,0,0]", "transforms.std=[0,1,1]"],
        "transforms.std must be > 0 for every channel (got [0.0, 1.0, 1.0])",
    ),
    "an image size beyond memory": (
        lambda tmp, run: [*TINY, "dataset.image_size=1000000"],
        ("dataset.image_size=1000000 needs at least ", "GiB (96 images of 3x1000000x1000000"),
    ),
    "unquoted path with '=' (taken as typed)": (
        lambda tmp, run: [*NO_DATA, "dataset=folder", "dataset.root=/data/a=b"],
        "dataset.root=/data/a=b: no such folder (/data/a=b)",
    ),
    "unquoted unicode path (taken as typed)": (
        lambda tmp, run: [*NO_DATA, "dataset=folder", "dataset.root=/data/ümlaut"],
        "dataset.root=/data/ümlaut: no such folder (/data/ümlaut)",
    ),
    "a value Hydra cannot parse": (
        lambda tmp, run: [*TINY, "num_workers=a#b"],
        ("cannot parse override 'num_workers=a#b'", "\"num_workers='a#b'\""),
    ),
    # ---- checked once the data is loaded or the model built, before training
    "model.num_classes below the data's classes": (
        lambda tmp, run: [*TINY, "model.num_classes=3"],
        "model.num_classes=3 is smaller than the 10 classes of dataset fake; drop "
        "model.num_classes",
    ),
    "batch_size=1 with BatchNorm": (
        lambda tmp, run: [*TINY, "model=fastnet", "batch_size=1"],
        "batch_size=1 cannot train model 'fastnet': its BatchNorm layers normalize each batch",
    ),
    "a data channel with std 0": (
        lambda tmp, run: [
            *NO_DATA,
            "dataset=folder",
            f"dataset.root={_same_channel_images(tmp)}",
            "dataset.splits=[4,1,1]",
        ],
        ("channel 1 of the training images has std ", " (every pixel is 80)", "normalize=none"),
    ),
    "loss nan in the first epoch": (
        lambda tmp, run: [*TINY, "optimizer=sgd", "optimizer.lr=1e30", "log_interval=1"],
        ("error: loss became ", "at epoch 1, step ", "; no best.pt was saved before it."),
    ),
    # ---- damaged or foreign files
    "a text file as model.weights": (
        lambda tmp, run: [*TINY, f"model.weights={_text_file(tmp)}"],
        "{tmp}/weights.pt is not a PyTorch checkpoint (neither a torch.save file nor a pickle",
    ),
    "an empty model.weights file": (
        lambda tmp, run: [*TINY, f"model.weights={_empty_file(tmp)}"],
        "{tmp}/empty.pt is empty (0 bytes): a copy or a save of it was cut short",
    ),
    "resume from a garbage last.pt": (
        lambda tmp, run: [f"resume={_damaged(run, tmp, 'last.pt', b'garbage, not a pickle')}"],
        "{tmp}/copied-run/last.pt is not a PyTorch checkpoint",
    ),
    "eval a best.pt that is a plain state_dict": (
        lambda tmp, run: Call([str(_plain_state_dict_best(run, tmp))], command="eval"),
        "{tmp}/copied-run/best.pt is a plain state_dict (weights only): eval, predict and export",
    ),
    "eval a run with an empty saved config": (
        lambda tmp, run: Call([str(_damaged(run, tmp, ".hydra/config.yaml", b""))], "eval"),
        "{tmp}/copied-run/.hydra/config.yaml is empty or not a mapping of config keys; cnnbench "
        "needs it to continue, evaluate or rerun the run",
    ),
    "eval a run with an invalid saved config": (
        lambda tmp, run: Call(
            [str(_damaged(run, tmp, ".hydra/config.yaml", b"model: [lenet5\n"))], "eval"
        ),
        "{tmp}/copied-run/.hydra/config.yaml is damaged (expected ',' or ']', but got",
    ),
    "saved config with duplicate keys": (
        lambda tmp, run: Call(
            [str(_saved_config_with(run, tmp, lambda t: t + "seed: 5\n"))], "eval"
        ),
        "{tmp}/copied-run/.hydra/config.yaml is damaged (found duplicate key seed (line ",
    ),
    "saved config with a !!python tag": (
        lambda tmp, run: Call(
            [
                str(
                    _saved_config_with(
                        run,
                        tmp,
                        lambda t: t.replace("seed: 0", "seed: !!python/object/apply:os.getcwd []"),
                    )
                )
            ],
            "eval",
        ),
        "config.yaml is damaged (could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.getcwd'",
    ),
    "saved config with a _target_": (
        lambda tmp, run: Call(
            [
                str(
                    _saved_config_with(
                        run, tmp, lambda t: t.replace("model:\n", "model:\n  _target_: os.system\n")
                    )
                )
            ],
            "rerun",
        ),
        "config.yaml holds 'model._target_': a cnnbench config never names code to instantiate",
    ),
    "saved config reading the environment": (
        lambda tmp, run: Call(
            [
                str(
                    _saved_config_with(
                        run, tmp, lambda t: t.replace("name: lenet5", "name: ${oc.env:SECRET}")
                    )
                )
            ],
            "eval",
            env={"SECRET": "hunter2-value"},
        ),
        "config.yaml sets model.name to an interpolation that calls the resolver 'oc.env' "
        "(${{oc.env:...}}); a saved run is read without resolving anything but its own keys",
    ),
    "eval a run stopped in its first epoch": (
        lambda tmp, run: Call([str(_started_only(run, tmp, keep_last=True))], "eval"),
        "{tmp}/copied-run has no best.pt yet: the run stopped before its first epoch ended; "
        "continue it with `cnnbench train resume={tmp}/copied-run`",
    ),
    "eval a run that failed before its first epoch": (
        lambda tmp, run: Call([str(_started_only(run, tmp, keep_last=False))], "eval"),
        "{tmp}/copied-run has no finished epoch (no best.pt, no last.pt)",
    ),
}

# Cases that fail inside the Hydra run (data, model, training) run as subprocesses; the
# others stop before Hydra starts and run the CLI in this process (fast).
SUBPROCESS = {
    "nonexistent dataset root (cifar10)",
    "unknown model name",
    "resume with a checkpoint from another network",
    "image size the model cannot take",
    "cuda without a GPU",
    "weights from another model",
    "nonexistent folder root",
    "empty folder",
    "one-class folder",
    "class folder linked to another class folder",
    "model.num_classes below the data's classes",
    "batch_size=1 with BatchNorm",
    "a data channel with std 0",
    "loss nan in the first epoch",
    "a text file as model.weights",
    "an empty model.weights file",
}
IN_PROCESS = set(CASES) - SUBPROCESS


def _text_file(tmp: Path) -> Path:
    (tmp / "weights.pt").write_text("these are my notes, not weights\n")
    return tmp / "weights.pt"


def _empty_file(tmp: Path) -> Path:
    (tmp / "empty.pt").write_bytes(b"")
    return tmp / "empty.pt"


def _linked_class(tmp: Path) -> Path:
    """An image folder whose class dog/ is a link to its class cat/."""
    root = _image_folder(tmp, ["cat"])
    os.symlink("cat", root / "dog")
    return root


def _file(tmp: Path) -> Path:
    (tmp / "a-file").write_text("not a directory")
    return tmp / "a-file"


def _foreign(tmp: Path) -> Path:
    """A state_dict of some other network."""
    torch.save({"backbone.conv.weight": torch.zeros(4, 3, 3, 3)}, tmp / "other_model.pt")
    return tmp / "other_model.pt"


def _empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _check_one_clear_error(proc, expected: tuple[str, ...]) -> str:
    """Exit code 1 and one `error:` line holding the `expected` parts in order; returns it."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    at = 0
    for part in expected:
        assert part in errors[0][at:], (part, errors[0])
        at = errors[0].index(part, at) + len(part)
    assert "Traceback" not in proc.stderr + proc.stdout
    return errors[0]


def _skip_reason(name: str) -> str | None:
    if name == "cuda without a GPU" and torch.cuda.is_available():
        return "needs a machine without a GPU"
    return None


Snapshot = dict[Path, bytes]


def _prepare(name: str, tmp: Path, finished: Path) -> tuple[Call | str, Snapshot]:
    """The case's command line (or the reason it is skipped) and every file in its
    directory before it runs (a temp dir for generated configs is made empty)."""
    reason = _skip_reason(name)
    if reason is None:
        try:
            made = CASES[name][0](tmp, finished)
        except pytest.skip.Exception as skip:
            reason = str(skip)
    if reason is not None:
        return reason, {}
    call = made if isinstance(made, Call) else Call(made)
    placed = ("hydra.run.dir=", "hydra.sweep.dir=", "resume=")
    if call.command == "train" and not any(a.startswith(placed) for a in call.args):
        call.args.append("hydra.run.dir=run")
    (tmp / "tmpdir").mkdir()
    return call, {p: p.read_bytes() for p in tmp.rglob("*") if p.is_file()}


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


def _in_process(call: Call, tmp: Path, monkeypatch, capsys) -> Outcome:
    """The real CLI in this process (the case stops before Hydra starts a run)."""
    from cnnbench.cli import main

    monkeypatch.chdir(call.cwd or tmp)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp / "tmpdir"))
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    for key, value in call.env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    code = 0
    try:
        main([call.command, *call.args])
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return Outcome(code, out, err)


def _subprocess(call: Call, tmp: Path) -> subprocess.CompletedProcess:
    env = {"TMPDIR": str(tmp / "tmpdir"), **call.env}
    return run_cnnbench(call.command, *call.args, cwd=call.cwd or tmp, check=False, env=env)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, finished_run) -> dict[str, tuple[object, Path, Snapshot]]:
    """Run every case not in IN_PROCESS as its own process, four at a time.

    name -> (the finished process, or the reason the case is skipped; its directory; the
    files in it before)
    """
    jobs: dict[str, tuple[object, Path, Snapshot]] = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for name in CASES:
            if name in IN_PROCESS:
                continue
            tmp = tmp_path_factory.mktemp("case")
            call, before = _prepare(name, tmp, finished_run)
            job = call if isinstance(call, str) else pool.submit(_subprocess, call, tmp)
            jobs[name] = (job, tmp, before)
        return {
            name: (job if isinstance(job, str) else job.result(), tmp, before)
            for name, (job, tmp, before) in jobs.items()
        }


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_error(request, finished_run, name, tmp_path, monkeypatch, capsys):
    if name in IN_PROCESS:
        tmp = tmp_path
        call, before = _prepare(name, tmp, finished_run)
        proc = call if isinstance(call, str) else _in_process(call, tmp, monkeypatch, capsys)
    else:  # the subprocess cases all run at once, when the first of them is reached
        proc, tmp, before = request.getfixturevalue("outcomes")[name]
    if isinstance(proc, str):
        pytest.skip(proc)
    _, expected = CASES[name]
    parts = (expected,) if isinstance(expected, str) else expected
    line = _check_one_clear_error(proc, tuple(part.format(tmp=tmp) for part in parts))
    assert not (tmp / "run" / "best.pt").exists()
    if name == "nonexistent dataset root (cifar10)":
        assert "dataset.download=true" in line and "urllib" not in proc.stderr
    if "folder" in name:
        assert "folder" in line
    if name == "saved config reading the environment":
        assert "hunter2" not in proc.stdout + proc.stderr
    # Nothing that existed is touched (a failed resume puts the run's saved config back; its
    # train.log is appended to, .hydra/lock names the last process that held it), and no
    # generated primary config (cnnbench-run-*) is left.
    for path, data in before.items():
        if path.name == "lock":
            continue
        now = path.read_bytes()
        assert now.startswith(data) if path.name == "train.log" else now == data, path
    assert not list((tmp / "tmpdir").glob("cnnbench-*"))
