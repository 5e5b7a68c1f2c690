"""Bad input stops before any work: one `error:` line naming the problem and the choices."""

from __future__ import annotations

import pytest
from conftest import TINY

# The cases of the bad-input table live in tests/test_bad_inputs.py; these are the rest.
CASES = {
    "unknown top-level key": (["epoch=3"], "valid keys at the top level: model, dataset,"),
    "added unknown key": (["+optimizer.lrr=3"], "unknown config key(s) optimizer.lrr"),
    "bad enum": (["device.precision=bf17"], "expected one of [auto, fp32, bf16, fp16]"),
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


def test_unknown_command_lists_commands(cli):
    proc = cli("trian", check=False)
    assert proc.returncode == 2
    assert "unknown command 'trian'; valid commands: train" in proc.stderr


def test_full_traceback_on_request(cli):
    proc = cli("train", *TINY, "batch_size=0", env={"HYDRA_FULL_ERROR": "1"}, check=False)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "CnnbenchError" in proc.stderr
