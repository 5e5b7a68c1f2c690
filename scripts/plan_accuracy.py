"""How close is `cnnbench plan` to the real thing? Plan, then train, the same configs.

    python scripts/plan_accuracy.py --root /tmp/cifar/cifar --epochs 2

For each model: `cnnbench plan ... --json`, then `cnnbench train ...` with the same overrides,
one after the other (so both see the same load on a shared machine); prints plan's epoch
estimate (first epoch with its warm-up, then the steady one) against metrics.csv's `seconds`
per epoch, and the run estimate against results.json's `wall_seconds` (which, like the
estimate, leaves out the process start: imports, Hydra).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# model -> extra overrides (alexnet_cifar: 7 GFLOP per training image; a subset on a CPU)
MODELS = {
    "lenet5": [],
    "alexnet_cifar": ["dataset.max_per_class=120"],
}


def cnnbench(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "cnnbench", *args], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def compare(model: str, base: list[str], work: Path) -> dict:
    args = [f"model={model}", *base, *MODELS[model]]
    cnnbench("plan", *args, "--json", "plan.json", cwd=work)
    (plan,) = json.loads((work / "plan.json").read_text())
    cnnbench("train", *args, f"hydra.run.dir=run_{model}", cwd=work)
    with open(work / f"run_{model}" / "metrics.csv") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    wall = json.loads((work / f"run_{model}" / "results.json").read_text())["wall_seconds"]
    first = plan["epoch_seconds"] + plan["first_epoch_extra_seconds"]
    return dict(model=model, plan=plan, seconds=seconds, wall=wall, first=first)


def report(r: dict) -> str:
    plan, seconds = r["plan"], r["seconds"]
    lines = [
        f"{r['model']}: {plan['train_images']} train images, batch {plan['batch_size']}, "
        f"{plan['threads']} thread(s): plan {plan['train_images_per_sec']:.0f} img/s",
        f"  epoch 1: plan {r['first']:.2f} s, measured {seconds[0]:.2f} s "
        f"({(r['first'] - seconds[0]) / seconds[0]:+.0%})",
    ]
    for epoch, value in enumerate(seconds[1:], 2):
        error = (plan["epoch_seconds"] - value) / value
        lines.append(
            f"  epoch {epoch}: plan {plan['epoch_seconds']:.2f} s, measured {value:.2f} s "
            f"({error:+.0%})"
        )
    error = (plan["run_seconds"] - r["wall"]) / r["wall"]
    lines.append(
        f"  run: plan {plan['run_seconds']:.1f} s, measured {r['wall']:.1f} s ({error:+.0%})"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/cifar/cifar", help="CIFAR-10 as a folder")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    base = [
        "dataset=folder",
        f"dataset.root={args.root}",
        "transforms=cifar",
        f"epochs={args.epochs}",
        "batch_size=128",
        "device=cpu",
        f"device.threads={args.threads}",
        "progress=false",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            print(report(compare(model, base, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
