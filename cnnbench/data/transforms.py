"""Batched image transforms applied on the training device.

Images stay uint8 in memory; each batch is converted to float on the device and augmented
there as a whole (random crop with zero padding, horizontal flip, resize, normalize). The
random draws come from a CPU generator, so a seed gives the same augmentation on any device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..config import Normalize
from .stats import IMAGENET_MEAN, IMAGENET_STD


def resolve_stats(tcfg, train_stats: tuple[list[float], list[float]], channels: int):
    """Mean/std used to normalize: explicit lists, ImageNet's, the train split's, or none."""
    if tcfg.mean is not None or tcfg.std is not None:
        mean, std = list(tcfg.mean or []), list(tcfg.std or [])
    elif tcfg.normalize == Normalize.imagenet:
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    elif tcfg.normalize == Normalize.none:
        mean, std = [0.0] * channels, [1.0] * channels
    else:
        mean, std = train_stats
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels or len(std) != channels:
        from ..errors import CnnbenchError

        raise CnnbenchError(
            f"normalization has {len(mean)} mean / {len(std)} std values for {channels}-channel "
            "images; set transforms.mean and transforms.std with one value per channel"
        )
    return mean, std


class BatchTransform:
    """uint8 batch (N x C x H x W) on the device -> normalized float batch for the model."""

    def __init__(
        self,
        *,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        resize: int | None = None,
        crop: int | None = None,
        crop_padding: int = 0,
        hflip: bool = False,
    ) -> None:
        self.train = train
        self.resize = resize
        self.crop = crop
        self.crop_padding = crop_padding if train else 0
        self.hflip = hflip and train
        self.mean, self.std = [float(m) for m in mean], [float(v) for v in std]
        std_t = torch.tensor(std, dtype=torch.float32)
        # x / 255 normalized = x * scale - shift, one fused pass.
        self.scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
        self.shift = (torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.resize is not None:
            height = width = self.resize
        if self.crop is not None:
            height = width = self.crop
        return height, width

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        x = x.float()
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(
                x,
                size=(self.resize, self.resize),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        out_h, out_w = self.output_size(x.shape[-2], x.shape[-1])
        if self.train and (self.crop_padding > 0 or (out_h, out_w) != tuple(x.shape[-2:])):
            x = random_crop(x, out_h, out_w, self.crop_padding, gen)
        elif (out_h, out_w) != tuple(x.shape[-2:]):
            x = center_crop(x, out_h, out_w)
        if self.hflip:
            flip = torch.rand(x.shape[0], generator=gen) < 0.5
            x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)
        scale, shift = self.scale.to(x.device), self.shift.to(x.device)
        return x.mul_(scale).sub_(shift)


def random_crop(
    x: torch.Tensor, height: int, width: int, padding: int, gen: torch.Generator | None
) -> torch.Tensor:
    """Per-sample random crops after zero padding (torchvision's RandomCrop, batched)."""
    if padding > 0:
        x = F.pad(x, (padding, padding, padding, padding))
    n, _, h, w = x.shape
    top = torch.randint(0, h - height + 1, (n,), generator=gen).to(x.device)
    left = torch.randint(0, w - width + 1, (n,), generator=gen).to(x.device)
    rows = (top[:, None] + torch.arange(height, device=x.device))[:, :, None]  # n, H, 1
    cols = (left[:, None] + torch.arange(width, device=x.device))[:, None, :]  # n, 1, W
    batch = torch.arange(n, device=x.device)[:, None, None]
    # Advanced indices around a slice put the batch dims first: n, H, W, C.
    return x[batch, :, rows, cols].permute(0, 3, 1, 2)


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - height) // 2, (w - width) // 2
    return x[..., top : top + height, left : left + width]


def build_transforms(
    tcfg, train_stats: tuple[list[float], list[float]], channels: int
) -> tuple[BatchTransform, BatchTransform]:
    """(train, eval) pipelines of a transforms preset; eval never augments."""
    mean, std = resolve_stats(tcfg, train_stats, channels)
    common = dict(mean=mean, std=std, resize=tcfg.resize, crop=tcfg.crop)
    train = BatchTransform(train=True, crop_padding=tcfg.crop_padding, hflip=tcfg.hflip, **common)
    return train, BatchTransform(train=False, **common)
