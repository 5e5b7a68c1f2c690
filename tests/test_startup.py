"""Start-up: commands that need no model answer without importing torch (README, Start-up)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

HEAVY = ("torch", "torchvision", "matplotlib", "sklearn")

# Run the CLI in a fresh interpreter, then list the heavy modules it imported.
PROBE = """
import sys
from cnnbench.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("IMPORTED", *sorted(m for m in {heavy} if m in sys.modules))
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["models"],
        ["train", "--help"],
        ["train", "foo=1"],
        ["train", "dataset.root=/data/pets"],
        ["train", "--cfg", "job", "model=alexnet_cifar"],
        ["train", "--epochs", "3"],
    ],
    ids=" ".join,
)
def test_commands_without_a_model_do_not_import_torch(args, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    last = proc.stdout.strip().splitlines()[-1]
    assert last == "IMPORTED", (last, proc.stderr[-2000:])


def test_the_pre_run_modules_import_without_torch(tmp_path):
    modules = ["config", "runs", "sweep", "completion", "commands.args", "commands.train"]
    code = "import sys\n" + "".join(f"import cnnbench.{m}\n" for m in modules)
    code += f"print('IMPORTED', *sorted(m for m in {HEAVY} if m in sys.modules))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.strip() == "IMPORTED", proc.stderr[-2000:]
