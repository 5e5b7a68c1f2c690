"""Model registry (timm-style): a name maps to a builder plus the facts a user needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CnnbenchError


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model without building it."""

    name: str
    builder: Callable[..., nn.Module]
    input_size: tuple[int, int, int]  # native (channels, height, width)
    num_classes: int  # default classes, as in SPEC.md's table
    source: str  # where the architecture comes from


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str, *, input_size: tuple[int, int, int], num_classes: int, source: str
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register `builder(num_classes=..., in_channels=...)` under `name`."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(name, builder, input_size, num_classes, source)
        return builder

    return decorate


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def get_model_info(name: str) -> ModelInfo:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CnnbenchError(
            f"unknown model {name!r}; valid models: {', '.join(model_names())}"
        ) from None


def create_model(
    name: str, num_classes: int | None = None, in_channels: int | None = None
) -> nn.Module:
    """Build a registered model; unset sizes fall back to the model's defaults."""
    info = get_model_info(name)
    return info.builder(
        num_classes=info.num_classes if num_classes is None else num_classes,
        in_channels=info.input_size[0] if in_channels is None else in_channels,
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_input_size(
    name: str, model: nn.Module, input_size: tuple[int, int, int], device: torch.device
) -> None:
    """Fail before training when the model cannot take `input_size` (C, H, W) images."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *input_size, device=device))
    except RuntimeError as err:
        info = get_model_info(name)
        c, h, w = info.input_size
        raise CnnbenchError(
            f"model {name!r} cannot take {input_size[0]}x{input_size[1]}x{input_size[2]} images "
            f"(it expects {c}x{h}x{w}; first error: {str(err).splitlines()[0]}). Resize the "
            f"input with transforms.resize={h} (or a transforms preset made for {h}x{w} images)."
        ) from None
    finally:
        model.train(was_training)
