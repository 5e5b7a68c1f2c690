"""ResNet-18: torchvision's, as the modern reference next to the seeds' classic networks.

Built with torchvision's builder (weights=None: nothing is downloaded), so the module names
match and torchvision's ImageNet `.pth` file loads with `model.weights=PATH`.
"""

from __future__ import annotations

import torchvision.models as tvm
from torch import nn

from .base import replace_first_conv
from .registry import register_model


@register_model(
    "resnet18",
    input_size=(3, 224, 224),
    num_classes=1000,
    source="torchvision's ResNet-18 (modern reference)",
    torchvision="resnet18",
)
def resnet18(num_classes: int, in_channels: int) -> nn.Module:
    model = tvm.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = replace_first_conv(model.conv1, in_channels)
    return model
