"""What each augmentation costs on the CPU: µs per CIFAR image, per op and per pipeline.

    python scripts/augment_cost.py --data /tmp/cifar/cifar --baseline /work/main
    python scripts/augment_cost.py              # random uint8 images instead of CIFAR-10

Batches of --batch-size 32x32 images (CIFAR-10's training JPEGs with --data, decoded once
and cached by imagecache.py; else random pixels), on --threads threads (default 1: the
figure that holds on a busy machine). Rounds interleave everything measured, so a shared
machine's noise hits all alike; medians of the rounds are printed, in µs of wall time and of
this process's CPU time per image.

(a) each policy op on every image of the batch (`apply_ops`, a magnitude per image from
    TrivialAugmentWide's bins with random signs), then color jitter, erasing, MixUp, CutMix;
(b) whole train pipelines as the loader runs them (a shuffled epoch of --images images:
    index_select, the transform, mixing): basic, cifar, cifar_strong, RandAugment,
    AutoAugment's CIFAR-10 policy, ...;
(c) with --baseline DIR (a checkout of the code before this change, e.g. the main branch):
    its transforms=cifar loader, interleaved with this one's, to show an unchanged path.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from imagecache import find_split, load_image_folder  # also puts the checkout on sys.path

from cnnbench.config import compose_checked  # noqa: E402
from cnnbench.data import ImageTensors, TensorLoader, build_transforms  # noqa: E402
from cnnbench.data.autoaugment import OPS, OpTable, apply_ops  # noqa: E402

STATS = ([0.49, 0.48, 0.45], [0.25, 0.24, 0.26])
PIPELINES = {
    "basic": ["transforms=basic"],
    "cifar": ["transforms=cifar"],
    "cifar_strong": ["transforms=cifar_strong"],
    "cifar + trivial": ["transforms=cifar", "transforms.auto_augment=trivial"],
    "cifar + rand (2 ops, 9)": ["transforms=cifar", "transforms.auto_augment=rand"],
    "cifar + autoaugment cifar10": ["transforms=cifar", "transforms.auto_augment=cifar10"],
    "cifar + color_jitter 0.4": ["transforms=cifar", "transforms.color_jitter=0.4"],
    "cifar + erasing 0.25": ["transforms=cifar", "transforms.erasing=0.25"],
    "cifar + mixup 0.2": ["transforms=cifar", "transforms.mixup_alpha=0.2"],
    "cifar + cutmix 1.0": ["transforms=cifar", "transforms.cutmix_alpha=1.0"],
    "cifar_strong + mixup + cutmix": [
        "transforms=cifar_strong",
        "transforms.mixup_alpha=0.2",
        "transforms.cutmix_alpha=1.0",
    ],
}


def timed(fn: Callable[[], int]) -> tuple[float, float]:
    """(wall µs, CPU µs) per image of one call of `fn`, which returns its image count."""
    start, cpu = time.perf_counter(), time.process_time()
    n = fn()
    return (time.perf_counter() - start) * 1e6 / n, (time.process_time() - cpu) * 1e6 / n


def op_cases(batch: torch.Tensor, seed: int) -> dict[str, Callable[[], int]]:
    """(a): each op alone on every image, and the per-image ops outside the policies."""
    n = len(batch)
    gen = torch.Generator().manual_seed(seed)
    table = OpTable.build("trivial", 31, 32, 32)
    cases: dict[str, Callable[[], int]] = {}
    for name in OPS[1:]:
        k = OPS.index(name)
        row = table.row(name) if k in table.ops else 0
        magnitudes = table.magnitude(
            torch.full((n,), row), torch.randint(31, (n,), generator=gen), gen
        )
        ops = torch.full((n,), k)
        cases[name] = lambda ops=ops, m=magnitudes: len(apply_ops(batch, ops, m))
    extra = {
        "ColorJitter 0.4": ["transforms=basic", "transforms.color_jitter=0.4"],
        "RandomErasing 1.0": ["transforms=basic", "transforms.erasing=1.0"],
        "normalize only": ["transforms=basic"],
    }
    for name, overrides in extra.items():
        tf, _ = build_transforms(compose_checked(overrides).transforms, STATS, 3)
        cases[name] = lambda tf=tf: len(tf(batch, torch.Generator().manual_seed(0)))
    labels = torch.randint(10, (n,))
    normalized = batch.float()
    for name, key, alpha in (("MixUp", "mixup_alpha", 0.2), ("CutMix", "cutmix_alpha", 1.0)):
        tcfg = compose_checked([f"transforms.{key}={alpha}"]).transforms
        mix = build_transforms(tcfg, STATS, 3, 10)[0].mix
        cases[name] = lambda mix=mix: len(mix(normalized, labels, torch.Generator())[0])
    return cases


def loader_case(build, data: ImageTensors, overrides: list[str], batch: int) -> Callable[[], int]:
    """(b), (c): one shuffled epoch of `data` through a TensorLoader of `build`'s package."""
    loader_cls, build_transforms_fn = build
    tf, _ = build_transforms_fn(
        compose_checked(overrides).transforms, STATS, 3, *([10] * (build is OURS))
    )
    loader = loader_cls(data, batch, tf, torch.device("cpu"), shuffle=True, seed=0)

    def run() -> int:
        return sum(len(x) for x, _ in loader)

    return run


OURS = (TensorLoader, build_transforms)


def baseline_package(checkout: Path):
    """The TensorLoader and build_transforms of another checkout, imported side by side."""
    spec = importlib.util.spec_from_file_location(
        "cnnbench_baseline",
        checkout / "cnnbench" / "__init__.py",
        submodule_search_locations=[str(checkout / "cnnbench")],
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["cnnbench_baseline"] = module
    spec.loader.exec_module(module)
    data = importlib.import_module("cnnbench_baseline.data")
    return data.TensorLoader, data.build_transforms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", help="CIFAR-10 JPEG folder (with train/); default: random pixels")
    ap.add_argument("--baseline", type=Path, help="another checkout: its transforms=cifar path")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--images", type=int, default=5120, help="images per pipeline epoch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.data:
        data, _ = load_image_folder(find_split(args.data, "train"))
        data = data.subset(torch.randperm(len(data), generator=torch.Generator())[: args.images])
    else:
        gen = torch.Generator().manual_seed(0)
        pixels = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=gen)
        data = ImageTensors(pixels, torch.randint(10, (args.images,), generator=gen))
    batch = data.images[: args.batch_size].contiguous()
    cases = {f"op  {k}": v for k, v in op_cases(batch, 0).items()}
    for name, overrides in PIPELINES.items():
        cases[f"pipeline  {name}"] = loader_case(OURS, data, overrides, args.batch_size)
    if args.baseline:
        base = baseline_package(args.baseline.resolve())
        cases["pipeline  cifar (baseline)"] = loader_case(
            base, data, ["transforms=cifar"], args.batch_size
        )
    for fn in cases.values():  # warm up (allocator, oneDNN, first-call costs)
        fn()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            results[name].append(timed(fn))
    source = args.data or "random pixels"
    print(
        f"µs per 32x32 image, batch {args.batch_size}, {torch.get_num_threads()} thread(s), "
        f"{source}, medians of {args.rounds} interleaved rounds"
    )
    print(f"{'':44s} {'wall':>8s} {'CPU':>8s}")
    for name, values in results.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        print(f"{name:44s} {wall:8.1f} {cpu:8.1f}")
    if args.baseline:
        ours = [v[1] for v in results["pipeline  cifar"]]
        base = [v[1] for v in results["pipeline  cifar (baseline)"]]
        ratios = [a / b for a, b in zip(ours, base, strict=True)]
        print(
            "transforms=cifar, this checkout / baseline (CPU µs per image, per round): "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + f"; median {statistics.median(ratios):.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
