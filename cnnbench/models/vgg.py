"""VGG family (seed 003): torchvision's VGG-11/13/16/19, with and without BatchNorm.

Built with torchvision's own builders (weights=None: nothing is downloaded), so the module
names match and torchvision's ImageNet `.pth` files load with `model.weights=PATH`.
"""

from __future__ import annotations

import torchvision.models as tvm
from torch import nn

from .base import replace_first_conv
from .registry import register_model

DEPTHS = (11, 13, 16, 19)


def _register(name: str) -> None:
    def build(num_classes: int, in_channels: int) -> nn.Module:
        model = getattr(tvm, name)(weights=None, num_classes=num_classes)
        model.features[0] = replace_first_conv(model.features[0], in_channels)
        return model

    build.__name__ = name
    build.__doc__ = f"torchvision's {name} (3x224x224 ImageNet classifier)."
    batchnorm = " with BatchNorm" if name.endswith("_bn") else ""
    register_model(
        name,
        input_size=(3, 224, 224),
        num_classes=1000,
        source=f"seed 003 (torchvision's VGG-{name[3:5]}{batchnorm})",
        torchvision=name,
    )(build)


for _depth in DEPTHS:
    _register(f"vgg{_depth}")
    _register(f"vgg{_depth}_bn")
