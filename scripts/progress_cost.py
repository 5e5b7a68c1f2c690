"""What the tqdm progress bars cost the hot loop: train_one_epoch + evaluate, bars on vs off.

    python scripts/progress_cost.py --model lenet5 --images 10240 --rounds 5

Bars are shown only on a terminal, so "on" runs with stderr replaced by a sink that claims
to be one (the bar is rendered and written, as a user would see it, just not displayed).
Rounds alternate off/on so a shared machine's noise hits both alike; the medians and the
per-round differences are printed. Data: random uint8 CIFAR-sized images in memory.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time

# As the cnnbench CLI does, before torch loads libgomp (both sides of a comparison get it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from imagecache import REPO  # noqa: F401  (puts the checkout on sys.path)
from torch import nn

from cnnbench.config import TransformsConfig  # noqa: E402
from cnnbench.data import ImageTensors, TensorLoader, build_transforms  # noqa: E402
from cnnbench.device import cpu_count  # noqa: E402
from cnnbench.engine import Progress, TrainStep, evaluate, train_one_epoch  # noqa: E402
from cnnbench.models import create_model  # noqa: E402


class FakeTerminal(io.StringIO):
    """A stderr that says it is a terminal, so tqdm renders its bar into it."""

    def isatty(self) -> bool:
        return True


def epoch(model, train, test, optimizer, progress: bool, log_interval: int):
    """(wall s, process CPU s) for one train epoch + one evaluation, chars the bars wrote."""
    real, sink = sys.stderr, FakeTerminal()
    sys.stderr = sink if progress else real
    try:
        start, cpu_start = time.perf_counter(), time.process_time()
        bar = Progress(len(train), "[Training]", enabled=progress, log_interval=log_interval)
        train_one_epoch(model, train, TrainStep(optimizer, nn.CrossEntropyLoss()), progress=bar)
        evaluate(model, test, progress=progress)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        return wall, cpu, len(sink.getvalue())
    finally:
        sys.stderr = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="lenet5")
    ap.add_argument("--images", type=int, default=10240)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--log-interval", type=int, default=50)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads or cpu_count())
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=gen)
    data = ImageTensors(images, torch.randint(0, 10, (args.images,), generator=gen))
    cifar = TransformsConfig(name="cifar", crop_padding=4, hflip=True)
    train_tf, eval_tf = build_transforms(cifar, ([0.5] * 3, [0.25] * 3), 3)
    cpu = torch.device("cpu")
    train = TensorLoader(data, args.batch_size, train_tf, cpu, shuffle=True)
    test = TensorLoader(data, 2 * args.batch_size, eval_tf, cpu, shuffle=False)
    model = create_model(args.model, 10, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    epoch(model, train, test, optimizer, False, args.log_interval)  # warmup
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    written = 0
    for r in range(args.rounds):
        first, second = (False, True) if r % 2 == 0 else (True, False)
        for progress in (first, second):
            wall, cpu, chars = epoch(model, train, test, optimizer, progress, args.log_interval)
            runs[progress].append((wall, cpu))
            written += chars
    print(
        f"{args.model}, {args.images} images/epoch + eval, batch {args.batch_size}, "
        f"log_interval {args.log_interval}, {args.rounds} rounds, {torch.get_num_threads()} threads"
    )
    for i, what in ((0, "wall"), (1, "process CPU")):
        off = [run[i] for run in runs[False]]
        on = [run[i] for run in runs[True]]
        off_s, on_s = statistics.median(off), statistics.median(on)
        print(
            f"{what:>11}: off {off_s:.3f} s/epoch, on {on_s:.3f} s/epoch (medians), "
            f"difference {on_s - off_s:+.3f} s ({(on_s - off_s) / off_s:+.1%}); "
            f"off {[round(x, 3) for x in off]}, on {[round(x, 3) for x in on]}"
        )
    print(f"the bars wrote {written // args.rounds} characters per epoch")


if __name__ == "__main__":
    main()
