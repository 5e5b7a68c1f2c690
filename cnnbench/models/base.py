"""What the model families share: a model's registry record and the first-layer swap for
builders that wrap torchvision (imported by the registry and by the families alike)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model without building it."""

    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int]  # native (channels, height, width)
    num_classes: int  # default classes, as in SPEC.md's table
    source: str  # where the architecture comes from
    torchvision: str | None = None  # torchvision builder whose ImageNet .pth files load as-is
    weights: str | None = None  # that builder's weights entry whose file fits (None: DEFAULT)


def replace_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """`conv` itself for its own input channels, else a fresh Conv2d like it for `in_channels`.

    For builders that wrap torchvision (which has no `in_channels` argument); the new layer is
    initialized like torchvision initializes VGG and ResNet convolutions.
    """
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new
