"""Bad input stops before any work: one `error:` line naming the problem and the choices."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY

CASES = {
    "misspelled key": (
        ["optimizer.lrr=1"],
        "unknown config key 'optimizer.lrr'; valid keys in 'optimizer': name, lr,",
    ),
    "wrong type": (["epochs=abc"], "bad value for 'epochs': Value 'abc' of type 'str'"),
    "unknown model option": (
        ["model=alexnett"],
        "unknown model option 'alexnett'; valid model options: alexnet_cifar, fastnet, lenet5",
    ),
    "unknown optimizer": (["optimizer=adamm"], "valid optimizer options: adam, adamw, sgd"),
    "unknown model name": (["model.name=foo"], "unknown model 'foo'; valid models: alexnet_cifar, fastnet, lenet5"),
    "unknown top-level key": (["epoch=3"], "valid keys at the top level: model, dataset,"),
    "added unknown key": (["+optimizer.lrr=3"], "unknown config key(s) optimizer.lrr"),
    "bad enum": (["device.precision=bf17"], "expected one of [auto, fp32, bf16, fp16]"),
    "batch_size=0": (["batch_size=0"], "batch_size must be >= 1 (got 0)"),
    "zero lr": (["optimizer.lr=0"], "optimizer.lr must be > 0 (got 0.0)"),
    "negative lr": (["optimizer.lr=-1e-3"], "optimizer.lr must be > 0"),
    "epochs=0": (["epochs=0"], "epochs must be >= 1 (got 0)"),
    "unparsable override": (["epochs=[1"], "cannot parse override"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_message(cli, tmp_path, name):
    overrides, expected = CASES[name]
    proc = cli("train", *TINY, *overrides, "hydra.run.dir=run", check=False)
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert proc.stderr.count("error:") == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "best.pt").exists()


def test_cifar10_offline_without_files_names_the_path_and_the_fix(cli, tmp_path):
    proc = cli("train", "dataset=cifar10", f"dataset.root={tmp_path}/cifar", check=False)
    assert proc.returncode != 0
    assert f"CIFAR-10 files not found under {tmp_path}/cifar" in proc.stderr
    assert "cifar-10-batches-py" in proc.stderr and "dataset.download=true" in proc.stderr
    assert "Traceback" not in proc.stderr and "urllib" not in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_a_clear_error(cli):
    proc = cli("train", *TINY, "device=cuda", check=False)
    assert proc.returncode != 0
    assert "device=cuda was asked for but no CUDA GPU is available" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_command_lists_commands(cli):
    proc = cli("trian", check=False)
    assert proc.returncode == 2
    assert "unknown command 'trian'; valid commands: train" in proc.stderr


def test_full_traceback_on_request(cli):
    proc = cli("train", *TINY, "batch_size=0", env={"HYDRA_FULL_ERROR": "1"}, check=False)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "CnnbenchError" in proc.stderr
