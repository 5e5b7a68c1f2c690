"""Sweeps with a failing job, `cnnbench report`, the Optuna sweeper, and kill + resume."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from conftest import REPO, TINY, read_json, run_cnnbench

SWEEP = [*TINY, "epochs=1", "dataset.image_size=32,16", "transforms.resize=null,32"]


def read_csv(path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.read_text().splitlines()))


def metric_rows(path) -> list[list[str]]:
    """metrics.csv without the wall-clock `seconds` column."""
    return [row[:-1] for row in csv.reader(path.read_text().splitlines())]


def cli_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """The real CLI entry point, in this process: (exit code, stdout, stderr)."""
    from cnnbench.cli import main

    code = 0
    try:
        main(list(args))
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """4 jobs; LeNet-5 cannot take the 16x16 images of job #2 (no resize): it fails at run time."""
    cwd = tmp_path_factory.mktemp("sweep")
    proc = run_cnnbench("train", "-m", *SWEEP, cwd=cwd, check=False)
    (sweep_dir,) = list((cwd / "multirun").glob("*/*"))
    return proc, sweep_dir


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(sweep):
    proc, sweep_dir = sweep
    assert proc.returncode == 1
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    error = (sweep_dir / "2" / "error.txt").read_text()
    assert error.startswith("model 'lenet5' cannot take 3x16x16 images")
    assert not (sweep_dir / "2" / "results.json").exists()
    assert "job #2 failed (the sweep goes on): model 'lenet5' cannot take" in proc.stdout
    assert "error: 1 of 4 sweep jobs failed (#2;" in proc.stderr
    assert "Traceback" not in proc.stderr
    for job in ["0", "1", "3"]:
        results = read_json(sweep_dir / job / "results.json")
        assert results["params"] == 62_006 and results["epochs"] == 1
        assert (sweep_dir / job / "curves.png").is_file()
        assert not (sweep_dir / job / "error.txt").exists()
    overrides = yaml.safe_load((sweep_dir / "3" / ".hydra" / "overrides.yaml").read_text())
    assert "dataset.image_size=16" in overrides and "transforms.resize=32" in overrides


def test_report_leaderboard(sweep, capsys):
    _, sweep_dir = sweep
    code, out, err = cli_in_process(
        capsys, "report", str(sweep_dir), "--sort", "test_top5", "--desc"
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("common overrides: `dataset=fake`")
    header = lines[2]
    assert header.startswith("| job | dataset.image_size | transforms.resize | params |")
    assert (
        "best_val_loss | test_top1 | test_top5 | epochs | wall_seconds | status | error |" in header
    )
    table = [line.split(" | ") for line in lines[4:]]
    assert len(table) == 4
    assert table[-1][0] == "| 2" and table[-1][-2] == "failed"
    assert "cannot take 3x16x16" in table[-1][-1]

    rows = read_csv(sweep_dir / "leaderboard.csv")
    assert [r["job"] for r in rows][-1] == "2"
    ok = rows[:3]
    top5 = [float(r["test_top5"]) for r in ok]
    assert top5 == sorted(top5, reverse=True)
    for row in ok:
        results = read_json(sweep_dir / row["job"] / "results.json")
        assert row["status"] == "ok" and row["error"] == ""
        assert int(row["params"]) == results["params"]
        assert float(row["best_val_loss"]) == pytest.approx(results["best_val_loss"])
        assert float(row["test_top1"]) == pytest.approx(results["test_top1"])
        assert int(row["epochs"]) == 1
        assert f"dataset.image_size={row['dataset.image_size']}" in row["overrides"]
    assert rows[-1]["status"] == "failed" and rows[-1]["epochs"] == "0"
    assert (sweep_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "leaderboard.csv" in err

    code, _, err = cli_in_process(capsys, "report", str(sweep_dir), "--sort", "speed")
    assert code == 1 and "cannot sort by 'speed'; valid keys: job, dataset.image_size" in err


def test_a_typo_in_a_swept_value_stops_the_sweep_before_any_job(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli_in_process(capsys, "train", "-m", *TINY, "model=lenet5,lenet55")
    assert code == 1
    assert err.startswith(
        "error: sweep value 'model=lenet55': unknown model option 'lenet55'; valid model options: "
    )
    assert "alexnet_cifar, " in err and "lenet5" in err
    assert err.count("\n") == 1 and err.strip().endswith("(no job was started)")
    code, _, err = cli_in_process(capsys, "train", "-m", *TINY, "optimizer.lr=1e-3,0")
    assert (
        code == 1
        and "sweep value 'optimizer.lr=0': invalid config: optimizer.lr must be a finite number > 0"
        in err
    )
    assert not (tmp_path / "multirun").exists()


def test_optuna_sweeper_minimizes_the_best_val_loss_and_survives_failed_trials(tmp_path):
    """The lr_search example on a 2x2 grid; the two 16x16 trials fail, the study goes on."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    args = [
        "hydra/sweeper=lr_search",
        "hydra/sweeper/sampler=grid",
        "optimizer.lr=choice(1e-3,1e-2)",
        "dataset.image_size=choice(16,32)",
        "batch_size=choice(16)",
        *(a for a in TINY if not a.startswith("batch_size")),
        "epochs=1",
    ]
    proc = run_cnnbench("train", "-m", *args, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "error: 2 of 4 sweep jobs failed" in proc.stderr
    (sweep_dir,) = list((tmp_path / "multirun").glob("*/*"))
    failed = sorted(p.parent.name for p in sweep_dir.glob("*/error.txt"))
    done = sorted(p.parent.name for p in sweep_dir.glob("*/results.json"))
    assert len(failed) == 2 and len(done) == 2 and sorted(failed + done) == ["0", "1", "2", "3"]
    for job in failed:
        assert "dataset.image_size=16" in (sweep_dir / job / ".hydra/overrides.yaml").read_text()
    found = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    losses = [read_json(sweep_dir / job / "results.json")["best_val_loss"] for job in done]
    assert found["best_value"] == pytest.approx(min(losses))
    assert found["best_params"]["dataset.image_size"] == 32


# ---- kill and resume -------------------------------------------------------------------

# The real CLI with one more registered model: small, with dropout (so the resumed run
# must restore the RNG streams), which SIGKILLs its own process at training step $KILL_AT.
WRAPPER = textwrap.dedent(
    """
    import os, signal, sys
    from torch import nn
    from cnnbench.cli import main
    from cnnbench.models.registry import register_model

    class TinyDropout(nn.Module):
        def __init__(self, num_classes, in_channels):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * 8 * 8, 32), nn.ReLU(),
                nn.Dropout(0.3), nn.Linear(32, num_classes),
            )
            self.steps = 0

        def forward(self, x):
            if self.training:
                self.steps += 1
                if self.steps == int(os.environ.get("KILL_AT", "0")):
                    os.kill(os.getpid(), signal.SIGKILL)
            return self.net(x)

    register_model("tiny_dropout", input_size=(3, 32, 32), num_classes=10, source="test")(
        TinyDropout
    )
    main(sys.argv[1:])
    """
)
RECIPE = [*TINY, "epochs=3", "model.name=tiny_dropout", "transforms=cifar", "seed=3"]
STEPS_PER_EPOCH = 5  # 74 training images of the 96, batch 16


def run_wrapped(tmp_path, *args: str, kill_at: int = 0) -> subprocess.CompletedProcess:
    script = tmp_path / "cnnbench_with_tiny_model.py"
    script.write_text(WRAPPER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "KILL_AT": str(kill_at)}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_run_killed_mid_epoch_and_resumed_ends_like_an_uninterrupted_one(tmp_path):
    full = run_wrapped(tmp_path, "train", *RECIPE, "hydra.run.dir=outputs/full")
    assert full.returncode == 0, full.stderr

    killed = run_wrapped(
        tmp_path, "train", *RECIPE, "hydra.run.dir=outputs/killed", kill_at=STEPS_PER_EPOCH + 3
    )
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "outputs" / "killed"
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 1
    assert len(metric_rows(run_dir / "metrics.csv")) == 2  # header + epoch 1
    assert not (run_dir / "results.json").exists()

    # A newer run of another config (seed 4), with a last.pt: resume=auto must pass over it.
    full_dir, other = tmp_path / "outputs" / "full", tmp_path / "outputs" / "other"
    (other / ".hydra").mkdir(parents=True)
    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    (other / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**cfg, "seed": 4}))
    shutil.copy(full_dir / "last.pt", other / "last.pt")

    resumed = run_wrapped(tmp_path, "train", *RECIPE, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {run_dir} after epoch 1" in resumed.stdout

    assert metric_rows(run_dir / "metrics.csv") == metric_rows(full_dir / "metrics.csv")
    assert len(metric_rows(run_dir / "metrics.csv")) == 4
    a, b = read_json(full_dir / "results.json"), read_json(run_dir / "results.json")
    for key in ["test_loss", "test_top1", "test_top5", "best_epoch", "best_val_loss"]:
        assert b[key] == pytest.approx(a[key], rel=1e-6), key


def test_resume_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_cnnbench("train", *TINY, "epochs=1", "hydra.run.dir=run", cwd=tmp_path)
    run_dir = tmp_path / "run"

    code, _, err = cli_in_process(capsys, "train", "resume=auto", "seed=99", *TINY, "epochs=1")
    assert code == 1 and "resume=auto: no run with a last.pt under" in err
    code, _, err = cli_in_process(capsys, "train", f"resume={tmp_path / 'nowhere'}")
    assert code == 1 and "no such run directory" in err

    # Another model on resume: refused up front (the saved config would lie); one message,
    # the checkpoints kept. (A last.pt of another network: tests/test_bad_inputs.py.)
    proc = run_cnnbench(
        "train", f"resume={run_dir}", "model.name=alexnet_cifar", cwd=tmp_path, check=False
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: resume={run_dir} cannot change model.name ")
    assert proc.stderr.count("\n") == 1
    assert (run_dir / "best.pt").is_file() and (run_dir / "last.pt").is_file()

    (run_dir / "last.pt").unlink()
    code, _, err = cli_in_process(capsys, "train", f"resume={run_dir}")
    assert code == 1 and "no last.pt in" in err
