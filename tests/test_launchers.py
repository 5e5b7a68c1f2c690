"""Hydra launchers: joblib (parallel local sweeps), submitit (SLURM, and its local twin)."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import TINY, read_json

from cnnbench.device import cpu_count
from cnnbench.errors import CnnbenchError
from cnnbench.sweep import check_plugins

JOBLIB = "hydra_plugins.hydra_joblib_launcher"
SUBMITIT = "hydra_plugins.hydra_submitit_launcher"


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # no hydra_plugins package at all
        return False


def sweep_dir_of(cwd):
    (sweep,) = list((cwd / "multirun").glob("*/*"))
    return sweep


@pytest.mark.skipif(not installed(JOBLIB), reason="pip install 'cnnbench[joblib]'")
def test_joblib_runs_a_sweep_in_parallel_and_reports_the_failed_job(cli, tmp_path):
    proc = cli(
        "train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY,
        "model=lenet5,lenet_224", "optimizer.lr=1e-3,1e-2", check=False,
    )  # fmt: skip
    sweep = sweep_dir_of(tmp_path)
    assert proc.returncode == 1
    # The jobs ran in joblib's worker processes; the failures are still found and named.
    assert "error: 2 of 4 sweep jobs failed (#2, #3;" in proc.stderr
    assert f"cnnbench report {sweep.relative_to(tmp_path)}" in proc.stderr
    for job in ("0", "1"):
        results = read_json(sweep / job / "results.json")
        assert results["model"] == "lenet5" and results["epochs"] == 2
        # Two jobs at once on this machine: each takes its share of the cores.
        log = (sweep / job / "train.log").read_text()
        threads = max(1, cpu_count() // 2)
        assert f"(fp32, {threads} threads)" in log
    for job in ("2", "3"):
        assert "lenet_224' cannot take 3x32x32 images" in (sweep / job / "error.txt").read_text()
    report = cli("report", str(sweep))
    assert "| 0 | lenet5 | 0.001 |" in report.stdout and "| failed |" in report.stdout


@pytest.mark.skipif(not installed(SUBMITIT), reason="pip install 'cnnbench[slurm]'")
def test_slurm_launcher_config_composes_and_resolves():
    from hydra import compose, initialize_config_module
    from hydra.utils import get_class

    from cnnbench.config import register_configs

    register_configs()  # the schemas train.yaml validates against
    with initialize_config_module("cnnbench.configs", version_base=None):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
    assert launcher.timeout_min == 240 and launcher.array_parallelism == 16
    assert launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"  # in the sweep dir


@pytest.mark.skipif(not installed(SUBMITIT), reason="pip install 'cnnbench[slurm]'")
def test_submitit_local_runs_each_job_in_its_own_process(cli, tmp_path):
    cli(
        "train", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
        "device.threads=1", *TINY, "optimizer.lr=1e-3,1e-2",
    )  # fmt: skip
    sweep = sweep_dir_of(tmp_path)
    assert (sweep / ".submitit").is_dir()  # submitit's job scripts and logs
    lrs = [read_json(sweep / job / "results.json")["best_val_loss"] for job in ("0", "1")]
    assert all(v > 0 for v in lrs)
    report = cli("report", str(sweep))
    assert report.stdout.count("| ok |") == 2


def test_a_launcher_without_its_plugin_fails_before_any_job(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name in (JOBLIB, SUBMITIT) else real(name, *a),
    )
    with pytest.raises(CnnbenchError, match=r"pip install 'cnnbench\[joblib\]'"):
        check_plugins(["hydra/launcher=joblib"])
    for option in ("slurm", "submitit_slurm", "submitit_local"):
        with pytest.raises(CnnbenchError, match=r"not installed: pip install 'cnnbench\[slurm\]'"):
            check_plugins([f"hydra/launcher={option}"])
    check_plugins(["hydra/launcher=basic", "model=lenet5"])  # no plugin needed


@pytest.mark.skipif(installed(JOBLIB), reason="only where the joblib plugin is absent (CI)")
def test_cli_names_the_extra_when_the_joblib_plugin_is_absent(cli, tmp_path):
    proc = cli("train", "-m", "hydra/launcher=joblib", *TINY, "epochs=1,2", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "hydra/launcher=joblib needs a Hydra plugin" in proc.stderr
    assert "pip install 'cnnbench[joblib]'" in proc.stderr
    assert not (tmp_path / "multirun").exists()
