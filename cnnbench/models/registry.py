"""Model registry (timm-style): a name maps to a builder plus the facts a user needs.

cnnbench's own models register with `@register_model` in their family module
(`models/<family>.py`, imported when a model is first looked up); torchvision's classifiers
and timm's architectures (`timm/<arch>`) are built by `torchvision_zoo` / `timm_zoo` from the
catalog's facts (`catalog.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from importlib import import_module
from pkgutil import iter_modules
from typing import Any

import torch
from torch import nn

from ..errors import CnnbenchError
from .base import ModelInfo
from .catalog import TORCHVISION, catalog_names, find_entry, is_timm

# The zoo's families, in the order `cnnbench models` lists them; any other module of this
# package but the helpers is a family too (a new one needs no edit here).
FAMILIES = ("lenet", "alexnet", "vgg", "resnet", "fastnet")
HELPERS = frozenset(
    {"registry", "summary", "weights", "catalog", "catalog_table", "torchvision_zoo", "timm_zoo"}
)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    input_size: tuple[int, int, int],
    num_classes: int,
    source: str,
    torchvision: str | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register `builder(num_classes=..., in_channels=...)` under `name`."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(name, builder, input_size, num_classes, source, torchvision)
        return builder

    return decorate


def families() -> list[str]:
    """The family modules: FAMILIES first, then any other module of the package, sorted."""
    package = import_module(__package__)
    found = sorted(m.name for m in iter_modules(package.__path__))
    return [*FAMILIES, *(m for m in found if m not in FAMILIES and m not in HELPERS)]


def load_families() -> None:
    """Import every family module (each registers its models)."""
    for family in families():
        import_module(f".{family}", __package__)


def model_names() -> list[str]:
    """Every model name of the catalog (the zoo's and torchvision's), sorted."""
    return sorted(catalog_names())


def registered_models() -> list[ModelInfo]:
    """cnnbench's own models, family by family in registration order (the zoo table)."""
    load_families()
    order = {f"{__package__}.{family}": i for i, family in enumerate(families())}
    return sorted(_REGISTRY.values(), key=lambda info: order.get(info.builder.__module__, -1))


def _unknown_model(name: str) -> CnnbenchError:
    from difflib import get_close_matches

    close = get_close_matches(name, catalog_names(), n=3, cutoff=0.6)
    hint = f" (did you mean {' / '.join(close)}?)" if close else ""
    return CnnbenchError(
        f"unknown model {name!r}; valid models: {', '.join(model_names())}{hint}; "
        "`cnnbench models --all` describes them, model=timm model.arch=NAME builds timm's"
    )


def get_model_info(name: str) -> ModelInfo:
    """The zoo's model, else torchvision's classifier, else timm's `timm/<arch>`."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if is_timm(name):
        from .timm_zoo import timm_info

        return timm_info(name)
    entry = find_entry(name)
    if entry is None or entry.module != TORCHVISION:
        load_families()  # registers the zoo (also a model not in the catalog yet)
        if name in _REGISTRY:
            return _REGISTRY[name]
    if entry is None:
        raise _unknown_model(name)
    if entry.module != TORCHVISION:  # in the catalog, but its family no longer has it
        raise CnnbenchError(
            f"model {name!r} is in the catalog but {entry.module} does not register it; "
            "regenerate the catalog: python scripts/model_catalog.py"
        )
    from .torchvision_zoo import build_torchvision

    return ModelInfo(
        name,
        partial(build_torchvision, name),
        entry.input_size,
        entry.num_classes,
        entry.source,
        torchvision=name,
        weights=entry.weights,
    )


def native_input_size(name: str) -> tuple[int, int, int]:
    """The (C, H, W) the model `name` was designed for (its weights' crop size)."""
    entry = find_entry(name)
    return entry.input_size if entry is not None else get_model_info(name).input_size


def create_model(
    name: str, num_classes: int | None = None, in_channels: int | None = None
) -> nn.Module:
    """Build a model by name; unset sizes fall back to the model's defaults."""
    info = get_model_info(name)
    return info.builder(
        num_classes=info.num_classes if num_classes is None else num_classes,
        in_channels=info.input_size[0] if in_channels is None else in_channels,
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def transforms_presets_for(size: int, folder: Any = None) -> list[str]:
    """Transforms presets (configs/transforms/*.yaml) whose output is `size` x `size` images.

    A preset fits when its final `crop` (else its `resize`) is `size`, or when its name ends in
    the size (e.g. `imagenet227`).
    """
    from importlib.resources import files

    from omegaconf import OmegaConf

    found = []
    folder = files("cnnbench.configs") / "transforms" if folder is None else folder
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yaml"):
            continue
        preset = OmegaConf.create(entry.read_text())
        final = preset.get("crop") or preset.get("resize")
        stem = entry.name[: -len(".yaml")]
        if final == size or stem.endswith(str(size)):
            found.append(stem)
    return found


def _first_conv_channels(model: nn.Module) -> int | None:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


def size_fix(transforms: Any, size: int) -> str:
    """Overrides that make the `transforms` config output `size` x `size` images.

    A crop (transforms.crop) decides the final size, so resizing alone would not do: the crop
    is set to `size` and the resize before it scaled to keep the preset's proportions
    (rrc224's 256 -> 224 becomes 37 -> 32), or, without a resize, dropped.
    """
    crop = None if transforms is None else transforms.get("crop")
    if crop is None:
        return f"transforms.resize={size}"
    resize = transforms.get("resize")
    if resize is None:
        return f"transforms.resize={size} transforms.crop=null"
    return f"transforms.resize={max(size, round(size * resize / crop))} transforms.crop={size}"


def check_input_size(
    name: str,
    model: nn.Module,
    input_size: tuple[int, int, int],
    device: torch.device,
    transforms: Any = None,
) -> None:
    """Fail before training when the model cannot take `input_size` (C, H, W) images.

    The message names the model's native size and how to get there from the run's
    `transforms` config (`size_fix`); a preset made for that size is named when one exists.
    """
    info = get_model_info(name)
    c, h, w = info.input_size
    got = "x".join(map(str, input_size))
    channels = _first_conv_channels(model)
    if channels is not None and channels != input_size[0]:
        raise CnnbenchError(
            f"model {name!r} was built for {channels}-channel images but the data has "
            f"{input_size[0]} channel(s) ({got}); leave model.in_channels unset (it follows "
            f"the dataset) or set model.in_channels={input_size[0]}"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, *input_size, device=device))
    except (RuntimeError, AssertionError, ValueError) as err:  # ViT: AssertionError
        presets = transforms_presets_for(h) if h == w else []
        fits = (
            f", or the transforms preset made for {h}x{w} images: "
            + " / ".join(f"transforms={p}" for p in presets)
            if presets
            else ""
        )
        raise CnnbenchError(
            f"model {name!r} cannot take {got} images: it expects {c}x{h}x{w} "
            f"(torch says: {str(err).splitlines()[0]}). Resize the input with "
            f"{size_fix(transforms, h)}{fits}."
        ) from None
    finally:
        model.train(was_training)
