"""A newcomer's first hour: what the README says works as typed, and the hints lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, read_json, run_cnnbench
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


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    """A run on ~/pets (cats and dogs) as the README types it, with HOME in a temp dir:
    (home, run dir, the run's stdout)."""
    home = tmp_path_factory.mktemp("home")
    write_folder(home / "pets")
    env = {"HOME": str(home), "CNNBENCH_CACHE": str(home / "cache")}
    tiny = ["epochs=2", "batch_size=8", "device=cpu", "progress=false"]
    run = "hydra.run.dir=~/runs/lr=0.1 (copy)"  # '=', a space and parentheses, unquoted
    proc = run_cnnbench(
        "train", "dataset=folder", "dataset.root=~/pets", run, *tiny, cwd=home, env=env
    )
    return home, home / "runs" / "lr=0.1 (copy)", proc.stdout


def test_tilde_and_odd_characters_in_path_values_work_unquoted(pets):
    """`dataset.root=~/pets` (the shell leaves `~` after `=` alone) is expanded, and a run dir
    with `=`, spaces and parentheses is taken as it is."""
    home, run_dir, _ = pets
    assert read_json(run_dir / "results.json")["classes"] == ["cat", "dog"]
    saved = (run_dir / ".hydra" / "config.yaml").read_text()
    assert f"root: {home / 'pets'}" in saved


def test_a_two_class_run_reads_plainly(pets):
    """No top-5 for 2 classes (it is always 1), the level once per train.log line, and the
    precision line says why it chose fp32."""
    _, run_dir, out = pets
    assert read_json(run_dir / "results.json")["test_top5"] is None
    assert "top-5" not in out and re.search(
        r"test \(best epoch \d\): loss [\d.]+, top-1 [\d.]+;", out
    )
    log = (run_dir / "train.log").read_text()
    assert "][INFO] val_loss has been improved from inf to" in log and "[INFO] [INFO]" not in log
    assert "[INFO] val_loss has been improved from inf to" in out  # the seeds' line on screen
    assert re.search(r"precision auto: fp32 \((run too small|this CPU has no native bf16)", out)


def test_figures_and_predictions_name_what_they_show(pets, monkeypatch, tmp_path):
    """curves.png and confusion_matrix.png carry the run's name (the best epoch marked);
    predict lists img2 before img10 and shows each image's folder in the grid."""
    from cnnbench import plots
    from cnnbench.commands import eval as eval_cmd
    from cnnbench.commands import predict as predict_cmd

    home, run_dir, _ = pets
    figures = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path, **kw: figures.update({path.name: fig}))
    rows = [
        dict(epoch=e, train_loss=1, train_acc=0, val_loss=v, val_acc=0)
        for e, v in [(1, 2.0), (2, 1.0), (3, 1.5)]
    ]
    plots.CurvesWriter(run_dir / "curves.png").refresh(rows, final=True)
    assert (
        figures["curves.png"]._suptitle.get_text() == "runs/lr=0.1 (copy): best epoch 2 (best.pt)"
    )
    best_line = figures["curves.png"].axes[0].lines[0]
    assert list(best_line.get_xdata()) == [2, 2] and best_line.get_label() == "best epoch 2"

    matrices = {}
    monkeypatch.setattr(eval_cmd, "write_confusion_matrix", lambda *a: matrices.update(title=a[3]))
    eval_cmd.evaluate_run(
        run_dir, "test", ["device=cpu", f"dataset.cache_dir={home / 'cache'}"], tmp_path / "eval"
    )
    assert re.fullmatch(
        r"runs/lr=0\.1 \(copy\): test, top-1 [\d.]+ \(epoch \d\)", matrices["title"]
    )

    photos = tmp_path / "photos"
    for folder, name in [
        ("b", "img10.jpg"),
        ("b", "img2.jpg"),
        ("a", "0000.jpg"),
        ("c", "0000.jpg"),
    ]:
        (photos / folder).mkdir(parents=True, exist_ok=True)
        (photos / folder / name).write_bytes(
            next((home / "pets" / "cat").glob("*.jpg")).read_bytes()
        )
    grids = {}
    monkeypatch.setattr(
        predict_cmd, "write_image_grid", lambda path, thumbs, titles: grids.update(titles=titles)
    )
    result = predict_cmd.predict(run_dir, [photos], tmp_path / "pred", device_name="cpu")
    names = [Path(r["path"]).relative_to(photos).as_posix() for r in result["rows"]]
    assert names == ["a/0000.jpg", "b/img2.jpg", "b/img10.jpg", "c/0000.jpg"]
    assert [t.split("\n")[0] for t in grids["titles"]] == names


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
    run = tmp_path / "run"
    assert f"resume={run} epochs=2: the run has already trained 2 epoch(s) and is finished" in err
    assert "so pass epochs=3 or more, or start a new run" in err
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


def test_a_finished_sweep_says_where_it_is_and_how_to_compare_it(cli, tmp_path):
    """The last line of a sweep with no failed job: its dir and the report command."""
    out = cli("train", "-m", *TINY, "epochs=1", "seed=0,1", "hydra.sweep.dir=sweep").stdout
    assert "sweep: 2 jobs in sweep; leaderboard: cnnbench report sweep" in out
    assert (tmp_path / "sweep" / "1" / "results.json").is_file()
