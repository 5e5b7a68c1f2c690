"""AlexNet family (seeds 001-004)."""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register_model


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


@register_model(
    "alexnet_cifar",
    input_size=(3, 32, 32),
    num_classes=10,
    source="seed 002 (AlexNet for CIFAR-10)",
)
def alexnet_cifar(num_classes: int, in_channels: int) -> nn.Module:
    return AlexNetCifar(num_classes, in_channels)
