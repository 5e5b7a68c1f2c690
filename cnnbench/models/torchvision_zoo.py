"""torchvision's classifiers by name (`model=resnet50`, `model=efficientnet_b0`, ...).

Each is torchvision's own builder with `weights=None` (nothing is downloaded), so the module
names are torchvision's and its ImageNet `.pth` files load with `model.weights=PATH`. Two
adaptations, both made the same way for every family:

- `in_channels`: the first convolution (the stem: `conv1`, `features.0.0`, `conv_proj`, ...)
  is replaced by a fresh one for that many channels when it differs.
- GoogLeNet and Inception-v3 are built without their auxiliary classifiers
  (`aux_logits=False`): in training mode they would return a tuple instead of logits. Their
  weights files still load: the file's `aux1.*`, `aux2.*`, `AuxLogits.*` entries are left out
  (weights.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from .base import replace_first_conv

# Builder arguments per model beyond weights/num_classes: logits only, torchvision's default
# initialization (init_weights=None would warn that the default will change).
EXTRA_ARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """(name, module) of the model's first Conv2d: the stem that sees the image."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError(f"{model.__class__.__name__} has no Conv2d")


def adapt_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """`model` with its first convolution taking `in_channels` channels."""
    name, conv = first_conv(model)
    new = replace_first_conv(conv, in_channels)
    if new is not conv:
        model.set_submodule(name, new)
    return model


@contextmanager
def regnet_widths_on_cpu() -> Iterator[None]:
    """RegNet's builders compute their block widths with tensors and read them back
    (`.tolist()`), which fails under `torch.device("meta")` (how the catalog and the tests
    count parameters without allocating): compute those few numbers on the CPU."""
    from torchvision.models import regnet

    raw = regnet.BlockParams.__dict__["from_init_params"]
    bound = regnet.BlockParams.from_init_params

    def on_cpu(*args: Any, **kwargs: Any) -> Any:
        with torch.device("cpu"):
            return bound(*args, **kwargs)

    regnet.BlockParams.from_init_params = on_cpu
    try:
        yield
    finally:
        regnet.BlockParams.from_init_params = raw


def build_torchvision(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """torchvision.models.<name>(weights=None, num_classes=...) for `in_channels` images."""
    import torchvision.models as tvm

    extra = EXTRA_ARGS.get(name, {})
    with regnet_widths_on_cpu() if name.startswith("regnet") else nullcontext():
        model = tvm.get_model(name, weights=None, num_classes=num_classes, **extra)
    return adapt_first_conv(model, in_channels)
