"""Start-up time of the commands a newcomer types first: wall time, median of interleaved runs.

    python scripts/startup_time.py [--repeats 5] [--compare OTHER_CHECKOUT]

Each command runs as `python -m cnnbench ...` from this checkout (and, with --compare, from
another one, e.g. an older commit's worktree) in an empty temporary directory; the rounds
are interleaved (every command once per round) so a busy machine slows all of them alike.
`import torch` alone is timed for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [
    ["--help"],
    ["train", "--help"],
    ["models"],
    ["train", "foo=1"],
    ["train", "dataset.root=/data/pets"],
    ["train", "--cfg", "job"],
]
BASELINE = [sys.executable, "-c", "import torch"]


def wall(cmd: list[str], cwd: str, repo: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare", type=Path, help="another checkout, timed alongside")
    opts = parser.parse_args()
    repos = [REPO, *([opts.compare.resolve()] if opts.compare else [])]
    runs = {" ".join(c): [sys.executable, "-m", "cnnbench", *c] for c in COMMANDS}
    runs["(python -c 'import torch')"] = BASELINE
    times = {(name, repo): [] for name in runs for repo in repos}
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(opts.repeats):
            for (name, repo), values in times.items():
                values.append(wall(runs[name], cwd, repo))
    print(f"load average {os.getloadavg()[0]:.1f}; median of {opts.repeats} interleaved runs\n")
    heads = " | ".join(f"{r.name} (median, min)" for r in repos)
    print(f"| command | {heads} |\n|---|" + "---|" * len(repos))
    for name in runs:
        label = name if name.startswith("(") else f"`cnnbench {name}`"
        cells = [times[name, r] for r in repos]
        row = " | ".join(f"{statistics.median(v):.2f} s, {min(v):.2f} s" for v in cells)
        print(f"| {label} | {row} |")


if __name__ == "__main__":
    main()
