"""Batches for the training loop: sliced from uint8 tensors, mapped files, or decoded files.

In-memory splits (ImageTensors) need no workers: a batch is an index op, on the GPU when the
set fits there (`fits_on_device`). Memory-mapped splits (MappedImages) gather each batch's
rows through the page cache (faulted in file order). Streamed folders (ImageFiles) are decoded
by DataLoader workers into uint8 batches. Either way the same BatchTransform then converts and
augments the batch on the training device. For CUDA, batches gathered on the host go to pinned
memory (a background thread gathers a few ahead) and are copied with non_blocking=True: no
step waits for the host.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .images import BadImage, decode_file
from .splits import ImageFiles, ImageTensors, MappedImages, select_rows
from .transforms import BatchTransform

# An in-memory set lives on the GPU when it takes at most this share of its free memory
# (the rest is for the model, its activations and the other splits).
DEVICE_DATA_SHARE = 0.5
GATHER_AHEAD = 3  # batches a CUDA run's gather thread prepares ahead

log = logging.getLogger("cnnbench")


class TensorLoader:
    """Yields (normalized float images, labels) batches on `device`; the labels are
    N x classes soft targets instead when the transform mixes (MixUp/CutMix).

    The order of epoch e depends only on (seed, e), the augmentation of its batch i only on
    (seed, e, rank, i), so a run resumed anywhere sees the same batches as an uninterrupted
    one, in memory or streamed alike; `set_epoch(e, start_step=k)` starts at batch k + 1.
    `limit` (limit_*_batches) ends every epoch after that many batches (a count >= 1) or
    that fraction of them (< 1): the first ones of the epoch's order.
    """

    def __init__(
        self,
        data: ImageTensors | MappedImages | ImageFiles,
        batch_size: int,
        transform: BatchTransform,
        device: torch.device,
        *,
        shuffle: bool,
        seed: int = 0,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        limit: float | None = None,
        balanced: bool = False,
    ) -> None:
        # Batches gathered or decoded on the host; None: index ops on self.images.
        self.stream = _host_source(data, batch_size, device)
        self.labels = data.labels
        # dataset.sampler=balanced: each draw picks a class uniformly, then one of its images
        self.draw_weights = class_balanced_weights(data.labels) if balanced else None
        if self.stream is None:
            # In memory (and on the GPU when it fits there): batches are index ops.
            self.images = data.images.to(device)
            self.labels = data.labels.to(device)
        self.batch_size = batch_size
        self.transform = transform
        self.device = device
        self.shuffle = shuffle
        self.seed = seed
        self.epoch, self.start_step = 0, 0
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.rank, self.world_size = rank, world_size
        self.limit = limit

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Iterate epoch `epoch` from batch `start_step` on (a resumed epoch skips the
        batches it trained on before the interruption; the later ones are unchanged)."""
        self.epoch, self.start_step = epoch, start_step

    def _shard_size(self) -> int:
        """Samples this rank owns: DDP training pads every rank's shard to the same size
        (DistributedSampler's wrap-around), evaluation splits the samples without padding."""
        n = len(self.labels)
        if self.shuffle:
            return (n + self.world_size - 1) // self.world_size
        return len(range(self.rank, n, self.world_size))

    def _epoch_size(self) -> int:
        """Samples per epoch: a shuffled (training) epoch drops a trailing batch of one
        sample, which BatchNorm cannot normalize; evaluation always sees every sample."""
        n = self._shard_size()
        n = n - 1 if self.shuffle and n > 1 and n % self.batch_size == 1 else n
        return n if self.limit is None else min(n, self._limited_batches(n) * self.batch_size)

    def _limited_batches(self, n: int) -> int:
        """Batches of an epoch of `n` samples under `limit` (all when None)."""
        full = (n + self.batch_size - 1) // self.batch_size
        if self.limit is None:
            return full
        if self.limit >= 1:
            return min(full, int(self.limit))
        return min(full, max(1, int(full * self.limit)))

    def __len__(self) -> int:
        return (self._epoch_size() + self.batch_size - 1) // self.batch_size

    def images_before(self, step: int) -> int:
        """Samples of this rank in the epoch's first `step` batches."""
        return min(step * self.batch_size, self._epoch_size())

    def _order(self) -> torch.Tensor | None:
        """This epoch's sample order for this rank (None: all samples in order).

        The permutation depends on (seed, epoch) only, so every rank draws the same one and
        takes every world_size-th sample of it, padded by wrapping around (DistributedSampler).
        """
        n = len(self.labels)
        if not self.shuffle:
            if self.world_size == 1:
                return None
            return torch.arange(self.rank, n, self.world_size)[: self._epoch_size()]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.draw_weights is None:
            order = torch.randperm(n, generator=gen)
        else:  # n draws with replacement, classes equally likely (WeightedRandomSampler's)
            order = torch.multinomial(self.draw_weights, n, replacement=True, generator=gen)
        if self.world_size > 1:
            total = self._shard_size() * self.world_size
            order = order.repeat(-(-total // n))[:total]
            order = order[self.rank :: self.world_size]
        return order[: self._epoch_size()]

    def _augmentation_rng(self, step: int) -> torch.Generator:
        """The random draws of batch `step`: a function of (seed, epoch, rank, step) alone, so
        an epoch resumed at any step augments its remaining batches as an uninterrupted one."""
        key = f"{self.seed}/{self.epoch}/{self.rank}/{step}".encode()
        digest = hashlib.blake2b(key, digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)

    def _uint8_batches(
        self, order: torch.Tensor | None, skip: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's uint8 batches in `order`, without its first `skip` samples."""
        if order is None and self.stream is None:  # in order, in memory: slices, no copies
            size = self._epoch_size()
            for start in range(skip, size, self.batch_size):
                end = min(start + self.batch_size, size)
                yield self.images[start:end], self.labels[start:end]
            return
        order = (torch.arange(self._epoch_size()) if order is None else order)[skip:]
        if self.stream is not None:
            yield from self.stream.batches(order)
            return
        order = order.to(self.images.device, non_blocking=True)  # once per epoch, no sync
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            # index_select: ~10x faster than images[idx] (advanced indexing) on CPU
            yield self.images.index_select(0, idx), self.labels.index_select(0, idx)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        first = self.start_step
        batches = self._uint8_batches(self._order(), first * self.batch_size)
        mix = self.transform.mix  # MixUp/CutMix: labels become soft targets (None: off)
        for step, (x, y) in enumerate(batches, first + 1):
            gen = self._augmentation_rng(step) if self.transform.train else None
            x = self.transform(x.to(self.device, non_blocking=True), gen)
            y = y.to(self.device, non_blocking=True)
            if mix is not None:
                x, y = mix(x, y, gen)
            yield x.contiguous(memory_format=self.memory_format), y


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether an in-memory set of `nbytes` may live on `device` (CUDA): at most
    DEVICE_DATA_SHARE of its free memory. CPU sets stay where they are."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_DATA_SHARE * free


def _host_source(
    data: ImageTensors | MappedImages | ImageFiles, batch_size: int, device: torch.device
) -> _FileBatches | _HostBatches | None:
    """Where a split's batches come from: decoded by workers, gathered on the host, or None
    (index ops on the set itself, on `device`)."""
    if isinstance(data, ImageFiles):
        return _FileBatches(data, batch_size, device.type == "cuda")
    if isinstance(data, MappedImages):
        return _HostBatches(data.gather, data.labels, batch_size, device)
    if not fits_on_device(data.images.nbytes, device):
        log.info(
            f"{data.images.nbytes / 2**20:,.0f} MB of images stay in host memory (more than "
            f"{DEVICE_DATA_SHARE:.0%} of the GPU's free memory): batches are copied over"
        )
        return _HostBatches(partial(select_rows, data.images), data.labels, batch_size, device)
    return None


class _HostBatches:
    """uint8 batches gathered on the host: from the memory-mapped cache, or from memory when
    the set is too large for the GPU.

    On CPU the gather runs inline (a thread would compete with torch's own threads). For CUDA
    one background thread gathers GATHER_AHEAD batches ahead into pinned memory, so the
    page-cache (or disk) reads overlap the GPU's work and the copies are asynchronous.
    """

    def __init__(
        self,
        gather: Callable[[torch.Tensor, bool], torch.Tensor],
        labels: torch.Tensor,
        batch_size: int,
        device: torch.device,
    ) -> None:
        self.gather, self.labels, self.batch_size = gather, labels, batch_size
        self.pin = device.type == "cuda"
        self.device_index = device.index  # the gather thread pins for this GPU

    def _batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.labels.index_select(0, index)
        return self.gather(index, self.pin), (y.pin_memory() if self.pin else y)

    def batches(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        chunks = order.split(self.batch_size)
        if not self.pin:
            yield from map(self._batch, chunks)
            return
        device = torch.cuda.current_device() if self.device_index is None else self.device_index
        pool = ThreadPoolExecutor(1, "cnnbench-gather", torch.cuda.set_device, (device,))
        ahead = deque(pool.submit(self._batch, c) for c in chunks[:GATHER_AHEAD])
        try:
            for k in range(len(chunks)):
                batch = ahead.popleft().result()
                if k + GATHER_AHEAD < len(chunks):
                    ahead.append(pool.submit(self._batch, chunks[k + GATHER_AHEAD]))
                yield batch
        finally:  # also when the epoch stops early (Ctrl-C, an error)
            pool.shutdown(wait=True, cancel_futures=True)


def class_balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample draw weights 1 / (its class's count): every present class equally likely."""
    labels = labels.cpu()
    counts = torch.bincount(labels).double()
    return (1.0 / counts)[labels]


class _FileSet(Dataset):
    """Item i of a streamed split: (uint8 3 x H x W image, label, decoded fine)."""

    def __init__(self, data: ImageFiles) -> None:
        self.paths = data.paths()
        self.labels = data.labels
        self.size = data.size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        try:
            x = decode_file(self.paths[i], self.size)
        except BadImage:
            # The scan found this file fine; it changed since. Never kill the epoch for it.
            return torch.zeros((3, *self.size), dtype=torch.uint8), self.labels[i], False
        return x, self.labels[i], True


class _OrderSampler(Sampler[list[int]]):
    """Batches of indices in the order set for the current epoch (workers persist)."""

    def __init__(self, n: int, batch_size: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.order: list[int] = list(range(n))

    def __len__(self) -> int:
        return (len(self.order) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for start in range(0, len(self.order), self.batch_size):
            yield self.order[start : start + self.batch_size]


class _FileBatches:
    """uint8 batches of a streamed split, decoded by `data.num_workers` DataLoader workers."""

    def __init__(self, data: ImageFiles, batch_size: int, pin: bool) -> None:
        self.data = data
        self.sampler = _OrderSampler(len(data), batch_size)
        workers = min(data.num_workers, len(self.sampler))  # no more workers than batches
        self.loader = DataLoader(
            _FileSet(data),
            batch_sampler=self.sampler,
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
            generator=torch.Generator(),  # leave the global RNG (dropout, ...) untouched
        )
        self.warned: set[int] = set()

    def batches(self, order: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.order = order.tolist()
        for step, (x, y, ok) in enumerate(self.loader):
            if not bool(ok.all()):  # CPU tensor from the workers: no device sync
                start = step * self.sampler.batch_size
                bad = [self.sampler.order[start + j] for j in (~ok).nonzero().flatten().tolist()]
                for i in bad:
                    if i not in self.warned:
                        self.warned.add(i)
                        log.warning(
                            f"{self.data.root}/{self.data.files[i]} cannot be decoded any more (changed since "
                            "the scan); it is fed as a blank image"
                        )
            yield x, y
