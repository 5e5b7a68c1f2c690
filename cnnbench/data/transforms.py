"""Batched image transforms applied on the training device, as a pipeline of small ops.

Images stay uint8 in memory; each batch goes to the training device and through a list of
ops there as a whole (resize, random crop with zero padding, random resized crop, center crop,
horizontal flip), then one fused pass converts it to float and normalizes. `PIPELINE` orders
the ops; each op reads its own keys of the transforms config. The random draws come from a
CPU generator, so a seed gives the same augmentation on any device. The draws follow
torchvision's per-sample transforms (RandomCrop, RandomResizedCrop, RandomHorizontalFlip):
same distributions, one batch at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

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
            "images; use transforms.normalize=auto (this data's own statistics), or set "
            "transforms.mean and transforms.std with one value per channel"
        )
    return mean, std


class BatchOp:
    """One step of a batch pipeline: an N x C x H x W batch on the device in, a batch out.

    The batch is uint8 or float; random draws come from `gen` (a CPU generator, None: the
    global one), a fixed number per batch. A subclass sets `needs_float` (the pipeline converts
    a uint8 batch before calling it), `train_only` (an augmentation: never in the eval
    pipeline), `output_size` when it changes the image size, and `from_config`.
    """

    needs_float: ClassVar[bool] = False
    train_only: ClassVar[bool] = False

    @classmethod
    def from_config(cls, tcfg: Any, train: bool) -> BatchOp | None:
        """The op a transforms config asks for in the train or eval pipeline, or None."""
        raise NotImplementedError

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError


def _crop_mode(tcfg: Any) -> CropMode:
    mode = tcfg.crop_mode
    return CropMode(mode.value if isinstance(mode, Enum) else mode)


@dataclass(frozen=True)
class Resize(BatchOp):
    """Bilinear antialiased resize to size x size, train and eval (transforms.resize).

    A batch already at that size passes through as uint8; a resample converts to float itself.
    """

    size: int

    @classmethod
    def from_config(cls, tcfg: Any, train: bool) -> Resize | None:
        return None if tcfg.resize is None else cls(tcfg.resize)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return self.size, self.size

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        size = (self.size, self.size)
        return F.interpolate(
            x.float(), size=size, mode="bilinear", antialias=True, align_corners=False
        )


@dataclass(frozen=True)
class RandomCropFlip(BatchOp):
    """torchvision's RandomCrop (zero padding), then RandomHorizontalFlip, as one gather.

    crop_mode=random: transforms.crop (None: the input size), crop_padding and hflip. The
    gather moves uint8 pixels: 4x less memory traffic than on floats.
    """

    train_only = True
    size: int | None
    padding: int = 0
    flip: bool = False

    @classmethod
    def from_config(cls, tcfg: Any, train: bool) -> RandomCropFlip | None:
        if _crop_mode(tcfg) != CropMode.random:
            return None
        if tcfg.crop is None and tcfg.crop_padding == 0 and not tcfg.hflip:
            return None
        return cls(tcfg.crop, tcfg.crop_padding, tcfg.hflip)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return (height, width) if self.size is None else (self.size, self.size)

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = x.shape
        out_h, out_w = self.output_size(h, w)
        p = self.padding
        if p == 0 and not self.flip and (out_h, out_w) == (h, w):
            return x
        top, left = crop_offsets(n, h + 2 * p, w + 2 * p, out_h, out_w, gen)
        flip = torch.rand(n, generator=gen) < 0.5 if self.flip else None
        return crop_and_flip(x, top, left, out_h, out_w, p, flip)


@dataclass(frozen=True)
class RandomResizedCrop(BatchOp):
    """torchvision's RandomResizedCrop to transforms.crop (None: the input size).

    crop_mode=resized: transforms.crop, scale (area fraction) and ratio (aspect, w / h).
    """

    needs_float = True
    train_only = True
    size: int | None
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @classmethod
    def from_config(cls, tcfg: Any, train: bool) -> RandomResizedCrop | None:
        if _crop_mode(tcfg) != CropMode.resized:
            return None
        scale, ratio = (float(tcfg.scale[0]), float(tcfg.scale[1])), tcfg.ratio
        return cls(tcfg.crop, scale, (float(ratio[0]), float(ratio[1])))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return (height, width) if self.size is None else (self.size, self.size)

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        out_h, out_w = self.output_size(x.shape[-2], x.shape[-1])
        return random_resized_crop(x, out_h, out_w, self.scale, self.ratio, gen)


@dataclass(frozen=True)
class CenterCrop(BatchOp):
    """torchvision's CenterCrop to transforms.crop: in eval always, in train if crop_mode=center."""

    size: int

    @classmethod
    def from_config(cls, tcfg: Any, train: bool) -> CenterCrop | None:
        if tcfg.crop is None or (train and _crop_mode(tcfg) != CropMode.center):
            return None
        return cls(tcfg.crop)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return self.size, self.size

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if tuple(x.shape[-2:]) == (self.size, self.size):
            return x
        return center_crop(x, self.size, self.size)


@dataclass(frozen=True)
class RandomHorizontalFlip(BatchOp):
    """Mirror each image with probability 1/2: transforms.hflip after a center or resized crop.

    (crop_mode=random flips inside RandomCropFlip's gather.)
    """

    train_only = True

    @classmethod
    def from_config(cls, tcfg: Any, train: bool) -> RandomHorizontalFlip | None:
        return cls() if tcfg.hflip and _crop_mode(tcfg) != CropMode.random else None

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        flip = torch.rand(x.shape[0], generator=gen) < 0.5
        return torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)


class FloatNormalize:
    """The last step of every pipeline: (x / 255 - mean) / std as one pass, x * scale - shift.

    On a uint8 batch the multiply is the conversion to float.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean, self.std = [float(m) for m in mean], [float(v) for v in std]
        std_t = torch.tensor(std, dtype=torch.float32)
        self.scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
        self.shift = (torch.tensor(mean, dtype=torch.float32) / std_t).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale.to(x.device), self.shift.to(x.device)
        return (x * scale).sub_(shift)


class BatchTransform:
    """uint8 batch (N x C x H x W) on the device -> normalized float batch for the model.

    Runs `ops` in order, then the fused normalize. With no ops it only normalizes:
    BatchTransform(train=False, mean=..., std=...) is the pipeline of `cnnbench predict`.
    """

    def __init__(
        self,
        ops: Sequence[BatchOp] = (),
        *,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.ops = tuple(ops)
        self.train = train
        self.normalize = FloatNormalize(mean, std)
        self.mean, self.std = self.normalize.mean, self.normalize.std

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        for op in self.ops:
            height, width = op.output_size(height, width)
        return height, width

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        for op in self.ops:
            if op.needs_float and not x.is_floating_point():
                x = x.float()
            x = op(x, gen)
        return self.normalize(x)

    def __repr__(self) -> str:
        return f"BatchTransform(train={self.train}, ops={list(self.ops)})"


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


# Pipeline order, as torchvision's classification presets: size, crops, flips; then normalize.
# A new op: its class above, its place here, its field in TransformsConfig.
PIPELINE: tuple[type[BatchOp], ...] = (
    Resize,
    RandomCropFlip,
    RandomResizedCrop,
    CenterCrop,
    RandomHorizontalFlip,
)


def pipeline_ops(tcfg: Any, train: bool) -> list[BatchOp]:
    """The ops a transforms config asks for, in pipeline order; eval leaves out train-only ops."""
    ops = (
        op_type.from_config(tcfg, train) for op_type in PIPELINE if train or not op_type.train_only
    )
    return [op for op in ops if op is not None]


def build_transforms(
    tcfg: Any, train_stats: Stats | Callable[[], Stats], channels: int
) -> tuple[BatchTransform, BatchTransform]:
    """(train, eval) pipelines of a transforms preset; eval never augments.

    `train_stats` is (mean, std) or a function computing them (called only for normalize=auto,
    e.g. DataSplits.train_stats, which caches them per dataset).
    """
    mean, std = resolve_stats(tcfg, train_stats, channels)
    return (
        BatchTransform(pipeline_ops(tcfg, True), train=True, mean=mean, std=std),
        BatchTransform(pipeline_ops(tcfg, False), train=False, mean=mean, std=std),
    )
