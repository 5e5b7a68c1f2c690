"""The model zoo as a fixed table: what `cnnbench models` prints, without importing torch.

Each row restates what the registry (cnnbench/models) knows about a built-in model, with its
parameter count for the default classes; tests/test_startup.py checks the table against the
registry, so a model added there without a row here (or a changed model) fails that test.
"""

from __future__ import annotations

from typing import NamedTuple


class ZooModel(NamedTuple):
    name: str
    params: int  # for the default classes and input channels
    input_size: tuple[int, int, int]  # native (channels, height, width)
    num_classes: int
    source: str


TV = "seed 003 (torchvision's"
ZOO: tuple[ZooModel, ...] = (
    ZooModel("lenet5", 61_706, (1, 32, 32), 10, "seed 004 (LeNet-5 table)"),
    ZooModel("lenet_224", 46_038_242, (3, 224, 224), 2, "seed 004 (LeNet, cats vs dogs)"),
    ZooModel(
        "alexnet_original",
        62_378_344,
        (3, 227, 227),
        1000,
        "seed 001 (the 2012 paper's AlexNet, 227x227)",
    ),
    ZooModel("alexnet", 61_100_840, (3, 224, 224), 1000, f"{TV} AlexNet)"),
    ZooModel(
        "alexnet_512",
        42_321_218,
        (3, 256, 256),
        2,
        "seed 004 (AlexNet, 4096-512 head, cats vs dogs)",
    ),
    ZooModel("alexnet_cifar", 58_292_074, (3, 32, 32), 10, "seed 002 (AlexNet for CIFAR-10)"),
    ZooModel("small_alexnet", 12_417_098, (3, 32, 32), 10, "seed 002 (SmallAlexNet for CIFAR-10)"),
    ZooModel("vgg11", 132_863_336, (3, 224, 224), 1000, f"{TV} VGG-11)"),
    ZooModel("vgg11_bn", 132_868_840, (3, 224, 224), 1000, f"{TV} VGG-11 with BatchNorm)"),
    ZooModel("vgg13", 133_047_848, (3, 224, 224), 1000, f"{TV} VGG-13)"),
    ZooModel("vgg13_bn", 133_053_736, (3, 224, 224), 1000, f"{TV} VGG-13 with BatchNorm)"),
    ZooModel("vgg16", 138_357_544, (3, 224, 224), 1000, f"{TV} VGG-16)"),
    ZooModel("vgg16_bn", 138_365_992, (3, 224, 224), 1000, f"{TV} VGG-16 with BatchNorm)"),
    ZooModel("vgg19", 143_667_240, (3, 224, 224), 1000, f"{TV} VGG-19)"),
    ZooModel("vgg19_bn", 143_678_248, (3, 224, 224), 1000, f"{TV} VGG-19 with BatchNorm)"),
    ZooModel(
        "resnet18", 11_689_512, (3, 224, 224), 1000, "torchvision's ResNet-18 (modern reference)"
    ),
    ZooModel(
        "fastnet",
        295_480,
        (3, 32, 32),
        10,
        "cnnbench's fast recipe (airbench-style small ResNet for CIFAR-10)",
    ),
)
