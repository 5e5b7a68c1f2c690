"""`cnnbench train` end to end: the default run, run-dir contents, groups, reproducibility."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import yaml
from conftest import TINY, read_json, run_cnnbench

RESULT_KEYS = {
    "test_loss",
    "test_top1",
    "test_top5",
    "best_epoch",
    "epochs",
    "wall_seconds",
    "train_images_per_sec",
    "params",
}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The README's first command: plain `cnnbench train` in an empty directory."""
    cwd = tmp_path_factory.mktemp("default")
    proc = run_cnnbench("train", cwd=cwd)
    (run_dir,) = [p for p in (cwd / "outputs").glob("*/*") if p.is_dir()]
    return proc, run_dir


def test_default_run_trains_digits_lenet5_to_95_percent(default_run):
    proc, run_dir = default_run
    results = read_json(run_dir / "results.json")
    assert results.keys() >= RESULT_KEYS
    assert results["params"] == 61_706  # LeNet-5, 1 channel, 10 classes
    assert results["epochs"] == 20
    assert results["test_top1"] >= 0.95
    assert results["test_top5"] >= results["test_top1"]
    assert 0 < results["test_loss"] < 0.5
    assert results["wall_seconds"] < 60
    assert results["train_images_per_sec"] > 1000
    assert 1 <= results["best_epoch"] <= 20


def test_default_run_writes_a_complete_run_dir(default_run):
    proc, run_dir = default_run
    for name in ["best.pt", "last.pt", "metrics.csv", "summary.txt", "results.json"]:
        assert (run_dir / name).is_file(), name
    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert cfg["model"]["name"] == "lenet5"
    assert cfg["dataset"]["name"] == "digits"
    assert cfg["optimizer"] == {**cfg["optimizer"], "name": "adam", "lr": 0.001}
    assert cfg["epochs"] == 20 and cfg["batch_size"] == 32

    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert list(rows[0]) == [
        "epoch",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "lr",
        "seconds",
    ]
    assert [int(r["epoch"]) for r in rows] == list(range(1, 21))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    lrs = [float(r["lr"]) for r in rows]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] < lrs[0]  # cosine schedule by default

    # The improvement message, once per improvement, and best.pt holds the best epoch.
    improved = [line for line in proc.stdout.splitlines() if "val_loss has been improved" in line]
    assert improved[0].startswith("[INFO] val_loss has been improved from inf to ")
    assert improved[0].endswith(". Saving Model!")
    best_val = min(float(r["val_loss"]) for r in rows)
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["val_loss"] == pytest.approx(best_val, rel=1e-4)
    assert best["epoch"] == read_json(run_dir / "results.json")["best_epoch"]
    assert best["classes"] == [str(d) for d in range(10)]
    last = torch.load(run_dir / "last.pt", weights_only=True)
    assert last["epoch"] == 20 and {"model", "optimizer", "scheduler", "rng"} <= last.keys()

    summary = (run_dir / "summary.txt").read_text()
    assert "Total params: 61,706" in summary
    assert "[-1, 6, 28, 28]" in summary  # conv1 output at the real 32x32 input
    assert summary in proc.stdout


def test_alexnet_cifar_composes_from_groups(cli, tmp_path):
    proc = cli(
        "train",
        "model=alexnet_cifar",
        "dataset=fake",
        "dataset.size=40",
        "optimizer=sgd",
        "optimizer.lr=1e-3",
        "optimizer.nesterov=true",
        "scheduler=step",
        "transforms=cifar",
        "epochs=1",
        "batch_size=16",
        "device=cpu",
        "hydra.run.dir=run",
    )
    run_dir = tmp_path / "run"
    results = read_json(run_dir / "results.json")
    assert results["params"] == 58_292_074
    assert "Total params: 58,292,074" in (run_dir / "summary.txt").read_text()
    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert cfg["optimizer"]["name"] == "sgd" and cfg["optimizer"]["nesterov"] is True
    assert cfg["optimizer"]["momentum"] == 0.9
    assert cfg["transforms"]["crop_padding"] == 4
    assert "training alexnet_cifar (58,292,074 params) on cpu" in proc.stdout


def test_same_seed_gives_identical_metrics(cli, tmp_path):
    def metrics(run: str) -> list[list[str]]:
        cli("train", *TINY, "seed=7", "transforms=cifar", "optimizer=adamw", f"hydra.run.dir={run}")
        rows = list(csv.reader((tmp_path / run / "metrics.csv").open()))
        return [row[:-1] for row in rows]  # all but the wall-clock `seconds` column

    first, second = metrics("a"), metrics("b")
    assert first == second
    cli("train", *TINY, "seed=8", "transforms=cifar", "optimizer=adamw", "hydra.run.dir=c")
    third = [row[:-1] for row in csv.reader((tmp_path / "c" / "metrics.csv").open())]
    assert third != first


def test_runs_go_to_dated_output_dirs_of_the_working_directory(cli, tmp_path):
    cli("train", *TINY, "epochs=1")
    (run_dir,) = list((tmp_path / "outputs").glob("*/*"))
    assert run_dir.parent.name.count("-") == 2 and run_dir.name.count("-") == 2  # DATE/TIME
    assert (run_dir / "results.json").is_file()


def test_help_lists_groups_and_options(cli):
    from cnnbench.config import GROUPS, group_options

    out = cli("train", "--help").stdout
    for group in GROUPS:  # Hydra lists each group's options sorted, registered and YAML alike
        assert f"{group}: {', '.join(sorted(group_options(group)))}" in out


def test_resume_with_more_epochs_replans_the_schedule(cli, tmp_path):
    """resume=DIR epochs=N extends a run: onecycle is re-planned (torch would refuse to step
    past its old total); a finished cosine schedule is refused (it would stay at min_lr)."""
    cli("train", *TINY, "scheduler=onecycle", "hydra.run.dir=oc")
    proc = cli("train", "resume=oc", "epochs=4")
    assert "onecycle schedule re-planned from 10 to 20 steps (4 epochs)" in proc.stdout
    rows = list(csv.DictReader((tmp_path / "oc" / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    # Epoch 4 starts at step 15 of the new plan: warmup to 1e-3 ended at step 4, then a
    # cosine anneal over steps 4..19.

    expected = 1e-3 / 25 / 1e4 + (1e-3 - 1e-3 / 25 / 1e4) * (1 + math.cos(math.pi * 11 / 15)) / 2
    assert float(rows[3]["lr"]) == pytest.approx(expected, rel=1e-3)
    state = torch.load(tmp_path / "oc" / "last.pt", weights_only=True)
    assert state["epoch"] == 4 and state["scheduler"]["total_steps"] == 20

    cli("train", *TINY, "hydra.run.dir=cos")  # cosine over 2 epochs: ends at min_lr
    err = cli("train", "resume=cos", "epochs=3", check=False).stderr  # would train at lr 0
    assert f"the cosine schedule of {tmp_path / 'cos'} ended at epoch 2 (lr = min_lr)" in err
