"""Debug runs: limit_*_batches, overfit_batches and recipe=debug."""

from __future__ import annotations

import csv
import re

import pytest
import torch
from conftest import read_json

from cnnbench.config import check_values, compose_checked
from cnnbench.data import ImageTensors, TensorLoader, build_transforms
from cnnbench.errors import CnnbenchError
from cnnbench.train import build_data


def tiny_loader(n: int, batch_size: int, shuffle: bool, limit, **kw) -> TensorLoader:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    data = ImageTensors(images, torch.arange(n))
    tf, _ = build_transforms(compose_checked([]).transforms, ([0.0], [1.0]), 1)
    return TensorLoader(
        data, batch_size, tf, torch.device("cpu"), shuffle=shuffle, limit=limit, **kw
    )


@pytest.mark.parametrize(
    "shuffle,limit,batches",
    [
        (True, None, 7),  # 100 images, batch 16: 6 full batches and one of 4
        (True, 3, 3),
        (True, 0.5, 3),  # int(7 * 0.5)
        (True, 0.01, 1),  # never fewer than one batch
        (True, 50, 7),  # a count above the epoch's batches: all of them
        (False, 2, 2),
        (False, 0.25, 1),
    ],
)
def test_limit_gives_the_right_number_of_batches(shuffle, limit, batches):
    loader = tiny_loader(100, 16, shuffle, limit)
    got = [y for _, y in loader]
    assert len(loader) == len(got) == batches
    assert [len(y) for y in got] == ([16] * batches if batches < 7 else [16] * 6 + [4])
    if not shuffle:  # evaluation: the first batches in order
        assert torch.cat(got).tolist() == list(range(16 * batches))
    assert loader.images_before(batches) == sum(len(y) for y in got)


def test_limit_with_resume_and_ddp_shards():
    loader = tiny_loader(100, 16, True, 3)
    loader.set_epoch(2)
    whole = [y for _, y in loader]
    loader.set_epoch(2, start_step=2)  # a resumed epoch: the rest of the same limited epoch
    assert [y.tolist() for _, y in loader] == [whole[2].tolist()]
    shards = [tiny_loader(100, 16, True, 2, rank=r, world_size=2) for r in (0, 1)]
    assert [len(s) for s in shards] == [2, 2]  # every rank steps the same number of times
    seen = [torch.cat([y for _, y in s]) for s in shards]
    assert all(len(y) == 32 for y in seen) and not set(seen[0].tolist()) & set(seen[1].tolist())


def test_overfit_batches_trains_and_validates_on_the_same_unaugmented_images():
    cfg = compose_checked(["overfit_batches=2", "batch_size=16", "transforms=cifar"])
    data = build_data(cfg, progress=False)
    assert len(data.splits.train) == 32 and data.train_tf is data.eval_tf
    assert torch.equal(data.splits.train.images, data.splits.val.images)
    assert len(data.splits.test) == 270  # the test split is untouched
    again = build_data(cfg, progress=False)
    assert torch.equal(again.splits.train.images, data.splits.train.images)  # seeded pick


def test_overfit_batches_drives_the_default_models_loss_to_zero(cli, tmp_path):
    """lenet5 on digits, 2 batches of 32, 40 epochs at a constant lr: ~1 s of training."""
    cli("train", "overfit_batches=2", "epochs=40", "scheduler=none", "device=cpu", "progress=false")
    (run,) = (tmp_path / "outputs").glob("*/*")
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert len(rows) == 40
    last = rows[-1]
    assert float(last["train_loss"]) < 0.05 and float(last["val_loss"]) < 0.05
    assert float(last["train_acc"]) == 1.0 and float(last["val_acc"]) == 1.0
    assert (
        "training and validating on the same 64 training images" in (run / "train.log").read_text()
    )


def test_recipe_debug_and_limits_take_the_right_number_of_steps(cli, tmp_path):
    proc = cli(
        "train",
        "recipe=debug",
        "limit_train_batches=3",
        "epochs=2",
        "scheduler=onecycle",  # planned over 2 x 3 steps: one more would be an error
        "device=cpu",
        "progress=false",
        "hydra.run.dir=run",
    )
    assert "debug run: 3 train, 2 val and 2 test batches per epoch" in proc.stdout + proc.stderr
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    steps = {int(s["step"]) for s in last["optimizer"]["state"].values()}
    assert steps == {6}  # Adam's step count: 2 epochs x 3 batches
    assert last["scheduler"]["last_epoch"] == 6
    results = read_json(tmp_path / "run" / "results.json")
    assert results["epochs"] == 2 and (tmp_path / "run" / "best.pt").is_file()


@pytest.mark.parametrize(
    "override,message",
    [
        ("limit_train_batches=0", "limit_train_batches must be a count of batches"),
        ("limit_val_batches=2.5", "limit_val_batches must be a count of batches"),
        ("limit_test_batches=-1", "limit_test_batches must be a count of batches"),
        ("overfit_batches=0", "overfit_batches must be >= 1"),
    ],
)
def test_bad_debug_values_stop_before_any_work(override, message):
    with pytest.raises(CnnbenchError, match=re.escape(message)):
        check_values(compose_checked([override]))
