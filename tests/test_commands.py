"""One argument style for the non-Hydra commands: --help, bad arguments, overrides and flags."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY, read_json, run_cnnbench
from PIL import Image

from cnnbench.cli import main

# command -> the positionals it needs before an option can be the problem
COMMANDS = {
    "models": [],
    "plan": [],
    "summary": [],
    "stats": [],
    "show": [],
    "eval": ["RUN"],
    "predict": ["RUN", "cat.png"],
    "rerun": ["RUN"],
    "report": ["MULTIRUN"],
}


def exit_code(*args: str) -> int:
    """Run `cnnbench ARGS` in this process; the exit code it raises."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return exit_info.value.code


def usage_error(capsys, *args: str) -> str:
    """The one `error:` line of a command line that fails to parse (exit 2)."""
    assert exit_code(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert f"usage: cnnbench {args[0]} " in err
    return err.strip()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run in a directory named `lr=0.1` (a swept value in its name)."""
    cwd = tmp_path_factory.mktemp("commands")
    run_cnnbench("train", *TINY, "epochs=1", "hydra.run.dir=run", cwd=cwd)
    return (cwd / "run").rename(cwd / "lr=0.1")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(path)
    return path


@pytest.mark.parametrize("command", list(COMMANDS))
def test_help_shows_usage_options_and_examples(command, capsys):
    assert exit_code(command, "--help") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cnnbench {command}")
    assert "\noptions:\n  -h, --help" in out and f"\nexamples:\n  cnnbench {command}" in out


def test_help_works_anywhere_on_the_line(capsys):
    assert exit_code("eval", "RUN", "split=val", "-h", "--out", "x") == 0
    assert capsys.readouterr().out.startswith("usage: cnnbench eval RUN_DIR [split=test|val]")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_unknown_flag_is_a_usage_error(command, capsys):
    err = usage_error(capsys, command, *COMMANDS[command], "--bogus")
    assert err.startswith("error: unrecognized arguments: --bogus; usage: ")


@pytest.mark.parametrize("command", ["summary", "stats", "show", "eval", "rerun"])
def test_a_stray_argument_is_not_an_override(command, capsys):
    err = usage_error(capsys, command, *COMMANDS[command], "cifar10")
    assert err.startswith("error: stray argument 'cifar10': overrides are key=value")


def test_models_takes_no_positionals(capsys):
    assert "unrecognized arguments: extra" in usage_error(capsys, "models", "extra")


def test_eval_flags_are_the_overrides_spelled_out(run):
    from cnnbench.commands.eval import parse_args

    flags = parse_args([str(run), "--split", "val", "--device", "cpu", "--batch-size", "5"])
    keys = parse_args([str(run), "split=val", "device=cpu", "eval_batch_size=5"])
    assert flags == keys == (run, "val", ["device=cpu", "eval_batch_size=5"], None)


def test_eval_argument_errors(capsys, tmp_path):
    err = usage_error(capsys, "eval", "split=val")
    assert err.startswith("error: missing RUN_DIR ('split=val' is an override, not a directory)")
    err = usage_error(capsys, "eval", "RUN", "device=cpu", "--device", "cuda")
    assert err.startswith("error: device=cpu and --device cuda both set device: give it once")
    assert "invalid choice: 'train'" in usage_error(capsys, "eval", "RUN", "--split", "train")
    err = usage_error(capsys, "eval", "RUN", "--batch-size", "0")
    assert "argument --batch-size: expected an integer >= 1, got '0'" in err


def test_eval_of_a_run_dir_named_with_an_equals_sign_and_device_flag(run):
    """The issue's case: `cnnbench eval lr=0.1 --device cpu` from the sweep's directory."""
    proc = run_cnnbench("eval", run.name, "--device", "cpu", "--batch-size", "5", cwd=run.parent)
    metrics = read_json(run / "eval" / "metrics.json")
    results = read_json(run / "results.json")
    assert metrics["run_dir"] == str(run) and metrics["images"] == 14
    assert metrics["top1"] == results["test_top1"]
    assert f"test split of {run} (best.pt from epoch 1, 14 images)" in proc.stdout


def test_predict_takes_device_as_an_override_or_a_flag(run, image, tmp_path, capsys):
    main(["predict", str(run), str(image), "device=cpu", "--out", str(tmp_path / "key")])
    main(["predict", str(run), str(image), "--device", "cpu", "--out", str(tmp_path / "flag")])
    out = capsys.readouterr().out
    assert out.count("noise.png: class") == 2 and "(1 images)" in out
    csv = (tmp_path / "key" / "predictions.csv").read_text()
    assert csv == (tmp_path / "flag" / "predictions.csv").read_text()
    assert csv.startswith("path,label,probability,top5\n") and csv.count("\n") == 2
    assert not (tmp_path / "key" / "skipped.csv").exists()  # device=cpu is not a file


def test_predict_tells_overrides_from_paths(run):
    from cnnbench.commands.predict import parse_args

    opts = parse_args(
        [str(run), "a.png", "device.name=cpu", "lr=0.1.png", "eval_batch_size=2", "x/k=v.jpg"]
    )
    assert [str(p) for p in opts.paths] == ["a.png", "lr=0.1.png", "x/k=v.jpg"]
    assert (opts.device, opts.batch_size, opts.grid_max) == ("cpu", 2, 64)
    opts = parse_args([str(run), "a.png", "--batch-size", "3"])
    assert (opts.device, opts.batch_size) == ("auto", 3)


def test_predict_argument_errors(capsys):
    assert "no image PATH given" in usage_error(capsys, "predict", "RUN", "device=cpu")
    err = usage_error(capsys, "predict", "RUN", "a.png", "device=gpu")
    assert "device=gpu: valid devices are auto, cpu, cuda" in err
    err = usage_error(capsys, "predict", "RUN", "a.png", "device.precision=bf16")
    assert "device.precision=bf16: predict takes only device=NAME and eval_batch_size=N" in err
    err = usage_error(capsys, "predict", "RUN", "a.png", "eval_batch_size=0")
    assert "eval_batch_size=0: expected an integer >= 1, got '0'" in err
    err = usage_error(capsys, "predict", "RUN", "a.png", "eval_batch_size=4", "--batch-size", "8")
    assert "eval_batch_size=4 and --batch-size 8 both set eval_batch_size" in err


def test_rerun_passes_a_sweep_to_the_sweep_checks(run, capsys):
    assert exit_code("rerun", str(run), "-m", "optimizer.lrr=1,2") == 1
    assert "unknown config key 'optimizer.lrr'" in capsys.readouterr().err


def test_show_out_may_name_a_directory(tmp_path):
    from cnnbench.commands.show import output_path

    (tmp_path / "grids").mkdir()
    assert output_path(None, "s.png").as_posix() == "s.png"
    assert output_path(str(tmp_path / "grids"), "s.png") == tmp_path / "grids" / "s.png"
    assert output_path("new/", "s.png").as_posix() == "new/s.png"
    assert output_path("pets.png", "s.png").as_posix() == "pets.png"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--epochs", "3"], "error: use epochs=3 (cnnbench train takes Hydra overrides key=value)"),
        (["--batch-size=8"], "error: use batch_size=8 (cnnbench train takes Hydra overrides"),
        (["+epochs=3"], "error: epochs is already a config key: drop the '+' and use epochs=3"),
        (["+model.weights=w.pt"], "error: model.weights is already a config key: drop the '+'"),
    ],
)
def test_train_flags_and_plus_name_the_override_to_use(cli, args, message):
    proc = cli("train", *TINY, *args, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_train_hydra_flags_and_new_keys_pass_the_precheck():
    from cnnbench.commands.args import check_train_args

    check_train_args(["--cfg", "job", "-m", "++epochs=3", "--config-dir", "x", "epochs=3"])
    check_train_args(["+hydra.job.env_set.A=1", "--help", "--hydra-help", "--info"])


def test_precision_cache_follows_xdg_cache_home(monkeypatch, tmp_path):
    from cnnbench import device

    monkeypatch.delenv("CNNBENCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert device._cache_path() == tmp_path / "cnnbench" / "precision.json"
    monkeypatch.setenv("CNNBENCH_CACHE", str(tmp_path / "mine"))
    assert device._cache_path() == tmp_path / "mine" / "precision.json"
