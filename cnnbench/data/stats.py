"""Per-channel statistics of a training split (seed 000 normalizes with the train split's)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from .cache import cache_root, load_json, save_json

log = logging.getLogger("cnnbench")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CHUNK_ELEMENTS = 1 << 25  # ~32M values (128 MB of float32) per chunk


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Mean and std per channel of uint8 N x C x H x W images, on the [0, 1] scale.

    Streams over chunks of at most `chunk` images (and ~32M values) with float64 sums, so
    no float copy of the whole set is made.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(
            f"expected a non-empty N x C x H x W tensor, got shape {tuple(images.shape)}"
        )
    per_image = max(1, images[0].numel())
    chunk = max(1, min(chunk, _CHUNK_ELEMENTS // per_image))
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].to(torch.float32)
        total += part.sum(dim=(0, 2, 3), dtype=torch.float64)
        total_sq += part.square_().sum(dim=(0, 2, 3), dtype=torch.float64)
    return _finish(total / 255.0, total_sq / 255.0**2, images.numel() // channels)


def stats_from_sums(sums: torch.Tensor, pixels_per_image: int) -> tuple[list[float], list[float]]:
    """Mean/std from per-image channel sums and sums of squares (N x 2 x C, [0, 1] scale)."""
    total = sums.sum(dim=0, dtype=torch.float64)
    return _finish(total[0], total[1], sums.shape[0] * pixels_per_image)


def _finish(total: torch.Tensor, total_sq: torch.Tensor, count: int):
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


def split_stats(
    train: Any, key: str | None, cache_dir: str | None, name: str
) -> tuple[list[float], list[float]]:
    """Mean/std of a train split (ImageTensors or ImageFiles): from the folder scan's sums,
    else computed once and cached under `key` (the split's content key)."""
    if train.sums is not None:  # folders: measured during the scan, exact and instant
        _, h, w = train.image_shape
        return stats_from_sums(train.sums, h * w)
    path = cache_root(cache_dir) / "stats" / f"{key}.json"
    cached = load_json(path) if key else None
    if cached is not None and len(cached.get("mean", [])) == train.image_shape[0]:
        return cached["mean"], cached["std"]
    mean, std = channel_stats(train.images)
    if key:
        save_json(path, dict(dataset=name, images=len(train), mean=mean, std=std))
    return mean, std
