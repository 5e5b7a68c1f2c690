"""Datasets held in memory as uint8 tensors, with seeded train/val/test splits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CnnbenchError


@dataclass
class ImageTensors:
    """A split: uint8 images (N x C x H x W) and int64 labels (N)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> ImageTensors:
        return ImageTensors(self.images[index], self.labels[index])


@dataclass
class DataSplits:
    train: ImageTensors
    val: ImageTensors
    test: ImageTensors
    classes: list[str]

    @property
    def input_size(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# A loader returns (train, test or None, class names); test None means "carve one".
Loader = Callable[..., tuple[ImageTensors, ImageTensors | None, list[str]]]
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


def split_off(
    data: ImageTensors, fraction: float, seed: int, what: str
) -> tuple[ImageTensors, ImageTensors]:
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


def load_dataset(cfg) -> DataSplits:
    """Load `cfg.name` and split it: val from train, test from train when there is none."""
    if cfg.name not in _DATASETS:
        raise CnnbenchError(
            f"unknown dataset {cfg.name!r}; valid datasets: {', '.join(dataset_names())}"
        )
    train, test, classes = _DATASETS[cfg.name](cfg)
    if test is None:
        train, test = split_off(train, cfg.test_split, cfg.split_seed, "test")
    train, val = split_off(train, cfg.val_split, cfg.split_seed + 1, "validation")
    return DataSplits(train=train, val=val, test=test, classes=classes)


@register_dataset("digits")
def _digits(cfg) -> tuple[ImageTensors, None, list[str]]:
    """scikit-learn's bundled 8x8 digits (values 0-16), upscaled to 32x32 uint8."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    big = F.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    images = big.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return ImageTensors(images, labels), None, [str(d) for d in range(10)]


@register_dataset("fake")
def _fake(cfg) -> tuple[ImageTensors, None, list[str]]:
    """torchvision's FakeData: seeded random images and labels."""
    from torchvision.datasets import FakeData

    ds = FakeData(
        size=cfg.size,
        image_size=(cfg.channels, cfg.image_size, cfg.image_size),
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
    return data, None, [f"class{i}" for i in range(cfg.num_classes)]


def _torchvision_split(cls, root: Path, train: bool, download: bool, name: str, hint: str):
    try:
        return cls(root=str(root), train=train, download=download)
    except RuntimeError as err:
        if "not found" not in str(err).lower() and "corrupt" not in str(err).lower():
            raise
        raise CnnbenchError(
            f"{name} files not found under {root} (expected {hint}). Offline? Copy the files "
            f"there from a connected machine, or run once with dataset.download=true "
            f"dataset.root={root} where there is internet."
        ) from None
    except OSError as err:  # the download itself failed: no network
        raise CnnbenchError(
            f"could not download {name} to {root} ({err.__class__.__name__}: {err}). "
            f"This machine looks offline: put the files at {hint} and keep dataset.download=false."
        ) from None


@register_dataset("cifar10")
def _cifar10(cfg) -> tuple[ImageTensors, ImageTensors, list[str]]:
    from torchvision.datasets import CIFAR10

    root = Path(cfg.root).expanduser().resolve()
    hint = f"{root / 'cifar-10-batches-py'} from https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    splits = []
    for is_train in (True, False):
        ds = _torchvision_split(CIFAR10, root, is_train, cfg.download, "CIFAR-10", hint)
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        splits.append(ImageTensors(images, torch.tensor(ds.targets, dtype=torch.int64)))
    return splits[0], splits[1], list(ds.classes)
