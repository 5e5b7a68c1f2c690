"""Tab completion: `eval "$(cnnbench train -sc install=bash)"`, then Tab in a real bash."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, run_cnnbench


@pytest.fixture(scope="module")
def cnnbench_on_path(tmp_path_factory):
    """A PATH whose `cnnbench` runs this checkout (as the installed script would)."""
    bin_dir = tmp_path_factory.mktemp("bin")
    script = bin_dir / "cnnbench"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m cnnbench "$@"\n')
    script.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def tab(line: str, path: str, cwd) -> list[str]:
    """What bash offers for Tab at the end of `line`, with cnnbench's completion installed."""
    words = line.split() + ([""] if line.endswith(" ") else [])
    script = f"""
eval "$(cnnbench train -sc install=bash)"
complete -p train 2>/dev/null && echo "REGISTERED FOR train"
COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}; COMP_WORDS=({" ".join(map(repr, words))})
COMP_CWORD={len(words) - 1}
hydra_bash_completion
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = {**os.environ, "PATH": path, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "REGISTERED FOR train" not in proc.stdout, proc
    return sorted(w for w in proc.stdout.split("\n") if w)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_tab_completes_commands_groups_options_and_keys(cnnbench_on_path, tmp_path):
    assert tab("cnnbench tr", cnnbench_on_path, tmp_path) == ["train"]
    assert tab("cnnbench train model=le", cnnbench_on_path, tmp_path) == [
        "model=lenet5",
        "model=lenet_224",
    ]
    keys = tab("cnnbench train dataset=folder dataset.", cnnbench_on_path, tmp_path)
    assert {"dataset.root=", "dataset.max_per_class=", "dataset.val_split="} <= set(keys)
    assert tab("cnnbench train optimizer=sgd optimizer.nes", cnnbench_on_path, tmp_path) == [
        "optimizer.nesterov="
    ]
    (tmp_path / "outputs").mkdir()  # a run dir is a file name: the shell's own completion
    assert tab("cnnbench eval outp", cnnbench_on_path, tmp_path) == ["outputs"]


def test_install_registers_the_cnnbench_program_for_each_shell(tmp_path):
    bash = run_cnnbench("train", "-sc", "install=bash", cwd=tmp_path).stdout
    assert bash.rstrip().endswith("-F hydra_bash_completion cnnbench")
    fish = run_cnnbench("-sc", "install=fish", cwd=tmp_path).stdout
    assert "complete -c cnnbench -x -a '(hydra_fish_completion)'" in fish
    zsh = run_cnnbench("train", "-sc", "install=zsh", cwd=tmp_path).stdout
    assert zsh.rstrip().endswith("-F hydra_bash_completion cnnbench")  # zsh: bashcompinit


def test_fish_query_lists_one_candidate_per_line(tmp_path):
    env = {"COMP_LINE": "cnnbench train scheduler="}
    out = run_cnnbench("-sc", "query=fish", cwd=tmp_path, env=env).stdout.split("\n")
    assert [w for w in out if w] == [
        f"scheduler={s}" for s in ("cosine", "none", "onecycle", "plateau", "step")
    ]
