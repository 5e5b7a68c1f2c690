"""Batched image transforms applied on the training device, as a pipeline of small ops.

Images stay uint8 in memory; each batch goes to the training device and through a list of
ops there as a whole (resize, random crop with zero padding, random resized crop, center crop,
horizontal flip, AutoAugment/RandAugment/TrivialAugmentWide, color jitter), then one fused
pass converts it to float and normalizes; random erasing runs on the normalized batch, as
torchvision erases after Normalize. `PIPELINE` orders the ops; each op reads its own keys of
the transforms config. The random draws come from a CPU generator, so a seed gives the same
augmentation on any device; they reach a GPU with non_blocking copies (a blocking copy
makes the host wait for the GPU, every step). The draws follow torchvision's per-sample transforms
(RandomCrop, RandomResizedCrop, RandomHorizontalFlip, the auto-augment policies, ColorJitter,
RandomErasing): same distributions, one draw per image, one batch at a time. MixUp/CutMix
need the labels: `BatchTransform.mix` (data/mixing.py), which the loader applies last.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..config import AutoAugmentPolicy, CropMode, Normalize
from .autoaugment import apply_rounds, color_jitter_draws, policy_draws
from .mixing import MixUpCutMix
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
    from ..errors import CnnbenchError

    if len(mean) != channels or len(std) != channels:
        raise CnnbenchError(
            f"normalization has {len(mean)} mean / {len(std)} std values for {channels}-channel "
            "images; use transforms.normalize=auto (this data's own statistics), or set "
            "transforms.mean and transforms.std with one value per channel"
        )
    # A constant channel's std is 0, or a rounding residue of the sums (below a quarter of
    # one 8-bit level): dividing by it makes the loss nan or huge.
    low = 1e-3 if tcfg.mean is None and tcfg.std is None else 0.0
    flat = [i for i, v in enumerate(std) if not v > low]
    if flat:
        i = flat[0]
        raise CnnbenchError(
            f"channel {i} of the training images has std {std[i]:.2g} (every pixel is "
            f"{round(mean[i] * 255)}): normalizing divides by it; set transforms.std (and "
            "transforms.mean) with a value > 0 per channel, or transforms.normalize=none"
        )
    return mean, std


class BatchOp:
    """One step of a batch pipeline: an N x C x H x W batch on the device in, a batch out.

    The batch is uint8 or float (0..255); random draws come from `gen` (a CPU generator,
    None: the global one), a fixed number per batch. A subclass sets `needs_float` (the
    pipeline converts a uint8 batch before calling it), `needs_uint8` (a float batch is
    rounded back to uint8 first, as torchvision's uint8 ops see it), `after_normalize` (it
    gets the normalized float batch instead), `train_only` (an augmentation: never in the
    eval pipeline), `output_size` when it changes the image size, and `from_config`.
    """

    needs_float: ClassVar[bool] = False
    needs_uint8: ClassVar[bool] = False
    after_normalize: ClassVar[bool] = False
    train_only: ClassVar[bool] = False

    @classmethod
    def from_config(cls, tcfg: Any, train: bool) -> BatchOp | None:
        """The op a transforms config asks for in the train or eval pipeline, or None."""
        raise NotImplementedError

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError


def _enum_value(value: Any) -> str:
    return value.value if isinstance(value, Enum) else value


def _crop_mode(tcfg: Any) -> CropMode:
    return CropMode(_enum_value(tcfg.crop_mode))


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
        return torch.where(flip.to(x.device, non_blocking=True).view(-1, 1, 1, 1), x.flip(3), x)


@dataclass(frozen=True)
class AutoAugment(BatchOp):
    """transforms.auto_augment: TrivialAugmentWide (trivial), RandAugment (rand: rand_ops ops
    at bin rand_magnitude of 31) or AutoAugment's cifar10/imagenet/svhn policies, with
    torchvision's spaces, bins and signs; each image draws its own ops (data/autoaugment.py).
    """

    needs_uint8 = True
    train_only = True
    policy: str
    num_ops: int = 2
    magnitude: int = 9

    @classmethod
    def from_config(cls, tcfg: Any, train: bool) -> AutoAugment | None:
        policy = _enum_value(tcfg.auto_augment)
        if policy == AutoAugmentPolicy.none.value:
            return None
        return cls(policy, tcfg.rand_ops, tcfg.rand_magnitude)

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = x.shape
        rounds = policy_draws(self.policy, n, h, w, gen, self.num_ops, self.magnitude)
        return apply_rounds(x, rounds)


@dataclass(frozen=True)
class ColorJitter(BatchOp):
    """transforms.color_jitter=s: torchvision's ColorJitter(brightness=s, contrast=s,
    saturation=s) per image (its own factors and order), on uint8 as torchvision's kernels."""

    needs_uint8 = True
    train_only = True
    strength: float

    @classmethod
    def from_config(cls, tcfg: Any, train: bool) -> ColorJitter | None:
        return cls(float(tcfg.color_jitter)) if tcfg.color_jitter > 0 else None

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return apply_rounds(x, color_jitter_draws(x.shape[0], self.strength, gen))


@dataclass(frozen=True)
class RandomErasing(BatchOp):
    """transforms.erasing=p: torchvision's RandomErasing(p, scale, ratio, value=0) per image.

    It runs on the normalized batch, where torchvision's presets erase, so an erased box is
    0 there (the mean colour), exactly as in torchvision's order.
    """

    after_normalize = True
    train_only = True
    p: float
    scale: tuple[float, float] = (0.02, 0.33)
    ratio: tuple[float, float] = (0.3, 3.3)

    @classmethod
    def from_config(cls, tcfg: Any, train: bool) -> RandomErasing | None:
        return cls(float(tcfg.erasing)) if tcfg.erasing > 0 else None

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = x.shape
        on = torch.rand(n, generator=gen) < self.p
        top, left, eh, ew = erasing_boxes(n, h, w, self.scale, self.ratio, gen)
        top, left, eh, ew = (
            v.to(x.device, non_blocking=True) for v in (top, left, torch.where(on, eh, 0), ew)
        )
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        in_rows = (rows >= top[:, None]) & (rows < (top + eh)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + ew)[:, None])
        # x is the pipeline's own normalized batch: erase in place
        return x.masked_fill_((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0.0)


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
        scale = self.scale.to(x.device, non_blocking=True)
        shift = self.shift.to(x.device, non_blocking=True)
        return (x * scale).sub_(shift)


class BatchTransform:
    """uint8 batch (N x C x H x W) on the device -> normalized float batch for the model.

    Runs `ops` in order, then the fused normalize, then the ops marked `after_normalize`.
    With no ops it only normalizes: BatchTransform(train=False, mean=..., std=...) is the
    pipeline of `cnnbench predict`. `mix` (MixUp/CutMix, None: off) is the label-aware step
    the loader applies to (batch, labels) after the transform.
    """

    def __init__(
        self,
        ops: Sequence[BatchOp] = (),
        *,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        mix: MixUpCutMix | None = None,
    ) -> None:
        self.ops = tuple(ops)
        self.before = tuple(op for op in self.ops if not op.after_normalize)
        self.after = tuple(op for op in self.ops if op.after_normalize)
        self.train = train
        self.mix = mix
        self.normalize = FloatNormalize(mean, std)
        self.mean, self.std = self.normalize.mean, self.normalize.std

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        for op in self.ops:
            height, width = op.output_size(height, width)
        return height, width

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        for op in self.before:
            if op.needs_float and not x.is_floating_point():
                x = x.float()
            elif op.needs_uint8 and x.is_floating_point():
                x = x.round().clamp_(0, 255).to(torch.uint8)
            x = op(x, gen)
        x = self.normalize(x)
        for op in self.after:
            x = op(x, gen)
        return x

    def __repr__(self) -> str:
        mix = "" if self.mix is None else f", mix={self.mix}"
        return f"BatchTransform(train={self.train}, ops={list(self.ops)}{mix})"


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
    index = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, height * width)
    index = index.to(x.device, non_blocking=True)
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


def _tries(
    n: int,
    area: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    gen: torch.Generator | None,
    attempts: int,
) -> tuple[torch.Tensor, ...]:
    """n x attempts tries of (area fraction uniform in `scale` times `area`, aspect ratio
    log-uniform in `ratio`, two uniforms for the offsets), drawn at once (float64)."""
    log_ratio = torch.log(torch.tensor(ratio, dtype=torch.float64))
    u = torch.rand((4, n, attempts), generator=gen, dtype=torch.float64)
    target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
    aspect = torch.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
    return target, aspect, u[2], u[3]


def _first_fit(fits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the first try that fits, whether any does) per image."""
    return fits.float().argmax(dim=1), fits.any(dim=1)


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
    target, aspect, u_top, u_left = _tries(n, height * width, scale, ratio, gen, attempts)
    cw = torch.sqrt(target * aspect).round()
    ch = torch.sqrt(target / aspect).round()
    fits = (cw > 0) & (cw <= width) & (ch > 0) & (ch <= height)
    # torch.randint(0, k + 1) is floor(U * (k + 1)): the same uniform offsets.
    top = (u_top * (height - ch + 1)).floor()
    left = (u_left * (width - cw + 1)).floor()
    first, ok = _first_fit(fits)
    # Fallback (no try fits): the whole image, clamped to the allowed aspect ratios.
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    pick = first[:, None]

    def choose(values: torch.Tensor, fallback: float) -> torch.Tensor:
        chosen = values.gather(1, pick).squeeze(1)
        return torch.where(ok, chosen, torch.full_like(chosen, fallback)).long()

    return (
        choose(top, (height - fh) // 2),
        choose(left, (width - fw) // 2),
        choose(ch, fh),
        choose(cw, fw),
    )


def erasing_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    gen: torch.Generator | None,
    attempts: int = 10,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(top, left, box height, box width) for n images: RandomErasing.make_params, batched.

    Up to 10 tries of an area in `scale` and a log-uniform ratio (box height over width);
    the first box smaller than the image on both sides wins; none: an empty box (no erase).
    """
    target, aspect, u_top, u_left = _tries(n, height * width, scale, ratio, gen, attempts)
    bh = torch.sqrt(target * aspect).round()
    bw = torch.sqrt(target / aspect).round()
    first, ok = _first_fit((bh < height) & (bw < width))
    pick = first[:, None]
    bh, bw = (v.gather(1, pick).squeeze(1) for v in (bh, bw))
    top = (u_top.gather(1, pick).squeeze(1) * (height - bh + 1)).floor()
    left = (u_left.gather(1, pick).squeeze(1) * (width - bw + 1)).floor()
    return top.long(), left.long(), torch.where(ok, bh, 0).long(), torch.where(ok, bw, 0).long()


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
        device=x.device, dtype=x.dtype, non_blocking=True
    )
    return roi_align(x, boxes, (height, width), spatial_scale=1.0, sampling_ratio=-1, aligned=True)


# Pipeline order, as torchvision's classification presets (and timm's color jitter after the
# auto-augment policy): size, crops, flips, policy, color; then normalize; then erasing.
# A new op: its class above, its place here, its field in TransformsConfig.
PIPELINE: tuple[type[BatchOp], ...] = (
    Resize,
    RandomCropFlip,
    RandomResizedCrop,
    CenterCrop,
    RandomHorizontalFlip,
    AutoAugment,
    ColorJitter,
    RandomErasing,
)


def pipeline_ops(tcfg: Any, train: bool) -> list[BatchOp]:
    """The ops a transforms config asks for, in pipeline order; eval leaves out train-only ops."""
    ops = (
        op_type.from_config(tcfg, train) for op_type in PIPELINE if train or not op_type.train_only
    )
    return [op for op in ops if op is not None]


def build_transforms(
    tcfg: Any,
    train_stats: Stats | Callable[[], Stats],
    channels: int,
    num_classes: int | None = None,
) -> tuple[BatchTransform, BatchTransform]:
    """(train, eval) pipelines of a transforms preset; eval never augments nor mixes.

    `train_stats` is (mean, std) or a function computing them (called only for normalize=auto,
    e.g. DataSplits.train_stats, which caches them per dataset). `num_classes` sizes the soft
    targets of MixUp/CutMix (needed only when they are on).
    """
    mean, std = resolve_stats(tcfg, train_stats, channels)
    mix = MixUpCutMix.from_config(tcfg, num_classes)
    return (
        BatchTransform(pipeline_ops(tcfg, True), train=True, mean=mean, std=std, mix=mix),
        BatchTransform(pipeline_ops(tcfg, False), train=False, mean=mean, std=std),
    )
