"""Start-up time of the commands a newcomer types first: wall time, median of interleaved runs.

    python scripts/startup_time.py [--repeats 5]

Each command runs as `python -m cnnbench ...` from this checkout in an empty temporary
directory; the rounds are interleaved (every command once per round) so a busy machine
slows all of them alike. `import torch` alone is timed for comparison.
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


def wall(cmd: list[str], cwd: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    opts = parser.parse_args()
    runs = {" ".join(c): [sys.executable, "-m", "cnnbench", *c] for c in COMMANDS}
    runs["(python -c 'import torch')"] = BASELINE
    times: dict[str, list[float]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(opts.repeats):
            for name, cmd in runs.items():
                times[name].append(wall(cmd, cwd))
    print(f"load average {os.getloadavg()[0]:.1f}; median of {opts.repeats} interleaved runs\n")
    print("| command | wall (median) | min |\n|---|---|---|")
    for name, values in times.items():
        label = name if name.startswith("(") else f"`cnnbench {name}`"
        print(f"| {label} | {statistics.median(values):.2f} s | {min(values):.2f} s |")


if __name__ == "__main__":
    main()
