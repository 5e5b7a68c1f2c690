"""Per-channel statistics of image tensors (seed 000 normalizes with the train split's)."""

from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Mean and std per channel of uint8 N x C x H x W images, on the [0, 1] scale.

    Streams over chunks with float64 sums, so no float copy of the whole set is made.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            f"expected a non-empty N x C x H x W tensor, got shape {tuple(images.shape)}"
        )
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].to(torch.float64).div_(255.0)
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.square().sum(dim=(0, 2, 3))
        count += part.numel() // channels
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()
