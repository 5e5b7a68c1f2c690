"""The bad-input table: every case is one `error:` line that says what is wrong and how to
fix it, a non-zero exit, no traceback (HYDRA_FULL_ERROR=1 shows one: tests/test_errors.py),
and no checkpoint written."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_cnnbench


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished lenet5 run (best.pt, last.pt, saved config) to resume in the cases."""
    cwd = tmp_path_factory.mktemp("finished")
    run_cnnbench("train", *TINY, "epochs=1", "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"


def _copy_run(finished: Path, tmp: Path) -> Path:
    copy = tmp / "copied-run"
    shutil.copytree(finished, copy)
    return copy


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
    "resume with a checkpoint from another model": (
        lambda tmp, run: [f"resume={_copy_run(run, tmp)}", "model.name=alexnet_cifar", "epochs=2"],
        "{tmp}/copied-run/last.pt was written by model 'lenet5' and does not fit this run's "
        "AlexNetCifar or its optimizer (Missing key(s) in state_dict:",
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
}


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
    """One `error:` line holding the `expected` parts in order; returns it."""
    assert proc.returncode != 0
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


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, finished_run) -> dict[str, tuple[object, Path]]:
    """Run every case as its own `cnnbench train` process, four at a time.

    name -> (the finished process, or the reason the case is skipped; its directory)
    """
    jobs: dict[str, tuple[object, Path]] = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for name, (make_args, _) in CASES.items():
            tmp = tmp_path_factory.mktemp("case")
            reason = _skip_reason(name)
            if reason is None:
                try:
                    args = make_args(tmp, finished_run)
                except pytest.skip.Exception as skip:
                    reason = str(skip)
            if reason is not None:
                jobs[name] = (reason, tmp)
                continue
            if not any(a.startswith(("hydra.run.dir=", "resume=")) for a in args):
                args.append("hydra.run.dir=run")
            future = pool.submit(run_cnnbench, "train", *args, cwd=tmp, check=False)
            jobs[name] = (future, tmp)
        return {
            name: (job if isinstance(job, str) else job.result(), tmp)
            for name, (job, tmp) in jobs.items()
        }


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_error(outcomes, finished_run, name):
    proc, tmp = outcomes[name]
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
    copied = tmp / "copied-run"
    if copied.exists():  # a failed resume leaves the run's files as they were
        for file in [".hydra/config.yaml", "last.pt", "best.pt"]:
            assert (copied / file).read_bytes() == (finished_run / file).read_bytes(), file
