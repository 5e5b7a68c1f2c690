"""`cnnbench summary model=NAME [dataset=...]`: a model's torchsummary table, without training.

Without a dataset the model gets its native input size and default classes (SPEC.md's
table); with `dataset=...` (or any `dataset.` key) it gets that dataset's channels, classes
and image size after the transforms, exactly as `cnnbench train` would build it.
"""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig

from ..config import compose_checked
from ..data import build_transforms
from ..device import resolve_device
from ..errors import user_errors
from ..models import count_params, get_model_info
from ..models.summary import summary_table
from ..train import build_data, build_model
from .args import add_overrides, command_parser, parse_command

USAGE = "cnnbench summary model=NAME [dataset=NAME] [overrides...]"
DESCRIPTION = """
Print the torchsummary table of a model without training it. The overrides are the ones
`cnnbench train` takes. Without a dataset the model gets its native input size and default
classes; with dataset=... it is built for that dataset (channels, classes, image size after
the transforms). `cnnbench models` lists the names.
"""
EXAMPLES = (
    "cnnbench summary model=alexnet_original",
    "cnnbench summary model=alexnet_cifar dataset=cifar10",
    "cnnbench summary model=alexnet dataset=fake transforms.resize=224 "
    "model.weights=alexnet-owt-7be5be79.pth",
)


def _overridden(args: list[str], group: str) -> bool:
    """True when an override sets `group` or a key under it (dataset=x, dataset.size=3, +...)."""
    keys = (a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a)
    return any(k == group or k.startswith(group + ".") for k in keys)


def summarize(cfg: DictConfig, use_dataset: bool, use_transforms: bool) -> str:
    """A header line and the torchsummary table of `cfg.model` on `cfg.device`."""
    info = get_model_info(cfg.model.name)
    device = resolve_device(cfg.device)
    if use_dataset:  # exactly as `cnnbench train` builds it for this dataset
        data = build_data(cfg)
        size, classes, where = data.input_size, data.num_classes, f"dataset {cfg.dataset.name}"
    else:
        size = (cfg.model.in_channels or info.input_size[0], *info.input_size[1:])
        classes, where = cfg.model.num_classes or info.num_classes, "native size"
        if use_transforms:
            channels = size[0]
            stats = ([0.0] * channels, [1.0] * channels)  # the size does not depend on them
            train_tf, _ = build_transforms(cfg.transforms, stats, channels)
            size = (channels, *train_tf.output_size(*size[1:]))
    model = build_model(cfg, size, classes, device)
    header = (
        f"{info.name}: {count_params(model):,} parameters, {classes} classes, input "
        f"{'x'.join(map(str, size))} ({where}), on {device}\nsource: {info.source}"
    )
    return header + "\n" + summary_table(model, size, device)


def run_cli(args: list[str]) -> None:
    """`cnnbench summary OVERRIDES`."""
    parser = command_parser("summary", USAGE, DESCRIPTION, EXAMPLES)
    add_overrides(parser, "overrides as `cnnbench train` takes them (model=NAME, dataset=...)")
    overrides = parse_command(parser, args).overrides
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    with user_errors():
        cfg = compose_checked(overrides)
        text = summarize(
            cfg, _overridden(overrides, "dataset"), _overridden(overrides, "transforms")
        )
    print(text, end="", flush=True)
