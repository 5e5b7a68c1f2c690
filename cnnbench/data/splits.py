"""What a loaded dataset is made of: splits held in memory or streamed from disk."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .images import printable
from .stats import split_stats


@dataclass
class ImageTensors:
    """A split in memory: uint8 images (N x C x H x W) and int64 labels (N).

    `files` (paths relative to the dataset root) and `sums` (N x 2 x C float64 per-image
    channel sums and sums of squares on the [0, 1] scale, for statistics) come from folders.
    """

    images: torch.Tensor
    labels: torch.Tensor
    files: list[str] | None = None
    sums: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, index: torch.Tensor) -> ImageTensors:
        return ImageTensors(
            self.images[index],
            self.labels[index],
            None if self.files is None else [self.files[i] for i in index.tolist()],
            None if self.sums is None else self.sums[index],
        )


@dataclass
class ImageFiles:
    """A split streamed from disk: files decoded to uint8 `size` (H, W) RGB by loader workers."""

    root: str
    files: list[str]  # relative to root
    labels: torch.Tensor
    size: tuple[int, int]
    sums: torch.Tensor  # N x 2 x 3 float64, as ImageTensors.sums, measured by the scan
    num_workers: int = 0

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return 3, int(self.size[0]), int(self.size[1])

    def paths(self) -> list[str]:
        return [str(Path(self.root) / f) for f in self.files]

    def subset(self, index: torch.Tensor) -> ImageFiles:
        return ImageFiles(
            self.root,
            [self.files[i] for i in index.tolist()],
            self.labels[index],
            self.size,
            self.sums[index],
            self.num_workers,
        )


Split = ImageTensors | ImageFiles


@dataclass
class SkippedFile:
    path: str
    reason: str


@dataclass
class DataSplits:
    train: Split
    val: Split
    test: Split
    classes: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)  # broken files left out
    stats_key: str | None = None  # content key of the train split, for cached statistics
    cache_dir: str | None = None
    name: str = ""

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.train.image_shape

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def overfit(self, n: int, seed: int) -> DataSplits:
        """overfit_batches: the same `n` training images (a seeded pick) as train and val."""
        pick = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(seed))
        few = self.train.subset(pick[:n].sort().values)
        return replace(self, train=few, val=few)

    def train_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the train split ([0, 1] scale), cached per dataset."""
        return split_stats(self.train, self.stats_key, self.cache_dir, self.name)

    def skipped_text(self) -> str:
        """skipped_files.txt: one `path<TAB>reason` line per file left out.

        Bytes of a name that are not UTF-8 are written as \\xNN escapes (see `printable`).
        """
        return "".join(printable(f"{s.path}\t{s.reason}") + "\n" for s in self.skipped)
