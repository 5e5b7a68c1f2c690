"""`cnnbench plan`: its estimate against a real run of the same config, sweeps, memory, output.

The timing test compares plan's first-epoch estimate with the first epoch of a real
1-epoch run of the same config, both run in this test one after the other (so both see the
same load on a shared machine), on one thread (the steadiest on 2 shared cores).
"""

from __future__ import annotations

import csv
import json

import pytest

THREADS = ["device=cpu", "device.threads=1", "progress=false", "dataset=fake"]
# Sizes that give each model an epoch of ~1-10 s here: lenet5 needs many images to be
# measurable at all, alexnet_cifar (7 GFLOP per training image) few.
CONFIGS = {
    "lenet5": ["model=lenet5", "dataset.size=1500", "batch_size=32"],
    "alexnet_cifar": ["model=alexnet_cifar", "dataset.size=40", "batch_size=4"],
}


def first_epoch_seconds(run_dir) -> float:
    with open(run_dir / "metrics.csv") as f:
        return float(next(csv.DictReader(f))["seconds"])


@pytest.mark.parametrize("model", list(CONFIGS))
def test_plan_estimates_the_epoch_within_30_percent(cli, tmp_path, model):
    args = [*THREADS, *CONFIGS[model], "epochs=1"]
    cli("plan", *args, "--steps", "6", "--json", "plan.json")
    (plan,) = json.loads((tmp_path / "plan.json").read_text())
    cli("train", *args, "hydra.run.dir=run")
    measured = first_epoch_seconds(tmp_path / "run")
    estimate = plan["epoch_seconds"] + plan["first_epoch_extra_seconds"]
    assert abs(estimate - measured) / measured < 0.3, (model, estimate, measured, plan)
    assert plan["steps_per_epoch"] > 0 and plan["train_images_per_sec"] > 0


def test_plan_sweep_memory_max_batch_and_nothing_else_written(cli, tmp_path):
    args = [*THREADS, "dataset.size=64", "batch_size=8", "epochs=3", "--steps", "2"]
    out = cli("plan", "-m", "model=lenet5,fastnet", *args, "--max-batch", "--json", "p.json").stdout
    assert out.count("plan: ") == 2
    assert "plan: model=lenet5 device=cpu device.threads=1 progress=false dataset=fake" in out
    assert "plan: model=fastnet device=cpu" in out
    assert "lenet5: 62,006 parameters" in out  # 3-channel fake images
    assert "fastnet: 295,480 parameters" in out
    assert "GFLOP per image per training step (fwd+bwd)" in out
    assert "images/s training (timed over" in out
    assert "for 3 epochs: setup" in out
    assert "saved activations" in out and "saved_tensors_hooks" in out
    assert "max batch" in out and "MemAvailable" in out
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]  # no run dir, no outputs/

    plans = json.loads((tmp_path / "p.json").read_text())
    assert [p["model"] for p in plans] == ["lenet5", "fastnet"]
    lenet = plans[0]
    assert lenet["params"] == 62_006 and lenet["input_size"] == [3, 32, 32]
    assert lenet["train_images"] + lenet["val_images"] + lenet["test_images"] == 64
    assert lenet["precision"] == lenet["auto_precision"] == "fp32"
    parts = lenet["memory_detail"]
    assert parts["weights"] == 62_006 * 4 == parts["gradients"]
    assert parts["optimizer_state"] >= 2 * 62_006 * 4  # Adam: two moments
    assert 0 < parts["saved_activations"] < 8 * 3 * 32 * 32 * 4 * 20
    assert lenet["memory_bytes"] == sum(parts.values())
    assert lenet["run_seconds"] > 3 * lenet["epoch_seconds"]
    assert lenet["max_batch"] > 8 and "CPU: no out-of-memory error" in lenet["max_batch_method"]


def test_plan_errors_are_one_line(capsys):
    from cnnbench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "model=lenet55"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("error:") == 1
    assert "unknown model option 'lenet55'" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "-m", "optimizer.lr=interval(0.1,1)"])
    assert "cnnbench plan -m expands comma-separated values only" in capsys.readouterr().err
