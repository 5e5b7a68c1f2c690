"""Training throughput: the seed-style loop vs cnnbench's engine on the same images.

    python scripts/bench.py --model lenet5 --data ~/.cache/cnnbench/cifar10-jpeg/cifar
    python scripts/bench.py --model alexnet_cifar --data DIR --images 512 --precision bf16 --channels-last

--data is an image folder, root/<class>/*.jpg (or a folder holding train/ like cifar/).
In one invocation, interleaved over --repeats rounds (the machine may be shared):

(a) seed-style: torchvision ImageFolder with per-sample PIL transforms (RandomCrop 32 pad 4 +
    flip as seed 000, ToTensor, Normalize), DataLoader with default workers, `.item()` every
    step, plain fp32, NCHW;
(b) cnnbench: the images decoded once into uint8 tensors (cached; the one-off decode is
    reported apart), batched augmentation (TensorLoader + build_transforms), train_one_epoch,
    with --precision / --channels-last / --compile; --transforms PRESET gives it a preset's
    train pipeline instead of crop + flip (e.g. cifar_strong: the seed-style loop keeps crop +
    flip, so the ratio is what a user gains while turning the stronger policy on).

Both train the same model (SGD, momentum 0.9) on --images images per round after a short
warmup. Printed: images/s of each and their ratio, the model alone (fwd+bwd on one fixed
batch), and achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode) against a measured
peak: a 3x3 conv forward+backward microbenchmark on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import NamedTuple

# As the cnnbench CLI does, before torch loads libgomp (both sides of a comparison get it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from imagecache import find_split, load_image_folder  # also puts the checkout on sys.path
from torch import nn

from cnnbench.config import (  # noqa: E402
    OPTIMIZERS,
    Normalize,
    Precision,
    TransformsConfig,
    compose_checked,
)
from cnnbench.data import ImageTensors, TensorLoader, build_transforms, channel_stats  # noqa: E402
from cnnbench.device import (  # noqa: E402
    Workload,
    autocast_for,
    cpu_count,
    cpu_has_native_bf16,
    resolve_precision,
)
from cnnbench.engine import TrainStep, train_one_epoch  # noqa: E402
from cnnbench.models import count_params, create_model, get_model_info  # noqa: E402
from cnnbench.optim import build_optimizer  # noqa: E402
from cnnbench.perf import StepTimer, train_flops_per_image  # noqa: E402


class Rate(NamedTuple):
    """Images per second of wall time, and per second of this process's CPU time."""

    wall: float
    cpu: float


class DeviceArgs:
    """The `device` config keys resolve_precision reads."""

    def __init__(self, precision: str, channels_last: bool) -> None:
        self.precision = Precision(precision)
        self.channels_last = channels_last


def conv_peak(dtype: torch.dtype, batch: int = 32, channels: int = 256, size: int = 16) -> float:
    """GFLOP/s of a compute-bound 3x3 conv forward+backward (best of 3), channels_last."""
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(
        memory_format=torch.channels_last
    )
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    flops = 3 * 2 * batch * channels * channels * 9 * size * size  # fwd + grad input + grad weight
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
    best = float("inf")
    for i in range(4):
        start = time.perf_counter()
        with autocast:
            out = conv(x)
        out.float().sum().backward()
        if i:  # the first run creates the oneDNN primitives
            best = min(best, time.perf_counter() - start)
        conv.weight.grad = x.grad = None
    return flops / best / 1e9


def seed_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    """What the seeds write: Adam(lr=1e-3) (seeds 000/001) or SGD(momentum=0.9) (seed 004)."""
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=1e-3)
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def cnnbench_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    lr = 1e-3 if name == "adam" else 0.01
    ocfg = replace(OPTIMIZERS[name], lr=lr, weight_decay=0.0)  # as the seed-style loop
    return build_optimizer(ocfg, model.parameters())


def seed_style(model, root: Path, size: int, batch: int, images: int, *, stats, augment, opt):
    """The loop a user writes from the seeds; returns images/s over `images` images."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    steps = [transforms.Resize((size, size))] if size != 32 else []
    if augment:
        steps += [transforms.RandomCrop(size, padding=4), transforms.RandomHorizontalFlip()]
    steps += [transforms.ToTensor(), transforms.Normalize(*stats)]
    loader = DataLoader(
        datasets.ImageFolder(str(root), transform=transforms.Compose(steps)),
        batch_size=batch,
        shuffle=True,
    )
    optimizer = seed_optimizer(opt, model)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    running_loss, corr, seen = 0.0, 0, 0
    start, cpu_start = time.perf_counter(), time.process_time()
    while seen < images:
        for img, lbl in loader:
            optimizer.zero_grad()
            output = model(img)
            loss = loss_fn(output, lbl)
            loss.backward()
            optimizer.step()
            running_loss += loss.item() * img.size(0)
            corr += (output.argmax(dim=1) == lbl).sum().item()
            seen += img.size(0)
            if seen >= images:
                break
    return Rate(seen / (time.perf_counter() - start), seen / (time.process_time() - cpu_start))


def engine(net, model, data: ImageTensors, train_tf, batch, images, *, autocast, channels_last,
           seed, opt):  # fmt: skip
    """cnnbench's path on a random `images`-image subset; returns images/s."""
    gen = torch.Generator().manual_seed(seed)
    subset = data.subset(torch.randperm(len(data), generator=gen)[:images])
    loader = TensorLoader(
        subset,
        batch,
        train_tf,
        torch.device("cpu"),
        shuffle=True,
        seed=seed,
        channels_last=channels_last,
    )
    optimizer = cnnbench_optimizer(opt, model)
    cpu_start = time.process_time()
    result = train_one_epoch(net, loader, TrainStep(optimizer, nn.CrossEntropyLoss(), autocast))
    return Rate(result.images / result.seconds, result.images / (time.process_time() - cpu_start))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="lenet5")
    ap.add_argument(
        "--data", required=True, help="image folder root/<class>/*.jpg (or with train/)"
    )
    ap.add_argument(
        "--images", type=int, default=5120, help="images per measurement (default 5120)"
    )
    ap.add_argument("--batch-size", type=int, default=128, help="seed 000's 128 by default")
    ap.add_argument("--precision", default="fp32", choices=[p.value for p in Precision])
    ap.add_argument("--channels-last", action="store_true", help="cnnbench side: channels_last")
    ap.add_argument("--compile", action="store_true", help="cnnbench side: torch.compile")
    ap.add_argument(
        "--optimizer", default="adam", choices=["adam", "sgd"],
        help="adam (lr 1e-3, seeds 000/001, cnnbench's default) or sgd (momentum 0.9, seed 004)",
    )  # fmt: skip
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds (median reported)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--no-augment", action="store_true", help="both sides: no crop/flip")
    ap.add_argument(
        "--transforms", metavar="PRESET",
        help="cnnbench side: this transforms preset's train pipeline (e.g. cifar_strong)",
    )  # fmt: skip
    ap.add_argument("--peak-batch", type=int, default=32, help="batch of the peak conv benchmark")
    ap.add_argument("--json", help="also write the figures as JSON here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads or cpu_count())
    torch.manual_seed(0)
    info = get_model_info(args.model)
    root = find_split(args.data, "train")
    start = time.perf_counter()
    data, classes = load_image_folder(root)
    decode_seconds = time.perf_counter() - start
    size = info.input_size[1]
    input_size = (3, size, size)
    stats = channel_stats(data.images)
    augment = not args.no_augment
    tcfg = TransformsConfig(
        name="bench",
        resize=size if size != data.images.shape[-1] else None,
        crop_padding=4 if augment else 0,
        hflip=augment,
        normalize=Normalize.auto,
    )
    if args.transforms:
        tcfg = compose_checked([f"transforms={args.transforms}"]).transforms
        tcfg.resize = size if size != data.images.shape[-1] else None
    train_tf, _ = build_transforms(tcfg, stats, 3, len(classes))

    seed_model = create_model(args.model, len(classes), 3)
    ours = create_model(args.model, len(classes), 3)
    if args.channels_last:
        ours = ours.to(memory_format=torch.channels_last)
    workload = Workload(args.model, input_size, args.batch_size, len(data) * 20)
    precision = resolve_precision(
        DeviceArgs(args.precision, args.channels_last), torch.device("cpu"), ours, workload
    )
    autocast = autocast_for(precision, torch.device("cpu"))
    net = torch.compile(ours) if args.compile else ours
    flops = train_flops_per_image(seed_model, input_size)
    images = min(args.images, len(data))
    print(
        f"{args.model} ({count_params(ours):,} params, {flops / 1e6:,.1f} MFLOP per training "
        f"image), {len(data)} images of {root} ({decode_seconds:.1f} s to load/decode), "
        f"{images} images x {args.repeats} rounds, batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads; cnnbench: {precision.value}, "
        f"channels_last {'on' if args.channels_last else 'off'}, "
        f"compile {'on' if args.compile else 'off'}, transforms "
        f"{args.transforms or ('crop + flip' if augment else 'none')}",
        flush=True,
    )

    run_seed = partial(
        seed_style, seed_model, root, size, args.batch_size, stats=stats, augment=augment,
        opt=args.optimizer,
    )  # fmt: skip
    run_ours = partial(
        engine, net, ours, data, train_tf, args.batch_size, autocast=autocast,
        channels_last=args.channels_last, opt=args.optimizer,
    )  # fmt: skip
    # Warm up both paths (oneDNN primitives, compile) on a few batches, untimed.
    warm = min(images, 2 * args.batch_size)
    run_seed(warm)
    run_ours(warm, seed=99)
    seed_rates, our_rates = [], []
    for r in range(args.repeats):
        seed_rates.append(run_seed(images))
        our_rates.append(run_ours(images, seed=r))
        print(
            f"round {r + 1}: seed-style {seed_rates[-1].wall:,.0f} img/s, cnnbench "
            f"{our_rates[-1].wall:,.0f} img/s ({our_rates[-1].wall / seed_rates[-1].wall:.2f}x); "
            f"per CPU-second {seed_rates[-1].cpu:,.0f} vs {our_rates[-1].cpu:,.0f} "
            f"({our_rates[-1].cpu / seed_rates[-1].cpu:.2f}x)",
            flush=True,
        )
    seed_rate = statistics.median(r.wall for r in seed_rates)
    our_rate = statistics.median(r.wall for r in our_rates)
    seed_cpu = statistics.median(r.cpu for r in seed_rates)
    our_cpu = statistics.median(r.cpu for r in our_rates)

    # The model alone: fwd+bwd on one fixed batch, no data path, no optimizer.
    alone = {}
    for name, model, prec in (("fp32", seed_model, Precision.fp32), ("cnnbench", ours, precision)):
        timer = StepTimer(
            model, input_size, args.batch_size, channels_last=args.channels_last and model is ours
        )
        ac = autocast_for(prec, torch.device("cpu"))
        timer.step(ac)
        alone[name] = args.batch_size / min(timer.step(ac) for _ in range(3))
    peak32 = conv_peak(torch.float32, args.peak_batch)
    peak16 = conv_peak(torch.bfloat16, args.peak_batch) if cpu_has_native_bf16() else None
    our_peak = peak16 if precision == Precision.bf16 and peak16 else peak32

    def gf(rate: float) -> float:
        return rate * flops / 1e9

    print(
        f"peak (3x3 conv 256->256 fwd+bwd, channels_last): fp32 {peak32:,.0f} GFLOP/s"
        + (f", bf16 {peak16:,.0f} GFLOP/s" if peak16 else ", bf16 not native on this CPU")
    )
    print(
        f"seed-style loop: {seed_rate:,.0f} img/s  ({gf(seed_rate):,.1f} GFLOP/s, "
        f"{gf(seed_rate) / peak32:.1%} of fp32 peak)"
    )
    print(
        f"cnnbench engine: {our_rate:,.0f} img/s  ({gf(our_rate):,.1f} GFLOP/s, "
        f"{gf(our_rate) / our_peak:.1%} of {precision.value} peak)"
    )
    print(
        f"model alone (fwd+bwd, fixed batch): fp32 NCHW {alone['fp32']:,.0f} img/s, "
        f"cnnbench settings {alone['cnnbench']:,.0f} img/s"
    )
    print(
        f"per CPU-second (robust on a busy machine with --threads 1): seed-style "
        f"{seed_cpu:,.0f} img, cnnbench {our_cpu:,.0f} img ({our_cpu / seed_cpu:.2f}x)"
    )
    print(f"speedup: {our_rate / seed_rate:.2f}x (cnnbench / seed-style, medians)")
    if args.json:
        record = dict(
            model=args.model,
            images=images,
            batch_size=args.batch_size,
            threads=torch.get_num_threads(),
            precision=precision.value,
            channels_last=args.channels_last,
            compile=args.compile,
            transforms=args.transforms,
            seed_style_img_s=[r.wall for r in seed_rates],
            cnnbench_img_s=[r.wall for r in our_rates],
            seed_style_img_per_cpu_s=[r.cpu for r in seed_rates],
            cnnbench_img_per_cpu_s=[r.cpu for r in our_rates],
            speedup_cpu=our_cpu / seed_cpu,
            speedup=our_rate / seed_rate,
            train_flops_per_image=flops,
            peak_gflops_fp32=peak32,
            peak_gflops_bf16=peak16,
            model_alone_img_s=alone,
        )
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
