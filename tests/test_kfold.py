"""k-fold: stratified folds of the non-test data, and `cnnbench report`'s mean ± std per group."""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from test_csv_dataset import load, rows_for, write_csv
from test_data import write_images

from cnnbench.commands.report import report
from cnnbench.config import check_values, compose_checked
from cnnbench.data import load_dataset
from cnnbench.data.datasets import fold_of
from cnnbench.errors import CnnbenchError


def test_fold_of_is_stratified_balanced_and_seeded():
    labels = torch.tensor([0] * 23 + [1] * 10 + [2] * 4 + [3] * 1)
    fold = fold_of(labels, 5, seed=7)
    sizes = torch.bincount(fold, minlength=5)
    assert sizes.sum() == 38 and sizes.max() - sizes.min() <= 1
    for c, n in enumerate([23, 10, 4, 1]):
        per_fold = torch.bincount(fold[labels == c], minlength=5)
        assert per_fold.sum() == n and per_fold.max() - per_fold.min() <= 1, (c, per_fold)
    assert torch.equal(fold, fold_of(labels, 5, seed=7))
    assert not torch.equal(fold, fold_of(labels, 5, seed=8))


@pytest.fixture
def photos(tmp_path) -> Path:
    """30 red (label a) and 15 blue (label b) JPEGs, listed in photos/labels.csv."""
    root = tmp_path / "photos"
    write_images(root / "red", 30, (220, 40, 40), seed=1)
    write_images(root / "blue", 15, (40, 40, 220), seed=2)
    rows = rows_for({"red": "a"}, 30) + rows_for({"blue": "b"}, 15)
    write_csv(root / "labels.csv", rows)
    return root


def test_folds_are_disjoint_cover_the_non_test_data_and_keep_the_test_set(tmp_path, photos):
    csv_path = photos / "labels.csv"
    folds = [
        load(tmp_path, csv_path, "dataset.image_size=8", "dataset.folds=3", f"dataset.fold={i}")
        for i in range(3)
    ]
    tests = [d.test.files for d in folds]
    assert tests[0] == tests[1] == tests[2] and len(tests[0]) == 7  # test_split 0.15 of 45
    rest = set(folds[0].train.files) | set(folds[0].val.files)
    assert len(rest) == 38 and not rest & set(tests[0])
    vals = [set(d.val.files) for d in folds]
    assert sum(len(v) for v in vals) == 38 and set().union(*vals) == rest  # disjoint, covering
    for d, val in zip(folds, vals, strict=True):
        assert set(d.train.files) == rest - val and len(val) in (12, 13)
        red = sum(f.startswith("red/") for f in val)
        red_rest = sum(f.startswith("red/") for f in rest)
        assert abs(red - red_rest / 3) < 1  # stratified: each fold holds a third of each class
    again = load(tmp_path, csv_path, "dataset.image_size=8", "dataset.folds=3", "dataset.fold=1")
    assert again.val.files == folds[1].val.files


def test_folds_on_digits_and_the_errors(tmp_path):
    cfg = compose_checked(["dataset.folds=4", "dataset.fold=3"])
    data = load_dataset(cfg.dataset)
    assert len(data.test) == 270 and len(data.train) + len(data.val) == 1797 - 270
    assert len(data.val) in (381, 382)
    for override, message in [
        (["dataset.folds=5"], "k-fold needs both dataset.folds=K and dataset.fold=i"),
        (["dataset.fold=1"], "k-fold needs both dataset.folds=K and dataset.fold=i"),
        (["dataset.folds=1", "dataset.fold=0"], "dataset.folds must be >= 2"),
        (["dataset.folds=5", "dataset.fold=5"], "dataset.fold must be in 0..4"),
    ]:
        with pytest.raises(CnnbenchError, match=re.escape(message)):
            check_values(compose_checked(override))
    cfg = compose_checked(["dataset.folds=4", "dataset.fold=0", "dataset.splits=[0.8,0.1,0.1]"])
    with pytest.raises(CnnbenchError, match="dataset.splits and dataset.folds both choose"):
        load_dataset(cfg.dataset)
    root = tmp_path / "split"
    for cls, color in (("a", (250, 0, 0)), ("b", (0, 250, 0))):
        write_images(root / "train" / cls, 4, color)
        write_images(root / "val" / cls, 2, color)
    cfg = compose_checked(
        ["dataset=folder", f"dataset.root={root}", f"dataset.cache_dir={tmp_path / 'c'}"]
        + ["dataset.folds=2", "dataset.fold=0"]
    )
    with pytest.raises(CnnbenchError, match="comes with its own validation set"):
        load_dataset(cfg.dataset, num_workers=0, progress=False)


# ---------------------------------------------------------------- report: mean ± std per group


def write_job(
    job: Path, overrides: list[str], results: dict | None = None, error: str | None = None
):
    """A finished (results.json) or failed (error.txt) job dir with a two-epoch metrics.csv."""
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("epochs: 2\n")
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    loss = (results or {}).get("best_val_loss", 1.0)
    (job / "metrics.csv").write_text(
        "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n"
        f"1,2.0,0.5,{loss + 0.5},0.5,0.001,1.0\n2,1.0,0.7,{loss},0.7,0.001,1.0\n"
    )
    if results is not None:
        (job / "results.json").write_text(json.dumps(results))
    if error is not None:
        (job / "error.txt").write_text(error + "\n")


def test_report_groups_the_folds_with_mean_and_std(tmp_path, capsys):
    """2 models x 3 folds (one fold of lenet5 failed) and a job without a fold."""
    sweep = tmp_path / "multirun"
    known = {
        "alexnet_cifar": [(0.50, 0.80), (0.60, 0.70), (0.70, 0.90)],  # (best_val_loss, top1)
        "lenet5": [(0.30, 0.91), (0.40, 0.95), None],
    }
    job = 0
    for model, folds in known.items():
        for fold, values in enumerate(folds):
            overrides = [f"model={model}", "dataset.folds=3", f"dataset.fold={fold}"]
            results = None
            if values is not None:
                results = dict(
                    params={"alexnet_cifar": 2_000_000, "lenet5": 62_006}[model],
                    best_val_loss=values[0],
                    test_top1=values[1],
                    test_top5=1.0,
                    epochs=2,
                    wall_seconds=10.0 + fold,
                )
            write_job(sweep / str(job), overrides, results, None if values else "error: boom")
            job += 1
    single = dict(params=9, best_val_loss=0.45, test_top1=0.5, test_top5=1.0, epochs=2)
    write_job(sweep / "6", ["model=vgg11", "dataset.folds=3"], single | dict(wall_seconds=3.0))
    table = report(sweep)
    lines = table.splitlines()
    assert lines[0] == "common overrides: `dataset.folds=3`"
    assert lines[2].startswith("jobs that differ only in dataset.fold are one row: mean ± std")
    header = "| job | model | folds | params | best_val_loss | test_top1 | test_top5 | epochs |"
    assert lines[4].startswith(header)
    rows = [line[2:-2].split(" | ") for line in lines[6:]]
    assert [r[:3] for r in rows] == [
        ["3-5", "lenet5", "2 of 3"],
        ["6", "vgg11", ""],
        ["0-2", "alexnet_cifar", "3"],
    ]
    lenet, single, alex = rows
    assert single[3:9] == ["9", "0.4500", "0.5000", "1.0000", "2", "3.0"]  # no ± for one job
    assert lenet[3:8] == ["62,006", "0.3500 ± 0.0707", "0.9300 ± 0.0283", "1.0000 ± 0.0000", "2"]
    assert lenet[-2:] == ["2 ok, 1 failed", "error: boom"]
    assert alex[3:8] == [
        "2,000,000",
        f"0.6000 ± {statistics.stdev([0.5, 0.6, 0.7]):.4f}",
        f"0.8000 ± {statistics.stdev([0.8, 0.7, 0.9]):.4f}",
        "1.0000 ± 0.0000",
        "2",
    ]
    assert alex[8] == "11.0 ± 1.0" and alex[-2:] == ["ok", ""]

    saved = list(csv.DictReader((sweep / "leaderboard.csv").read_text().splitlines()))
    assert [r["job"] for r in saved] == ["3-5", "6", "0-2"]
    assert saved[1]["best_val_loss_std"] == "" and saved[1]["folds"] == ""
    assert float(saved[2]["best_val_loss"]) == pytest.approx(0.6)
    assert float(saved[2]["best_val_loss_std"]) == pytest.approx(0.1)
    assert float(saved[0]["test_top1_std"]) == pytest.approx(statistics.stdev([0.91, 0.95]))
    assert saved[0]["overrides"] == "model=lenet5 dataset.folds=3"

    per_job = report(sweep, per_job=True).splitlines()
    assert per_job[2].startswith("| job | model | dataset.fold | params |") and len(per_job) == 11
    sorted_by_top1 = report(sweep, sort="test_top1", desc=True).splitlines()
    assert sorted_by_top1[6].startswith("| 3-5 | lenet5 |")
