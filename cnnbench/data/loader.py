"""A DataLoader replacement for in-memory uint8 datasets: batches by slicing, no workers."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .datasets import ImageTensors
from .transforms import BatchTransform


class TensorLoader:
    """Yields (normalized float images, labels) batches on `device`.

    The order and the augmentation of epoch e depend only on (seed, e), so a resumed run
    sees the same batches as an uninterrupted one.
    """

    def __init__(
        self,
        data: ImageTensors,
        batch_size: int,
        transform: BatchTransform,
        device: torch.device,
        *,
        shuffle: bool,
        seed: int = 0,
        channels_last: bool = False,
    ) -> None:
        pin = device.type == "cuda"
        # Small datasets live on the device whole: one copy, then batches are index ops there.
        self.images = data.images.to(device) if pin else data.images
        self.labels = data.labels.to(device) if pin else data.labels
        self.batch_size = batch_size
        self.transform = transform
        self.device = device
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    @property
    def num_samples(self) -> int:
        return int(len(self.labels))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=gen) if self.shuffle else None
        for start in range(0, n, self.batch_size):
            if order is None:
                x = self.images[start : start + self.batch_size]
                y = self.labels[start : start + self.batch_size]
            else:
                idx = order[start : start + self.batch_size].to(self.images.device)
                x, y = self.images[idx], self.labels[idx]
            x = self.transform(x.to(self.device, non_blocking=True), gen)
            yield (
                x.contiguous(memory_format=self.memory_format),
                y.to(self.device, non_blocking=True),
            )
