"""A folder of large JPEGs: hand-written torchvision loop vs cnnbench streamed, mapped, in memory.

    python scripts/big_folder_bench.py                       # 4,800 images, 32 and 224
    python scripts/big_folder_bench.py --sizes 32 --rounds 5 --json out.json

The folder: --images CIFAR-10 training images (from --cifar, root/<class>/*.jpg) re-encoded as
512x384 JPEGs, generated once into $CNNBENCH_CACHE/big-folder-512x384-N (or --folder). For
each model input size S (--sizes; the images are stored at S for 32, at 256 for 224 as the
rrc224 preset does) and in one process, interleaved over --rounds rounds after one untimed
first epoch of every variant and kind (so the figures are "from the second epoch on"):

(a) torchvision: ImageFolder + per-sample transforms, DataLoader(num_workers=cores,
    persistent_workers=True): the loop one writes by hand;
(b) cnnbench streamed (dataset.cache=off dataset.max_memory_mb=1): DataLoader workers decode
    each file every epoch (with PIL's draft: reduced-scale JPEG decoding);
(c) cnnbench with the memory-mapped decoded cache (dataset.cache=disk);
(d) cnnbench in memory (dataset.cache=memory).

Kinds of epoch: `augment` (the batches alone, RandomResizedCrop(S) + flip: per sample in (a),
batched on the uint8 batch in (b)-(d)), `plain` (the batches alone with the eval transform:
resize (a) or center crop, no random ops) and `model` (train_one_epoch of LeNet-5 with fused
Adam, channels_last: the same model and step for all four; at 224 with an adaptive 5x5 average
pool before its head, as the registry's lenet5 takes 32x32 only). At 224 the data epochs use
every --every-224-th image and the training epochs every --model-every-th, as a 224 epoch is
slow on a small CPU. Printed: images/s per round, medians, the ratios (c)/(d), (c)/(a), (c)/(b)
(medians of the per-round ratios), and the first load of each cnnbench variant (its one scan;
for (c) decoding into the cache file).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# As the cnnbench CLI does, before torch loads libgomp (every variant gets it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python scripts/x.py` from a checkout imports this cnnbench
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from cnnbench.config import compose_checked  # noqa: E402
from cnnbench.data import TensorLoader, build_transforms  # noqa: E402
from cnnbench.data.cache import cache_root  # noqa: E402
from cnnbench.data.folder import load_folder  # noqa: E402
from cnnbench.data.stats import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from cnnbench.device import cpu_count  # noqa: E402
from cnnbench.engine import TrainStep, train_one_epoch  # noqa: E402
from cnnbench.models import create_model  # noqa: E402
from cnnbench.optim import fused_kwargs  # noqa: E402

VARIANTS = {
    "a": "torchvision ImageFolder + DataLoader",
    "b": "cnnbench streamed (cache=off)",
    "c": "cnnbench memory-mapped (cache=disk)",
    "d": "cnnbench in memory (cache=memory)",
}
CNNBENCH_CACHE = {"b": ["dataset.cache=off", "dataset.max_memory_mb=1"]}
CNNBENCH_CACHE.update(c=["dataset.cache=disk"], d=["dataset.cache=memory"])


def make_folder(cifar: Path, out: Path, images: int) -> Path:
    """`images` CIFAR images (an equal share per class) re-encoded at 512x384, made once."""
    done = out / ".complete"
    if done.is_file():
        return out
    classes = sorted(d.name for d in cifar.iterdir() if d.is_dir())
    per_class = images // len(classes)
    start = time.perf_counter()
    for name in classes:
        (out / name).mkdir(parents=True, exist_ok=True)
        for src in sorted((cifar / name).glob("*.jpg"))[:per_class]:
            big = Image.open(src).convert("RGB").resize((512, 384), Image.Resampling.BICUBIC)
            big.save(out / name / src.name, quality=90)
    done.write_text("")
    took = time.perf_counter() - start
    print(f"made {per_class * len(classes)} 512x384 JPEGs in {out} ({took:.0f} s)", flush=True)
    return out


def small_model(size: int) -> nn.Module:
    """LeNet-5 (10 classes, RGB); at sizes other than 32 an adaptive 5x5 pool feeds its head."""
    model = create_model("lenet5", 10, 3)
    if size != 32:
        model.features.append(nn.AdaptiveAvgPool2d(5))
    return model.to(memory_format=torch.channels_last)


KINDS = {
    "augment": "data path, train transform (RandomResizedCrop + flip)",
    "plain": "data path, eval transform (resize (a) / center crop, no random ops)",
    "model": "training epoch of the small model (train transform)",
}


def cnnbench_split(root: Path, cache_dir: Path, store: int, crop: int, variant: str, workers):
    """(all images as one split, (train, eval) transforms, first-load seconds), variant b-d."""
    cfg = compose_checked(
        [
            "dataset=folder",
            f"dataset.root={root}",
            f"dataset.cache_dir={cache_dir}",
            f"dataset.image_size={store}",
            f"transforms.crop={crop}",
            "transforms.crop_mode=resized",
            "transforms.hflip=true",
            "transforms.normalize=imagenet",
            *CNNBENCH_CACHE[variant],
        ]
    )
    start = time.perf_counter()
    pools, *_ = load_folder(cfg.dataset, cfg.transforms, workers, progress=False)
    seconds = time.perf_counter() - start
    return pools["all"], build_transforms(cfg.transforms, (IMAGENET_MEAN, IMAGENET_STD), 3), seconds


def torchvision_loader(root: Path, size: int, kind: str, batch: int, workers: int, every: int):
    """(a): ImageFolder with per-sample transforms, every `every`-th image, in a DataLoader."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    if kind == "plain":  # as cnnbench's eval pipeline: stored square, center crop
        steps = [transforms.Resize((256, 256)), transforms.CenterCrop(size)]
        steps = [transforms.Resize((size, size))] if size == 32 else steps
    else:
        steps = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
    steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    data = datasets.ImageFolder(str(root), transform=transforms.Compose(steps))
    return DataLoader(
        Subset(data, range(0, len(data), every)),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )


class ChannelsLast:
    """A DataLoader's batches in channels_last, as TensorLoader gives them."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        pass  # the DataLoader reshuffles by itself

    def __iter__(self):
        for x, y in self.loader:
            yield x.contiguous(memory_format=torch.channels_last), y


class Variant:
    """One data path with a loader per kind; `epoch(kind)` runs one epoch -> images/s."""

    def __init__(self, loaders: dict, size: int) -> None:
        self.loaders, self.epochs = loaders, 0
        self.model = small_model(size)
        params = list(self.model.parameters())
        optimizer = torch.optim.Adam(params, lr=1e-3, **fused_kwargs(params))
        self.step = TrainStep(optimizer, nn.CrossEntropyLoss())

    def epoch(self, kind: str) -> float:
        self.epochs += 1
        loader = self.loaders[kind]
        loader.set_epoch(self.epochs)
        start = time.perf_counter()
        if kind == "model":
            seen = train_one_epoch(self.model, loader, self.step).images
        else:
            seen = sum(x.shape[0] for x, _ in loader)
        return seen / (time.perf_counter() - start)


def subset(split, every: int):
    return split if every == 1 else split.subset(torch.arange(0, len(split), every))


def build_variants(args, root: Path, size: int, cache_dir: Path) -> tuple[dict, dict]:
    """{name: Variant} for size `size` and {name: first-load seconds}."""
    store = size if size == 32 else 256
    every = {"augment": 1, "plain": 1, "model": 1}
    if size != 32:
        every = {"augment": args.every_224, "plain": args.every_224, "model": args.model_every}
    workers = cpu_count() if args.workers is None else args.workers
    shutil.rmtree(cache_dir, ignore_errors=True)  # a first load that really decodes
    variants, first = {}, {}
    tv = {k: torchvision_loader(root, size, k, args.batch, workers, e) for k, e in every.items()}
    variants["a"] = Variant({k: ChannelsLast(v) for k, v in tv.items()}, size)
    cpu = torch.device("cpu")
    for name in "bcd":
        split, (train_tf, eval_tf), first[name] = cnnbench_split(
            root, cache_dir, store, size, name, workers
        )
        loaders = {
            kind: TensorLoader(
                subset(split, e),
                args.batch,
                eval_tf if kind == "plain" else train_tf,
                cpu,
                shuffle=True,
                channels_last=True,
            )
            for kind, e in every.items()
        }
        variants[name] = Variant(loaders, size)
    return variants, first


def run_size(args, root: Path, size: int) -> dict:
    cache_dir = Path(args.cache_dir or cache_root(None) / "big-folder-bench") / str(size)
    variants, first = build_variants(args, root, size, cache_dir)
    cached = sum(f.stat().st_size for f in cache_dir.rglob("*.u8"))
    counts = {k: len(loader.loader.dataset) for k, loader in variants["a"].loaders.items()}
    print(
        f"\n== {size}x{size}: first load (scan) b {first['b']:.1f} s, c {first['c']:.1f} s "
        f"(writes {cached / 2**20:,.0f} MB), d {first['d']:.1f} s; images per epoch: "
        + ", ".join(f"{k} {n}" for k, n in counts.items()),
        flush=True,
    )
    for v in variants.values():  # warm-up: the first epoch of each, untimed
        for kind in KINDS:
            v.epoch(kind)
    rates = {k: {kind: [] for kind in KINDS} for k in VARIANTS}
    for r in range(args.rounds):
        for kind in KINDS:
            for name, v in variants.items():
                rates[name][kind].append(v.epoch(kind))
        line = "  ".join(
            f"{k}: " + "/".join(f"{rates[k][kind][-1]:,.0f}" for kind in KINDS) for k in VARIANTS
        )
        print(f"round {r + 1} (img/s {'/'.join(KINDS)})  {line}", flush=True)
    return summarize(size, rates, first, cached)


def summarize(size: int, rates: dict, first: dict, cached: int) -> dict:
    result = {"size": size, "first_load_s": first, "cache_mb": cached / 2**20, "rates": rates}
    for kind in KINDS:
        med = {k: statistics.median(rates[k][kind]) for k in VARIANTS}
        result[f"median_{kind}"] = med
        per_round = [
            {p: rates["c"][kind][i] / rates[p][kind][i] for p in "abd"}
            for i in range(len(rates["c"][kind]))
        ]
        ratios = {p: statistics.median(r[p] for r in per_round) for p in "abd"}
        result[f"ratios_{kind}"] = ratios
        print(
            f"{size}x{size} {kind:7s} median img/s: "
            + ", ".join(f"({k}) {med[k]:,.0f}" for k in VARIANTS)
            + f"  |  (c)/(d) {ratios['d']:.2f}x, (c)/(a) {ratios['a']:.2f}x, "
            f"(c)/(b) {ratios['b']:.2f}x",
            flush=True,
        )
    return result


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cifar", default="/tmp/cifar/cifar/train", help="CIFAR-10 JPEG folder")
    ap.add_argument("--folder", help="where the 512x384 JPEGs go (default: in the cache root)")
    ap.add_argument("--images", type=int, default=4800)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 224])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--every-224", type=int, default=4, help="224: data epochs use every Nth image")
    ap.add_argument("--model-every", type=int, default=10, help="224: training epochs, every Nth")
    ap.add_argument("--workers", type=int, help="loader workers of (a) and (b); default: cores")
    ap.add_argument("--cache-dir", help="cnnbench's cache for (b)-(d) (emptied first)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    torch.manual_seed(0)
    folder = Path(args.folder or cache_root(None) / f"big-folder-512x384-{args.images}")
    root = make_folder(Path(args.cifar), folder, args.images)
    print(
        f"{cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{args.images} JPEGs 512x384 in {root}; batch {args.batch}; {args.rounds} rounds; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results = [run_size(args, root, size) for size in args.sizes]
    if args.json:
        Path(args.json).write_text(json.dumps(dict(cpu=cpu_name(), results=results), indent=1))


if __name__ == "__main__":
    main()
