"""`cnnbench diff`: the config keys two runs differ in, their metrics and curves."""

from __future__ import annotations

import json
import re

import pytest
from conftest import TINY, run_cnnbench
from PIL import Image

from cnnbench.commands.diff import config_differences, run_labels, run_metrics
from cnnbench.flatconfig import flat_config, flatten
from cnnbench.metrics import read_metrics_csv


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs that differ in optimizer.lr and seed only."""
    cwd = tmp_path_factory.mktemp("diff")
    run_cnnbench("train", *TINY, "hydra.run.dir=runs/a", cwd=cwd)
    run_cnnbench("train", *TINY, "hydra.run.dir=runs/b", "optimizer.lr=0.01", "seed=1", cwd=cwd)
    return cwd / "runs" / "a", cwd / "runs" / "b"


def test_diff_lists_exactly_the_keys_that_differ(runs, tmp_path):
    differ, compared = config_differences(list(runs))
    assert differ == {"optimizer.lr": [0.001, 0.01], "seed": [0, 1]}
    assert compared > 40  # every key of the config was compared

    proc = run_cnnbench("diff", *map(str, runs), "--out", "report", cwd=tmp_path)
    out = proc.stdout
    assert "config: 2 of" in out and "keys differ" in out
    key_rows = out.split("keys differ:\n")[1].split("\n\n")[0].splitlines()
    assert key_rows[0].split() == ["key", "A", "B"]
    assert [row.split() for row in key_rows[1:]] == [
        ["optimizer.lr", "0.001", "0.01"],
        ["seed", "0", "1"],
    ]
    assert f"wrote {tmp_path / 'report' / 'diff.png'}" in out
    with Image.open(tmp_path / "report" / "diff.png") as img:
        assert img.format == "PNG" and img.size[0] > 600


def test_metrics_side_by_side_come_from_the_runs_files(runs, tmp_path):
    a, b = runs
    proc = run_cnnbench("diff", str(a), str(b), cwd=tmp_path)  # default --out: here
    assert (tmp_path / "diff.png").is_file()
    table = proc.stdout.split("\nmetric ")[1].split("\n\n")[0].splitlines()[1:]
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line) for line in table)}
    for i, run in enumerate(runs):
        history = read_metrics_csv(run / "metrics.csv")
        results = json.loads((run / "results.json").read_text())
        best = min(history, key=lambda r: r["val_loss"])
        assert rows["final val_loss"][i] == f"{history[-1]['val_loss']:.4f}"
        assert rows["best val_loss"][i] == f"{best['val_loss']:.4f}"
        assert rows["best epoch"][i] == str(int(best["epoch"])) == str(results["best_epoch"])
    metrics = run_metrics(a)
    assert (
        metrics["epochs"] == 2
        and metrics["test_top1"] == json.loads((a / "results.json").read_text())["test_top1"]
    )


def test_a_run_in_progress_and_a_same_config(runs, tmp_path):
    import shutil

    a, _ = runs
    partial = tmp_path / "partial"
    shutil.copytree(a, partial)
    (partial / "results.json").unlink()  # still training: metrics.csv only
    proc = run_cnnbench("diff", str(a), str(partial), cwd=tmp_path)
    assert "config: 0 of" in proc.stdout and "(same config)" in proc.stdout
    test_row = next(line for line in proc.stdout.splitlines() if line.startswith("test_top1"))
    assert test_row.split()[2] == "-"  # the run in progress has no test figures yet


def test_diff_errors_are_one_line(runs, tmp_path):
    a, _ = runs
    for args, message in [
        ([str(a)], "needs two or more run dirs"),
        ([str(a), str(tmp_path / "nope")], "is not a run directory"),
        ([str(a), str(tmp_path)], "is not a cnnbench run directory"),
    ]:
        proc = run_cnnbench("diff", *args, cwd=tmp_path, check=False)
        assert proc.returncode == 1 and proc.stderr.startswith("error: "), proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr


def test_flatten_and_labels(tmp_path):
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": None}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": {},
        "f": None,
    }
    assert "resume" not in flat_config({"resume": "x", "seed": 0})
    paths = [tmp_path / "2026-11-23" / "12-00-00", tmp_path / "2026-11-24" / "12-00-00"]
    assert run_labels(paths) == ["2026-11-23/12-00-00", "2026-11-24/12-00-00"]
    assert run_labels([tmp_path / "a", tmp_path / "b"]) == ["a", "b"]
