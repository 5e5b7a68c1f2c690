"""What the recipe tools cost in training throughput: each on vs all off, interleaved.

    python scripts/tool_cost.py --data /tmp/cifar/cifar --model lenet5 --threads 1
    python scripts/tool_cost.py --data /tmp/cifar/cifar --model fastnet --batch-size 512

In one invocation, over --repeats rounds, the same cnnbench engine (TensorLoader with the
cifar crop + flip, train_one_epoch, TrainStep, fused SGD) trains --images images per
measurement under each setting: all tools off; ema.decay=0.999 (every step); ema.every=4;
accumulate_steps=2 at the same batch (twice the images per optimizer step) and at half the
batch (the same effective batch: what accumulation is for); optimizer.clip_grad_norm=1.0; and
evaluation with tta=flip vs without. Printed: images per second of wall time and of process
CPU time (robust on a shared machine with --threads 1), medians, and each setting's ratio to
"off" (training) or to plain evaluation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the cnnbench CLI does

import torch  # noqa: E402
from imagecache import find_split, load_image_folder  # also puts the checkout on sys.path
from torch import nn  # noqa: E402

from cnnbench.averaging import FlipTTA, WeightEMA  # noqa: E402
from cnnbench.config import Normalize, TransformsConfig  # noqa: E402
from cnnbench.data import TensorLoader, build_transforms, channel_stats  # noqa: E402
from cnnbench.device import cpu_count  # noqa: E402
from cnnbench.engine import TrainStep, evaluate, train_one_epoch  # noqa: E402
from cnnbench.models import create_model  # noqa: E402

# name -> (batch size factor, TrainStep keywords, EMA (decay, every) or None)
SETTINGS: dict[str, tuple[float, dict, tuple[float, int] | None]] = {
    "off": (1, {}, None),
    "ema.decay=0.999": (1, {}, (0.999, 1)),
    "ema.decay=0.999 ema.every=4": (1, {}, (0.999, 4)),
    "accumulate_steps=2": (1, {"accumulate": 2}, None),
    "accumulate_steps=2, batch / 2": (0.5, {"accumulate": 2}, None),
    "optimizer.clip_grad_norm=1.0": (1, {"clip_grad_norm": 1.0}, None),
}


def rate(run: Callable[[], int]) -> tuple[float, float]:
    """(images per wall second, images per CPU second) of `run()`, which returns images."""
    start, cpu = time.perf_counter(), time.process_time()
    images = run()
    return images / (time.perf_counter() - start), images / (time.process_time() - cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", required=True, help="image folder (or one holding train/)")
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--images", type=int, default=10240, help="images per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads or cpu_count())
    data, classes = load_image_folder(find_split(args.data, "train"))
    gen = torch.Generator().manual_seed(0)
    data = data.subset(torch.randperm(len(data), generator=gen)[: args.images])
    tcfg = TransformsConfig(name="cifar", crop_padding=4, hflip=True, normalize=Normalize.auto)
    train_tf, eval_tf = build_transforms(tcfg, channel_stats(data.images), 3)
    cpu = torch.device("cpu")
    model = create_model(args.model, len(classes), 3).to(memory_format=torch.channels_last)

    def train(name: str) -> int:
        factor, keywords, ema = SETTINGS[name]
        batch = int(args.batch_size * factor)
        loader = TensorLoader(data, batch, train_tf, cpu, shuffle=True, channels_last=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, fused=True)
        averaged = WeightEMA(model, *ema, warmup=True) if ema else None
        step = TrainStep(opt, nn.CrossEntropyLoss(), ema=averaged, **keywords)
        return train_one_epoch(model, loader, step).images

    def evaluate_with(tta: bool) -> int:
        loader = TensorLoader(data, 2 * args.batch_size, eval_tf, cpu, shuffle=False)
        return evaluate(FlipTTA(model) if tta else model, loader, progress=False).images

    runs = {name: (lambda name=name: train(name)) for name in SETTINGS}
    runs |= {"eval": lambda: evaluate_with(False), "eval tta=flip": lambda: evaluate_with(True)}
    for run in runs.values():  # warm up oneDNN's primitives for every batch shape
        run()
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for r in range(args.repeats):
        for name, run in runs.items():
            rates[name].append(rate(run))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1][0]:,.0f}" for n, v in rates.items()))
    print(
        f"{args.model}, batch {args.batch_size}, {args.images} images, "
        f"{torch.get_num_threads()} threads; medians of {args.repeats} interleaved rounds"
    )
    median = {n: [statistics.median(x[i] for x in v) for i in (0, 1)] for n, v in rates.items()}
    for name, (wall, per_cpu) in median.items():
        base = median["eval" if name.startswith("eval") else "off"]
        print(
            f"{name:<32} {wall:>8,.0f} img/s ({wall / base[0]:.3f}x)  "
            f"{per_cpu:>8,.0f} img per CPU-s ({per_cpu / base[1]:.3f}x)"
        )


if __name__ == "__main__":
    sys.exit(main())
