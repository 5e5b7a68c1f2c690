"""Every `cnnbench` command line of README.md works: no example rots.

The ```bash blocks of README.md are read (continuation lines joined, `&&` chains split,
comments dropped); each line that calls cnnbench is classified by RULES, first match wins:

- run (every command but training runs; `train` with resume=, --help, --cfg, -sc): as
  typed, through cnnbench's entry point (`cnnbench.cli.main`), in one worker process (torch
  is imported once) whose working directory is a sandbox where the README's
  paths exist as tiny stand-ins: `outputs/2026-11-23/12-00-00` is a LeNet-5 run on 96 fake
  images stopped by Ctrl-C in its epoch 2 of 2 (restored before each `resume=` line, so each
  has a run to continue), `outputs/2026-11-23/12-30-00` and the `multirun/...` folders hold
  copies of it, `cat.jpg`, `photos/`, `data/cifar` and `~/pets` (HOME is the sandbox's) are
  generated images. SUBSTITUTE rewrites what cannot be typed as is: `resume=auto` gets the
  stand-in run's overrides (the README means the default config), `/tmp/val-eval` goes into
  the sandbox.
- cfg (every other `cnnbench train` line): with `--cfg job`, composed and checked (with -m
  every swept value) but not trained: they need CIFAR files, a GPU, weights files or hours;
  the training paths themselves are tested on tiny data by the other test files.
- skip: not run; the reason is in RULES (torchrun, CIFAR files for a command that loads the
  data, `cnnbench plan`'s timing of ImageNet-size models).

A line no rule matches fails the test: add a rule for it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HARNESS_HEAD, REPO, SIGNAL_AT_STEP, TINY
from test_first_hour import write_folder

STOPPED = "outputs/2026-11-23/12-00-00"  # the run the README's examples use
SECOND = "outputs/2026-11-23/12-30-00"  # cnnbench diff's other run
SWEEPS = ["multirun/2026-11-23/12-30-00", "multirun/2026-11-24/09-00-00"]  # cnnbench report's
RULES: list[tuple[str, str, str]] = [  # (regex on the command, mode, why)
    (r"^torchrun ", "skip", "needs torchrun and GPUs (tests/test_ddp.py runs DDP on CPU)"),
    (r"^cnnbench (stats|summary|show|plan) .*dataset=cifar10", "skip", "needs CIFAR-10's files"),
    (r"^cnnbench plan ", "skip", "times ImageNet-size models (minutes); see tests/test_plan.py"),
    (r"^cnnbench train .*(resume=|--help|--cfg |-sc )", "run", ""),
    (r"^cnnbench train ", "cfg", "a training run: CIFAR files, a GPU, weights files or hours"),
    (r"^cnnbench ", "run", ""),
]
SUBSTITUTE = [
    (r"resume=auto", "resume=auto " + " ".join(TINY)),
    (r"/tmp/val-eval", "val-eval"),
]

# Runs each command in this process, in order; writes [{code, out}] as JSON to argv[1].
DRIVER = """
import contextlib, io, json, logging, os, shutil, sys, time
from pathlib import Path
from cnnbench.cli import main

sandbox, (plan, report) = Path.cwd(), map(Path, sys.argv[1:3])  # cnnbench train sets sys.argv
commands, results = json.loads(plan.read_text()), []
for command in commands:
    os.chdir(sandbox)
    start = time.perf_counter()
    if command["reset"]:  # a fresh copy of the stopped run to continue
        shutil.rmtree(command["reset"], ignore_errors=True)
        shutil.copytree("stopped", command["reset"])
    buf, code = io.StringIO(), 0
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            main(command["args"])
        except SystemExit as exit_info:
            code = exit_info.code or 0
        except Exception as err:
            code, _ = 99, print(f"{type(err).__name__}: {err}")
    for handler in logging.root.handlers[:]:  # Hydra's console and train.log handlers
        logging.root.removeHandler(handler)
        handler.close()
    results.append(dict(code=code, out=buf.getvalue()[-3000:], seconds=time.perf_counter() - start))
    report.write_text(json.dumps(results))
"""


def readme_commands(text: str) -> list[str]:
    """The commands of README.md's ```bash blocks that call cnnbench, in order."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            for part in line.split("&&"):
                tokens = shlex.split(part, comments=True)
                if tokens[:1] == ["eval"] and tokens[1].startswith("$(cnnbench"):
                    tokens = shlex.split(tokens[1][2:-1])  # eval "$(cnnbench ...)"
                if tokens[:1] == ["cnnbench"] or (
                    tokens[:1] == ["torchrun"] and "cnnbench" in tokens
                ):
                    found.append(shlex.join(tokens))
    return found


def classify(command: str) -> tuple[str, str]:
    for pattern, mode, why in RULES:
        if re.search(pattern, command):
            return mode, why
    raise AssertionError(f"README line not covered by tests/test_readme.py RULES: {command}")


def make_sandbox(root: Path) -> None:
    """The stand-ins for the README's paths (see the module docstring)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "CNNBENCH_CACHE": str(root / "cache")}
    harness = HARNESS_HEAD + SIGNAL_AT_STEP.format(at_epoch=2, at_step=2, signum=2, rank=0)
    stopped = subprocess.run(
        [
            sys.executable,
            "-c",
            harness + "main(sys.argv[1:])",
            "train",
            *TINY,
            "hydra.run.dir=stopped",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    for copy in [STOPPED, SECOND, *(f"{sweep}/0" for sweep in SWEEPS)]:
        shutil.copytree(root / "stopped", root / copy)
    write_folder(root / "home" / "pets")
    write_folder(root / "data" / "cifar")
    write_folder(root / "photos", classes=("a", "b"), n=2)
    (root / "cat.jpg").write_bytes((root / "photos" / "a" / "000.jpg").read_bytes())


def test_every_readme_command_runs_or_says_why_not(tmp_path):
    commands = readme_commands((REPO / "README.md").read_text())
    assert len(commands) > 30, commands  # the extraction found the README's examples
    make_sandbox(tmp_path)
    planned, skipped = [], []
    for command in commands:
        mode, why = classify(command)
        if mode == "skip":
            skipped.append(f"{command}  ({why})")
            continue
        for pattern, replacement in SUBSTITUTE:
            command = re.sub(pattern, replacement, command)
        args = shlex.split(command)[1:] + (["--cfg", "job"] if mode == "cfg" else [])
        reset = STOPPED if any(a.startswith("resume=") for a in args) else None
        planned.append(dict(command=command, args=args, reset=reset))
    (tmp_path / "commands.json").write_text(json.dumps(planned))
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp_path / "home")}
    env.update(CNNBENCH_CACHE=str(tmp_path / "cache"), COLUMNS="100")
    env.pop("HYDRA_FULL_ERROR", None)
    driver = subprocess.run(
        [sys.executable, "-c", DRIVER, tmp_path / "commands.json", tmp_path / "results.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    failed = [
        f"$ {p['command']}  (exit {r['code']})\n{r['out']}"
        for p, r in zip(planned, results, strict=True)
        if r["code"] != 0
    ]
    assert not failed, "\n\n".join(failed)
    assert len(skipped) <= 10, skipped  # the few that cannot run here, each with its reason


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("cnnbench train \\\n    epochs=3  # comment", ["cnnbench train epochs=3"]),
        ('eval "$(cnnbench train -sc install=bash)"', ["cnnbench train -sc install=bash"]),
        ("pip install -e . && cnnbench train", ["cnnbench train"]),
        (
            "  cnnbench train 'a=tag(log, interval(1, 2))'",
            ["cnnbench train 'a=tag(log, interval(1, 2))'"],
        ),
    ],
)
def test_readme_lines_are_read_as_the_shell_would(line, expected):
    assert readme_commands(f"```bash\n{line}\n```\n") == expected
