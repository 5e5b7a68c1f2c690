"""What a loaded dataset is made of: splits held in memory, memory-mapped or streamed from disk."""

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


@dataclass
class MappedImages:
    """A split in the memory-mapped cache of a folder (mapped.py): rows `rows` of `store`.

    `store` is the whole cache file's uint8 N x C x H x W tensor over the mapping; nothing is
    read up front, a batch reads the pages of its rows through the page cache (`gather`).
    Subsets (carved val/test splits) only select rows.
    """

    store: torch.Tensor
    rows: torch.Tensor  # int64: this split's rows of `store`, in split order
    labels: torch.Tensor
    files: list[str]
    sums: torch.Tensor  # N x 2 x C float64, as ImageTensors.sums

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.store.shape[1:]
        return int(c), int(h), int(w)

    @property
    def images(self) -> MappedRows:
        """Indexable like an images tensor (`images[[3, 1]]`), gathered on demand."""
        return MappedRows(self)

    def subset(self, index: torch.Tensor) -> MappedImages:
        return MappedImages(
            self.store,
            self.rows[index],
            self.labels[index],
            [self.files[i] for i in index.tolist()],
            self.sums[index],
        )

    def gather(self, index: torch.Tensor, pin: bool = False) -> torch.Tensor:
        """The images of samples `index` (a uint8 batch, in pinned memory when `pin`).

        The first byte of each row is read in ascending file order first, so the page faults
        (disk reads, for pages not in the page cache) sweep the file once per batch; then one
        copy in `index` order: the batch is exactly the in-memory one.
        """
        rows = self.rows[index]
        self.store.view(self.store.shape[0], -1)[:, 0].index_select(0, rows.sort().values)
        return select_rows(self.store, rows, pin)


def select_rows(images: torch.Tensor, rows: torch.Tensor, pin: bool = False) -> torch.Tensor:
    """images[rows] as one index_select (10x faster than advanced indexing on CPU), into
    pinned memory when `pin` (for a non_blocking copy to the GPU)."""
    out = torch.empty((len(rows), *images.shape[1:]), dtype=images.dtype, pin_memory=pin)
    return torch.index_select(images, 0, rows, out=out)


class MappedRows:
    """`MappedImages.images`: images[index] gathers those rows (for reports, grids)."""

    def __init__(self, split: MappedImages) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.split), *self.split.image_shape)

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int):
            return self.split.gather(torch.tensor([index]))[0]
        return self.split.gather(torch.as_tensor(index, dtype=torch.int64).reshape(-1))


Split = ImageTensors | MappedImages | ImageFiles


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
