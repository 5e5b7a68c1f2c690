"""A newcomer's first hour: what the README says works as typed, and the hints lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, read_json
from PIL import Image


def write_folder(root: Path, classes=("cat", "dog"), n: int = 12, size: int = 32) -> Path:
    """root/<class>/NNN.jpg: `n` noisy JPEGs per class, a different mean color each."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.clip(rng.normal(60 + 120 * k, 30, (size, size, 3)), 0, 255)
            Image.fromarray(arr.astype(np.uint8)).save(root / name / f"{i:03d}.jpg")
    return root


def test_tilde_and_odd_characters_in_path_values_work_unquoted(cli, tmp_path):
    """`dataset.root=~/pets` as the README types it (the shell leaves `~` after `=` alone):
    expanded, and a run dir with `=`, spaces and parentheses is taken as it is."""
    home = tmp_path / "home"
    write_folder(home / "pets")
    env = {"HOME": str(home), "CNNBENCH_CACHE": str(tmp_path / "cache")}
    tiny = ["epochs=1", "batch_size=8", "device=cpu", "progress=false"]
    run = "hydra.run.dir=~/runs/lr=0.1 (copy)"
    cli("train", "dataset=folder", "dataset.root=~/pets", run, *tiny, env=env)
    results = read_json(home / "runs" / "lr=0.1 (copy)" / "results.json")
    assert results["classes"] == ["cat", "dog"]
    saved = (home / "runs" / "lr=0.1 (copy)" / ".hydra" / "config.yaml").read_text()
    assert f"root: {home / 'pets'}" in saved


def test_a_value_hydra_cannot_parse_says_how_to_quote_it_and_the_quoted_form_works(cli):
    err = cli("train", "num_workers=a#b", check=False).stderr
    hint = "\"num_workers='a#b'\""  # shell quotes around Hydra's
    assert err.startswith("error: cannot parse override 'num_workers=a#b'") and hint in err
    out = cli("train", "--cfg", "job", "num_workers='a#b'").stdout
    assert "num_workers: a#b" in out


def test_a_key_the_chosen_option_ignores_names_the_option_that_has_it(cli):
    err = cli("train", "dataset.root=/data/pets", check=False).stderr
    assert err.startswith("error: dataset.root is not used by dataset=digits")
    assert "did you mean dataset=folder dataset.root=/data/pets?" in err


# Slow every training step down to 0.12 s, then run the CLI (argv: its arguments).
SLOW_STEPS = """
import sys, time
import cnnbench.engine as engine
_step = engine.TrainStep.__call__
def slow_step(self, *args):
    time.sleep(0.12)
    return _step(self, *args)
engine.TrainStep.__call__ = slow_step
from cnnbench.cli import main
main(sys.argv[1:])
"""


def run_in_terminal(code: str, args: list[str], cwd: Path) -> str:
    """Run `python -c code ARGS` with stderr on a pseudo-terminal (80x24, as a user's shell
    has); everything written to the terminal, as text."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import subprocess
    import sys
    import termios

    from conftest import REPO

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        stderr=slave,
        stdout=subprocess.DEVNULL,
    )
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=300) == 0
    return b"".join(chunks).decode(errors="replace")


def test_the_progress_bar_moves_by_time_long_before_log_interval_steps(tmp_path):
    """In a terminal, slow steps (0.12 s) with log_interval=1000: the bar still refreshes
    within the 10 steps of an epoch (every 0.5 s), and from epoch 2 says how long is left."""
    args = [*TINY, "progress=true", "batch_size=8", "log_interval=1000", "hydra.run.dir=run"]
    screen = run_in_terminal(SLOW_STEPS, ["train", *args], tmp_path)
    epoch1 = screen.split("[Training] epoch 2/2")[0]
    moved = {int(n) for n in re.findall(r"\| (\d+)/10 \[", epoch1)}
    assert moved & set(range(1, 10)), screen[-2000:]  # shown mid-epoch, not only at 0 and 10
    assert re.search(r"\[Training\] epoch 2/2, ~0:\d\d left:", screen), screen[-2000:]


def hints(error: str) -> list[str]:
    """The fixes an error line suggests, each as overrides: `use transforms.normalize=...`,
    `Resize the input with ...` and its `transforms=PRESET` alternatives."""
    found = re.findall(r"use (transforms\.normalize=\w+)", error)
    resize = re.search(r"Resize the input with (.+?)(, or the transforms preset.*)?\.$", error)
    if resize:
        found.append(resize.group(1))
        found += re.findall(r"transforms=\w+", resize.group(2) or "")
    return found


@pytest.mark.parametrize(
    "args",
    [
        # digits are 1-channel: ImageNet's 3-value normalization first, then the 224 crop
        ["model=lenet5", "transforms=rrc224", "transforms.resize=32"],
        ["model=lenet5", "transforms=imagenet227", *TINY[:2]],
    ],
    ids=["rrc224-resize32-digits", "imagenet227-fake"],
)
def test_each_hint_of_an_input_error_works_when_applied(cli, args):
    """Follow the first hint of each error until the run trains (at most 3 rounds): no hint
    may send the user back to the same error."""
    tiny = ["epochs=1", "device=cpu", "progress=false", "batch_size=32"]
    errors = []
    for _ in range(3):
        proc = cli("train", *args, *tiny, check=False)
        if proc.returncode == 0:
            break
        errors.append(proc.stderr.strip())
        fixes = hints(errors[-1])
        assert fixes, errors[-1]
        assert len(errors) < 2 or errors[-1] != errors[-2], f"the hint loops: {errors[-1]}"
        args = [*args, *fixes[0].split()]
    assert proc.returncode == 0, errors
    assert "[Training]" in proc.stdout and errors  # it did fail first, then train


def test_extending_a_finished_cosine_run_is_refused_with_a_way_forward_that_works(cli, tmp_path):
    """resume=auto epochs=3 finds the run (epochs aside), refuses to train at lr 0, and the
    command it names trains a new run from the weights with a fresh schedule."""
    cli("train", *TINY)  # cosine over 2 epochs, into outputs/DATE/TIME
    (run,) = (tmp_path / "outputs").glob("*/*")
    err = cli("train", "resume=auto", *TINY, "epochs=3", check=False).stderr
    assert f"the cosine schedule of {run} ended at epoch 2 (lr = min_lr)" in err
    command = re.search(r"cnnbench rerun (\S+) (\S+) epochs=N", err)
    assert command and command.group(1) == str(run)
    cli("rerun", command.group(1), command.group(2), "epochs=1", "hydra.run.dir=more")
    rows = (tmp_path / "more" / "metrics.csv").read_text().splitlines()
    assert rows[1].split(",")[5] == "0.001"  # epoch 1 at optimizer.lr again, not min_lr

    err = cli("train", "resume=auto", *TINY, "seed=5", check=False).stderr
    assert f"the newest, {run}, differs in seed=0 there, 5 here" in err


def test_resume_with_nothing_left_to_train(cli, tmp_path):
    """A finished run is not re-tested and rewritten; one killed during its final test (no
    results.json) gets its test, with the run's training time kept in wall_seconds."""
    cli("train", *TINY, "scheduler=step", "hydra.run.dir=run")
    err = cli("train", "resume=run", check=False).stderr
    assert f"{tmp_path / 'run'} already trained 2 epochs (epochs=2 asked): nothing to resume" in err
    assert f"cnnbench train resume={tmp_path / 'run'} epochs=N (N > 2)" in err
    first = read_json(tmp_path / "run" / "results.json")
    (tmp_path / "run" / "results.json").unlink()
    cli("train", "resume=run")
    again = read_json(tmp_path / "run" / "results.json")
    assert again["test_top1"] == first["test_top1"] and again["train_images_per_sec"] is None
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    epochs = sum(float(r.split(",")[6]) for r in rows)
    assert again["wall_seconds"] >= epochs


def test_a_hopeless_run_is_named_before_training_with_its_cost_and_models_that_fit(cli):
    """fastnet (295k parameters) on 74 images stored at 8x8 and resized to 40x40."""
    args = [*TINY, "epochs=1", "model=fastnet", "dataset.image_size=8", "transforms.resize=40"]
    out = cli("train", *args).stdout
    warning = next(line for line in out.splitlines() if "unlikely to learn" in line)
    assert warning.startswith("this run is unlikely to learn: fastnet has 295,480 parameters")
    assert "its 40x40 input is 8x8 images upscaled 5x" in warning
    assert re.search(r"Estimated ~\d+ s per epoch, ~\d+ s for 1 epochs on cpu", warning)
    assert "Models sized for this data: model=lenet5 (`cnnbench models`" in warning
    assert out.index("unlikely to learn") < out.index("[Training]")


def test_the_estimate_for_vgg16_on_the_digits(monkeypatch):
    """The issue's run: 134M parameters on 1,374 digits, ~30 min on CPU in its report."""
    from types import SimpleNamespace

    import torch

    from cnnbench.preflight import hopeless_run_warning

    cfg = SimpleNamespace(
        model=SimpleNamespace(name="vgg16"),
        dataset=SimpleNamespace(name="digits"),
        batch_size=32,
        epochs=20,
    )
    splits = SimpleNamespace(train=range(1374), input_size=(1, 32, 32))
    data = SimpleNamespace(splits=splits, input_size=(1, 32, 32), num_classes=10)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    warning = hopeless_run_warning(cfg, 134_300_362, data, torch.device("cpu"))
    assert "(97,744 per image; more than 1,000 rarely learns)" in warning
    assert "upscaled" not in warning  # 8x8 -> 32x32 is 4x: the default run's own size
    # 2.59 GFLOP x 1,374 images at 2 x 30 GFLOP/s, plus 43 Adam steps over 134M parameters
    assert "Estimated ~75 s per epoch, ~25 min for 20 epochs on cpu (2.59 GFLOP" in warning
    assert "model=lenet5, model=fastnet" in warning
    lenet = SimpleNamespace(**{**vars(cfg), "model": SimpleNamespace(name="lenet5")})
    assert hopeless_run_warning(lenet, 61_706, data, torch.device("cpu")) is None


def test_run_records_stay_truthful_across_resumes_failures_and_reports(cli, tmp_path, monkeypatch):
    """overrides.yaml stays the run's own after a resume (the sessions in
    overrides_history.yaml); a failed run outside a sweep says so in report; the report
    fills each column and names each curve."""
    import yaml

    runs = tmp_path / "runs"
    cli("train", *TINY, "epochs=1", "seed=3", "scheduler=step", "hydra.run.dir=runs/a")
    cli("train", "resume=runs/a", "epochs=2")
    hydra_dir = runs / "a" / ".hydra"
    own = yaml.safe_load((hydra_dir / "overrides.yaml").read_text())
    assert own == [*[t for t in TINY if t != "epochs=2"], "seed=3", "scheduler=step", "epochs=2"]
    history = yaml.safe_load((hydra_dir / "overrides_history.yaml").read_text())
    assert history[0] == [*TINY, "epochs=1", "seed=3", "scheduler=step"]
    assert history[1] == ["epochs=2", f"resume='{runs / 'a'}'"]

    bad = ["model=lenet5", *TINY, "dataset.image_size=16", "hydra.run.dir=runs/bad"]
    assert cli("train", *bad, check=False).returncode == 1  # 16x16 images for LeNet-5
    assert "cannot take 3x16x16 images" in (runs / "bad" / "error.txt").read_text()

    from cnnbench.commands import report

    curves = {}
    monkeypatch.setattr(report, "write_sweep_curves", lambda path, runs: curves.update(runs))
    table = report.report(runs)
    header, _, row_a, row_bad = table.splitlines()[-4:]
    assert header.count("| epochs |") == 1 and "| model |" not in header  # lenet5 in both
    assert header.startswith("| job | seed | scheduler | dataset.image_size | params |")
    assert row_a.startswith("| a | 3 | step | 32 |") and "| ok |" in row_a  # defaults filled in
    assert row_bad.startswith("| bad | 0 | cosine | 16 |")
    assert "| failed | model 'lenet5' cannot take 3x16x16 images" in row_bad
    assert sorted(curves) == [
        "#a seed=3 scheduler=step dataset.image_size=32",
        "#bad seed=0 scheduler=cosine dataset.image_size=16",
    ]
