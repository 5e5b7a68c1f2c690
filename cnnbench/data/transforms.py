"""Batched image transforms applied on the training device.

Images stay uint8 in memory; each batch is converted to float on the device and augmented
there as a whole (resize, random crop with zero padding, random resized crop, center crop,
horizontal flip, normalize). The random draws come from a CPU generator, so a seed gives the
same augmentation on any device. The draws follow torchvision's per-sample transforms
(RandomCrop, RandomResizedCrop, RandomHorizontalFlip): same distributions, one batch at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum

import torch
import torch.nn.functional as F

from ..config import CropMode, Normalize
from .stats import IMAGENET_MEAN, IMAGENET_STD

Stats = tuple[list[float], list[float]]


def resolve_stats(tcfg, train_stats: Stats | Callable[[], Stats], channels: int) -> Stats:
    """Mean/std used to normalize: explicit lists, ImageNet's, the train split's, or none."""
    if tcfg.mean is not None or tcfg.std is not None:
        mean, std = list(tcfg.mean or []), list(tcfg.std or [])
    elif tcfg.normalize == Normalize.imagenet:
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    elif tcfg.normalize == Normalize.none:
        mean, std = [0.0] * channels, [1.0] * channels
    else:
        mean, std = train_stats() if callable(train_stats) else train_stats
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
        crop_mode: CropMode | str = CropMode.random,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
    ) -> None:
        self.train = train
        self.resize = resize
        self.crop = crop
        self.crop_mode = CropMode(crop_mode.value if isinstance(crop_mode, Enum) else crop_mode)
        self.crop_padding = crop_padding if train and self.crop_mode == CropMode.random else 0
        self.area_scale = (float(scale[0]), float(scale[1]))  # crop_mode=resized
        self.aspect_ratio = (float(ratio[0]), float(ratio[1]))
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
        # Crops and flips are pixel moves: done on the uint8 batch (one gather, 4x less memory
        # traffic than on floats), then one pass converts to float and normalizes. Only a
        # resize, or a resized crop, works on floats.
        if self.resize is not None and tuple(x.shape[-2:]) != (self.resize, self.resize):
            x = F.interpolate(
                x.float(),
                size=(self.resize, self.resize),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        out_h, out_w = self.output_size(x.shape[-2], x.shape[-1])
        same_size = (out_h, out_w) == tuple(x.shape[-2:])
        random_crop_mode = self.train and self.crop_mode == CropMode.random
        if self.train and self.crop_mode == CropMode.resized:
            x = random_resized_crop(
                x.float(), out_h, out_w, self.area_scale, self.aspect_ratio, gen
            )
        elif random_crop_mode and (self.crop_padding > 0 or not same_size or self.hflip):
            # torchvision's RandomCrop, then RandomHorizontalFlip, as one gather
            n, _, h, w = x.shape
            p = self.crop_padding
            top, left = crop_offsets(n, h + 2 * p, w + 2 * p, out_h, out_w, gen)
            flip = torch.rand(n, generator=gen) < 0.5 if self.hflip else None
            x = crop_and_flip(x, top, left, out_h, out_w, p, flip)
        elif not same_size:
            x = center_crop(x, out_h, out_w)
        if self.hflip and not random_crop_mode:  # after a center or resized crop
            flip = torch.rand(x.shape[0], generator=gen) < 0.5
            x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)
        scale, shift = self.scale.to(x.device), self.shift.to(x.device)
        return (x * scale).sub_(shift)  # uint8 * float -> float: the conversion is this pass


def crop_offsets(
    n: int, h: int, w: int, height: int, width: int, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """n random (top, left) offsets of a height x width crop in an h x w (padded) image."""
    if h < height or w < width:
        from ..errors import CnnbenchError

        raise CnnbenchError(
            f"cannot crop {height}x{width} from {h}x{w} images (padding included): set "
            "transforms.crop no larger than the images, or raise transforms.crop_padding"
        )
    top = torch.randint(0, h - height + 1, (n,), generator=gen)
    left = torch.randint(0, w - width + 1, (n,), generator=gen)
    return top, left


def crop_and_flip(
    x: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    height: int,
    width: int,
    padding: int = 0,
    flip: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample crops at (top, left) of the zero-padded images, mirrored where `flip`.

    Any dtype (uint8 in the training loader). Every output pixel is one gather from the
    padded batch, so crop and flip cost a single pass over the output.
    """
    if padding > 0:
        x = F.pad(x, (padding, padding, padding, padding))
    n, c, h, w = x.shape
    rows = top[:, None] + torch.arange(height)  # n x H
    cols = left[:, None] + torch.arange(width)  # n x W
    if flip is not None:
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    index = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, height * width).to(x.device)
    flat = x.reshape(n, c, h * w)
    # Chunks keep the int64 index small for big images (it is n x H x W).
    step = max(1, (1 << 22) // (height * width))
    parts = [
        flat[i : i + step].gather(2, index[i : i + step].expand(-1, c, -1))
        for i in range(0, n, step)
    ]
    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    return out.view(n, c, height, width)


def random_crop(
    x: torch.Tensor, height: int, width: int, padding: int, gen: torch.Generator | None
) -> torch.Tensor:
    """Per-sample random crops after zero padding (torchvision's RandomCrop, batched)."""
    n, _, h, w = x.shape
    top, left = crop_offsets(n, h + 2 * padding, w + 2 * padding, height, width, gen)
    return crop_and_flip(x, top, left, height, width, padding)


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torchvision's CenterCrop (zero padding when the image is smaller than the crop)."""
    h, w = x.shape[-2:]
    if height > h or width > w:
        ph, pw = max(height - h, 0), max(width - w, 0)
        x = F.pad(x, (pw // 2, (pw + 1) // 2, ph // 2, (ph + 1) // 2))
        h, w = x.shape[-2:]
    top, left = int(round((h - height) / 2.0)), int(round((w - width) / 2.0))
    return x[..., top : top + height, left : left + width]


def resized_crop_params(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    gen: torch.Generator | None,
    attempts: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, crop height, crop width) for n images: RandomResizedCrop.get_params, batched.

    Like torchvision: up to 10 tries of an area fraction uniform in `scale` and a log-uniform
    aspect ratio in `ratio`; the first crop that fits wins, else a center crop clamped to
    `ratio`. All tries are drawn at once, so the draws per batch are fixed in number.
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.float64))
    u = torch.rand((4, n, attempts), generator=gen, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
    aspect = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
    cw = torch.sqrt(target * aspect).round()
    ch = torch.sqrt(target / aspect).round()
    fits = (cw > 0) & (cw <= width) & (ch > 0) & (ch <= height)
    # torch.randint(0, k + 1) is floor(U * (k + 1)): the same uniform offsets.
    top = (u[2] * (height - ch + 1)).floor()
    left = (u[3] * (width - cw + 1)).floor()
    first = torch.where(fits.any(dim=1), fits.float().argmax(dim=1), -1)
    # Fallback (no try fits): the whole image, clamped to the allowed aspect ratios.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    pick = first.clamp_min(0)[:, None]
    ok = first >= 0

    def choose(values: torch.Tensor, fallback: float) -> torch.Tensor:
        chosen = values.gather(1, pick).squeeze(1)
        return torch.where(ok, chosen, torch.full_like(chosen, fallback)).long()

    return (
        choose(top, (height - fh) // 2),
        choose(left, (width - fw) // 2),
        choose(ch, fh),
        choose(cw, fw),
    )


def random_resized_crop(
    x: torch.Tensor,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    gen: torch.Generator | None,
) -> torch.Tensor:
    """Per-sample RandomResizedCrop to height x width, batched with roi_align.

    roi_align samples each output pixel bilinearly (aligned=True: the box edges are pixel
    edges, like interpolate's align_corners=False) and averages ceil(box/output) samples per
    pixel when shrinking, which approximates an antialiased resize.
    """
    from torchvision.ops import roi_align

    n, _, h, w = x.shape
    top, left, ch, cw = resized_crop_params(n, h, w, scale, ratio, gen)
    boxes = torch.stack([torch.arange(n), left, top, left + cw, top + ch], dim=1).to(
        device=x.device, dtype=x.dtype
    )
    return roi_align(x, boxes, (height, width), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def build_transforms(
    tcfg, train_stats: Stats | Callable[[], Stats], channels: int
) -> tuple[BatchTransform, BatchTransform]:
    """(train, eval) pipelines of a transforms preset; eval never augments.

    `train_stats` is (mean, std) or a function computing them (called only for normalize=auto,
    e.g. DataSplits.train_stats, which caches them per dataset).
    """
    mean, std = resolve_stats(tcfg, train_stats, channels)
    common = dict(mean=mean, std=std, resize=tcfg.resize, crop=tcfg.crop)
    train = BatchTransform(
        train=True,
        crop_padding=tcfg.crop_padding,
        hflip=tcfg.hflip,
        crop_mode=tcfg.crop_mode,
        scale=list(tcfg.scale),
        ratio=list(tcfg.ratio),
        **common,
    )
    return train, BatchTransform(train=False, **common)
