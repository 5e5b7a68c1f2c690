"""Datasets held in memory as uint8 tensors (or streamed from disk), with seeded splits.

Each registered loader returns the dataset's own splits; load_dataset() carves what is
missing (test from train when there is no official test set, val from train) with
`dataset.split_seed`, so the split stays fixed when the training seed changes.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CnnbenchError
from .cache import content_key
from .splits import DataSplits, ImageFiles, ImageTensors, MappedImages, SkippedFile, Split

__all__ = [
    "DataSplits",
    "ImageFiles",
    "ImageTensors",
    "LoadOptions",
    "Loaded",
    "MappedImages",
    "SkippedFile",
    "dataset_names",
    "load_dataset",
    "register_dataset",
    "split_off",
]

log = logging.getLogger("cnnbench")


@dataclass
class LoadOptions:
    transforms: Any = None  # the transforms config: folders are stored at transforms.resize
    num_workers: str | int = "auto"  # loader workers for scanning and streaming folders
    progress: bool = True


@dataclass
class Loaded:
    """What a loader returns: its own splits (None: carve it), class names, a content key."""

    train: Split
    test: Split | None
    classes: list[str]
    key: str  # changes whenever the data would (files, sizes, parameters)
    val: Split | None = None
    skipped: list[SkippedFile] = field(default_factory=list)


Loader = Callable[[Any, LoadOptions], Loaded]
_DATASETS: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    def decorate(fn: Loader) -> Loader:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        _DATASETS[name] = fn
        return fn

    return decorate


def dataset_names() -> list[str]:
    return sorted(_DATASETS)


def split_off(data: Split, fraction: float, seed: int, what: str) -> tuple[Split, Split]:
    """Seeded random split: (rest, carved) with `fraction` of the samples in `carved`."""
    n = len(data)
    k = int(round(n * fraction))
    if k < 1 or k >= n:
        raise CnnbenchError(
            f"a {what} fraction of {fraction} of {n} images leaves an empty split; "
            "use more data or another fraction"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return data.subset(order[k:]), data.subset(order[:k])


def split_counts(data: Split, splits: list[float], seed: int) -> tuple[Split, Split, Split]:
    """[train, val, test] counts (or fractions) of one shuffled list, seed 004's way:
    `random.seed(42); random.shuffle(files)`, then consecutive slices."""
    n = len(data)
    values = [float(v) for v in splits]
    if all(v < 1 for v in values):
        val, test = round(n * values[1]), round(n * values[2])
        rest = n - val - test
        train = rest if abs(sum(values) - 1) < 1e-6 else min(rest, round(n * values[0]))
        counts = [train, val, test]
    else:
        counts = [int(v) for v in values]
    if sum(counts) > n:
        raise CnnbenchError(
            f"dataset.splits={[int(c) for c in counts]} asks for {sum(counts)} images but only "
            f"{n} usable ones were found; lower the counts or use fractions like [0.8,0.1,0.1]"
        )
    for name, count in zip(("train", "validation", "test"), counts, strict=True):
        if count < 1:
            raise CnnbenchError(
                f"dataset.splits={values} leaves the {name} set of {n} images empty; "
                "give every set at least one image"
            )
    if sum(counts) < n:
        log.info(f"dataset.splits uses {sum(counts)} of {n} images; the rest is left out")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    a, b, c = counts
    index = [torch.tensor(order[lo:hi]) for lo, hi in ((0, a), (a, a + b), (a + b, a + b + c))]
    return data.subset(index[0]), data.subset(index[1]), data.subset(index[2])


def fold_of(labels: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """The fold (0..folds-1) of each sample, stratified: each class's samples in a seeded
    random order, classes one after another, dealt round-robin to the folds. Every fold gets
    each class's count / folds (give or take one) and the folds' sizes differ by at most one."""
    n = labels.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    by_class = order[torch.sort(labels[order], stable=True).indices]
    fold = torch.empty(n, dtype=torch.int64)
    fold[by_class] = torch.arange(n) % folds
    return fold


def _fold_split(cfg, train: Split, val: Split | None) -> tuple[Split, Split]:
    """(training folds, validation fold) of `train`, the data left after the test split."""
    if val is not None:
        raise CnnbenchError(
            f"dataset.folds carves the validation set from the training data, but {cfg.name} "
            "comes with its own validation set (a val/ folder or val rows); drop dataset.folds "
            "and dataset.fold, or merge the validation images into train"
        )
    if len(train) < cfg.folds:
        raise CnnbenchError(
            f"dataset.folds={cfg.folds} needs at least {cfg.folds} images to split, "
            f"but only {len(train)} are left after the test split"
        )
    fold = fold_of(train.labels, cfg.folds, cfg.split_seed + 1)
    rest, held = (fold != cfg.fold).nonzero().flatten(), (fold == cfg.fold).nonzero().flatten()
    log.info(
        f"fold {cfg.fold} of {cfg.folds}: {len(held)} validation / {len(rest)} training "
        "images (the test split is the same for every fold)"
    )
    return train.subset(rest), train.subset(held)


def load_dataset(
    cfg, tcfg=None, *, num_workers: str | int = "auto", progress: bool = True
) -> DataSplits:
    """Load dataset `cfg` and split it into train/val/test (see the module docstring).

    `tcfg` (the transforms config) sets the storage size of folder images (transforms.resize).
    """
    if cfg.name not in _DATASETS:
        raise CnnbenchError(
            f"unknown dataset {cfg.name!r}; valid datasets: {', '.join(dataset_names())}"
        )
    got = _DATASETS[cfg.name](cfg, LoadOptions(tcfg, num_workers, progress))
    train, val, test = got.train, got.val, got.test
    given = getattr(cfg, "splits", None)  # only sets without an official test split have it
    splits = None if given is None else [float(v) for v in given]
    if splits is not None:
        if cfg.folds is not None:
            raise CnnbenchError(
                "dataset.splits and dataset.folds both choose the validation set; with k-fold "
                "drop dataset.splits (the test set is then dataset.test_split of the images)"
            )
        if val is not None or test is not None:
            raise CnnbenchError(
                f"dataset.splits splits one set of images, but {cfg.name} comes with its own "
                f"{'validation' if val is not None else 'test'} set; drop dataset.splits "
                "(validation is carved from train with dataset.val_split)"
            )
        train, val, test = split_counts(train, splits, cfg.split_seed)
    else:
        if test is None:
            train, test = split_off(train, cfg.test_split, cfg.split_seed, "test")
        if cfg.folds is not None:
            train, val = _fold_split(cfg, train, val)
        elif val is None:
            train, val = split_off(train, cfg.val_split, cfg.split_seed + 1, "validation")
    split_params = [splits, cfg.val_split, getattr(cfg, "test_split", None), cfg.split_seed]
    split_params += [cfg.folds, cfg.fold] if cfg.folds is not None else []
    return DataSplits(
        train=train,
        val=val,
        test=test,
        classes=got.classes,
        skipped=got.skipped,
        stats_key=content_key("train-split", cfg.name, got.key, split_params),
        cache_dir=cfg.cache_dir,
        name=cfg.name,
    )


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """uint8 N x C x H x W resized to size x size (bilinear, antialiased), in chunks."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True)
        out[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


@register_dataset("digits")
def _digits(cfg, opts: LoadOptions) -> Loaded:
    """scikit-learn's bundled 8x8 digits (values 0-16), upscaled to dataset.image_size uint8."""
    import sklearn
    from sklearn.datasets import load_digits

    size = cfg.image_size or 8  # null: the native 8x8
    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    big = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    images = big.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    key = content_key("digits", sklearn.__version__, size)
    return Loaded(ImageTensors(images, labels), None, [str(d) for d in range(10)], key)


@register_dataset("fake")
def _fake(cfg, opts: LoadOptions) -> Loaded:
    """torchvision's FakeData: seeded random images and labels."""
    from torchvision.datasets import FakeData

    side = cfg.image_size
    ds = FakeData(
        size=cfg.size,
        image_size=(cfg.channels, side, side),
        num_classes=cfg.num_classes,
        random_offset=cfg.split_seed,
    )
    images, labels = [], []
    for img, label in ds:
        arr = np.asarray(img, dtype=np.uint8)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
        labels.append(int(label))
    data = ImageTensors(torch.stack(images), torch.tensor(labels, dtype=torch.int64))
    key = content_key("fake", cfg.size, side, cfg.channels, cfg.num_classes, cfg.split_seed)
    return Loaded(data, None, [f"class{i}" for i in range(cfg.num_classes)], key)


@dataclass
class _TorchvisionSet:
    cls_name: str  # class in torchvision.datasets
    title: str
    folder: str  # what must exist under dataset.root
    source: str  # where the files come from
    native: int  # native image side


_TORCHVISION = {
    "cifar10": _TorchvisionSet(
        "CIFAR10",
        "CIFAR-10",
        "cifar-10-batches-py",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extract it there)",
        32,
    ),
    "cifar100": _TorchvisionSet(
        "CIFAR100",
        "CIFAR-100",
        "cifar-100-python",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (extract it there)",
        32,
    ),
    "mnist": _TorchvisionSet(
        "MNIST",
        "MNIST",
        "MNIST/raw",
        "https://ossci-datasets.s3.amazonaws.com/mnist/ (the four *-ubyte.gz files)",
        28,
    ),
    "fashion_mnist": _TorchvisionSet(
        "FashionMNIST",
        "Fashion-MNIST",
        "FashionMNIST/raw",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/ (the four *-ubyte.gz files)",
        28,
    ),
}


def _torchvision_split(name: str, spec: _TorchvisionSet, root: Path, train: bool, download: bool):
    """One split of a torchvision dataset; missing files or no network -> one clear message."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, spec.cls_name)
    expected = root / spec.folder
    fetch = (
        f"On a connected machine run `cnnbench stats dataset={name} dataset.root=data "
        f"dataset.download=true` (or download {spec.source}) and copy data/{spec.folder} to "
        f"{expected}"
    )
    try:
        return cls(root=str(root), train=train, download=download)
    except RuntimeError as err:
        text = str(err).lower()
        if "error downloading" in text:  # MNIST-style: every mirror failed
            raise CnnbenchError(
                f"could not download {spec.title} to {root}: this machine looks offline. "
                f"{fetch}, then keep dataset.download=false."
            ) from None
        if "not found" not in text and "corrupt" not in text:
            raise
        raise CnnbenchError(
            f"{spec.title} files not found under {root} (expected {expected}). Offline? {fetch}; "
            "or run once with dataset.download=true where there is internet."
        ) from None
    except OSError as err:  # urllib's URLError and friends: the download itself failed
        raise CnnbenchError(
            f"could not download {spec.title} to {root} ({err.__class__.__name__}: "
            f"{getattr(err, 'reason', err)}): this machine looks offline. {fetch}, then keep "
            "dataset.download=false."
        ) from None


def _torchvision_loader(name: str) -> Loader:
    spec = _TORCHVISION[name]

    def load(cfg, opts: LoadOptions) -> Loaded:
        root = Path(cfg.root).expanduser().resolve()
        splits = []
        for is_train in (True, False):
            ds = _torchvision_split(name, spec, root, is_train, cfg.download)
            data = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(ds.data)
            # CIFAR: N x H x W x C numpy; MNIST-likes: N x H x W uint8 tensor.
            images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
            images = images.contiguous()
            if cfg.image_size:
                images = resize_uint8(images, cfg.image_size)
            targets = torch.as_tensor(ds.targets, dtype=torch.int64)
            splits.append(ImageTensors(images, targets))
        folder = root / spec.folder
        stamps = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())
        key = content_key(name, str(root), stamps, cfg.image_size)
        return Loaded(splits[0], splits[1], list(ds.classes), key)

    return load


for _name in _TORCHVISION:
    register_dataset(_name)(_torchvision_loader(_name))


def _files_loaded(pools: dict[str, Split], classes: list[str], skipped: list, key: str) -> Loaded:
    """Loaded from scanned pools: 'all' (one pool) or 'train' with optional 'val', 'test'."""
    train = pools.get("train", pools.get("all"))
    return Loaded(train, pools.get("test"), classes, key, pools.get("val"), skipped)


@register_dataset("folder")
def _folder(cfg, opts: LoadOptions) -> Loaded:
    """Images in class subfolders (see folder.py for the layouts)."""
    from .folder import load_folder

    return _files_loaded(*load_folder(cfg, opts.transforms, opts.num_workers, opts.progress))


@register_dataset("csv")
def _csv(cfg, opts: LoadOptions) -> Loaded:
    """Images listed in a CSV with their labels (see csv_labels.py)."""
    from .csv_labels import load_csv

    return _files_loaded(*load_csv(cfg, opts.transforms, opts.num_workers, opts.progress))
