"""fastnet: a small ResNet-style CIFAR net for time-to-accuracy runs (in the spirit of airbench).

A 3x3 stem, then three groups of conv -> max-pool -> BN -> GELU -> conv -> BN -> GELU with a
residual connection around the second conv, global max pooling and a linear head whose
logits are scaled down (airbench's 1/9), which with label smoothing keeps early training stable.
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register_model


def conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]


class Group(nn.Module):
    """conv (cin -> cout) at full resolution, 2x2 max-pool, then a residual conv block."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(cout),
            nn.GELU(),
        )
        self.res = nn.Sequential(*conv_bn(cout, cout))

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)
        return x + self.res(x)


class FastNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int, int] = (24, 32, 64, 128),
        logit_scale: float = 1 / 9,
    ) -> None:
        super().__init__()
        stem, *groups = widths
        layers: list[nn.Module] = [*conv_bn(in_channels, stem)]
        cin = stem
        for cout in groups:
            layers.append(Group(cin, cout))
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(cin, num_classes, bias=False)
        self.logit_scale = logit_scale

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)) * self.logit_scale


@register_model(
    "fastnet",
    input_size=(3, 32, 32),
    num_classes=10,
    source="cnnbench's fast recipe (airbench-style small ResNet for CIFAR-10)",
)
def fastnet(num_classes: int, in_channels: int) -> nn.Module:
    return FastNet(num_classes, in_channels)
