"""AlexNet family (seeds 001-004): the 2012 paper's shape, torchvision's, and the seeds' variants.

`alexnet_original`, `alexnet` and `alexnet_512` keep torchvision's module names
(`features.N`, `classifier.N`), so torchvision's ImageNet state_dict loads into `alexnet`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import register_model


class AlexNetOriginal(nn.Module):
    """Seed 001: the paper's 96-256-384-384-256 AlexNet on 227x227 images, no adaptive pool."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4),  # 227 -> 55
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 55 -> 27
            nn.Conv2d(96, 256, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 27 -> 13
            nn.Conv2d(256, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 13 -> 6
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class AlexNet(nn.Module):
    """torchvision's AlexNet (64-192-384-256-256, AdaptiveAvgPool 6x6) with a choosable head.

    `hidden=(4096, 4096)` is torchvision's model; seed 004 narrows it to `(4096, 512)`.
    """

    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, hidden: tuple[int, int] = (4096, 4096)
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(256 * 6 * 6, hidden[0]),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(inplace=True),
            nn.Linear(hidden[1], num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class AlexNetCifar(nn.Module):
    """Seed 002's AlexNet for 32x32 CIFAR images (96-256-384-384-256, 9216-4096-4096)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=4),  # 32 -> 29
            nn.ReLU(inplace=True),
            nn.Conv2d(96, 256, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 29 -> 14
            nn.Conv2d(256, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 14 -> 6
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class SmallAlexNet(nn.Module):
    """Seed 002's SmallAlexNet: 64-192-256-256-128 convs, a 3200-2048-2048 head, 32x32 input."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=7),  # 32 -> 26
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 26 -> 12
            nn.Conv2d(192, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 128, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # 12 -> 5
        )
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(128 * 5 * 5, 2048),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(2048, 2048),
            nn.ReLU(inplace=True),
            nn.Linear(2048, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model(
    "alexnet_original",
    input_size=(3, 227, 227),
    num_classes=1000,
    source="seed 001 (the 2012 paper's AlexNet, 227x227)",
)
def alexnet_original(num_classes: int, in_channels: int) -> nn.Module:
    return AlexNetOriginal(num_classes, in_channels)


@register_model(
    "alexnet",
    input_size=(3, 224, 224),
    num_classes=1000,
    source="seed 003 (torchvision's AlexNet)",
    torchvision="alexnet",
)
def alexnet(num_classes: int, in_channels: int) -> nn.Module:
    return AlexNet(num_classes, in_channels)


@register_model(
    "alexnet_512",
    input_size=(3, 256, 256),
    num_classes=2,
    source="seed 004 (AlexNet, 4096-512 head, cats vs dogs)",
)
def alexnet_512(num_classes: int, in_channels: int) -> nn.Module:
    return AlexNet(num_classes, in_channels, hidden=(4096, 512))


@register_model(
    "alexnet_cifar",
    input_size=(3, 32, 32),
    num_classes=10,
    source="seed 002 (AlexNet for CIFAR-10)",
)
def alexnet_cifar(num_classes: int, in_channels: int) -> nn.Module:
    return AlexNetCifar(num_classes, in_channels)


@register_model(
    "small_alexnet",
    input_size=(3, 32, 32),
    num_classes=10,
    source="seed 002 (SmallAlexNet for CIFAR-10)",
)
def small_alexnet(num_classes: int, in_channels: int) -> nn.Module:
    return SmallAlexNet(num_classes, in_channels)
