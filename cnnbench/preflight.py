"""Before the first epoch: a warning for a run that is unlikely to learn, with its cost.

Two cheap signs (a parameter count and a size comparison, nothing run): a model with more
than PARAMS_PER_IMAGE parameters per training image (VGG-16's 134M on 1,300 digits), or
images upscaled more than MAX_UPSCALE times to the model's input (8x8 digits at 224x224).
Only when one shows is the epoch time estimated: the model's training FLOPs are counted on
the meta device (no weights, no compute, ~0.2 s) and divided by a rough device throughput,
plus the optimizer's pass over the parameters; the estimate is good to a factor of a few.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .models.catalog import zoo_entries

log = logging.getLogger("cnnbench")

PARAMS_PER_IMAGE = 1000
MAX_UPSCALE = 4
# The images' own side where a loader resizes them on load (dataset.image_size); other
# datasets are taken at their stored size.
NATIVE_SIDE = {"digits": 8, "mnist": 28, "fashion_mnist": 28, "cifar10": 32, "cifar100": 32}
# Rough sustained rates: FLOP/s per CPU thread (fp32 convolutions) or per GPU, and bytes/s
# for the optimizer's update (about 28 bytes moved per parameter for Adam).
CPU_FLOPS_PER_THREAD, GPU_FLOPS = 30e9, 20e12
CPU_BYTES, GPU_BYTES, BYTES_PER_PARAM = 10e9, 1e12, 28


def train_flops_per_image(name: str, num_classes: int, input_size: tuple[int, int, int]) -> int:
    """Forward + backward FLOPs of one image, counted on the meta device (nothing computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    from .models import create_model

    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        model = create_model(name, num_classes, input_size[0])
        model(torch.zeros(2, *input_size)).float().sum().backward()
    return counter.get_total_flops() // 2


def epoch_seconds(flops: int, images: int, steps: int, params: int, device: torch.device) -> float:
    """A rough epoch time: the FLOPs at the device's rate plus the optimizer's memory traffic."""
    gpu = device.type == "cuda"
    rate = GPU_FLOPS if gpu else CPU_FLOPS_PER_THREAD * torch.get_num_threads()
    update = steps * params * BYTES_PER_PARAM / (GPU_BYTES if gpu else CPU_BYTES)
    return flops * images / rate + update


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def hopeless_run_warning(cfg: Any, params: int, data: Any, device: torch.device) -> str | None:
    """The warning for this run (None when neither sign shows)."""
    images, (_, side, _) = len(data.splits.train), data.input_size
    native = NATIVE_SIDE.get(cfg.dataset.name, data.splits.input_size[1])
    reasons = []
    if params > PARAMS_PER_IMAGE * images:
        reasons.append(
            f"{cfg.model.name} has {params:,} parameters for {images:,} training images "
            f"({params // max(images, 1):,} per image; more than {PARAMS_PER_IMAGE:,} rarely "
            "learns)"
        )
    if side > MAX_UPSCALE * native:
        reasons.append(
            f"its {side}x{side} input is {native}x{native} images upscaled {side / native:.0f}x"
        )
    if not reasons:
        return None
    flops = train_flops_per_image(cfg.model.name, data.num_classes, data.input_size)
    steps = -(-images // cfg.batch_size)
    seconds = epoch_seconds(flops, images, steps, params, device)
    fits = [
        f"model={m.name}"
        for m in sorted(zoo_entries(), key=lambda m: m.params)
        if m.params <= PARAMS_PER_IMAGE * images and m.input_size[1] <= MAX_UPSCALE * native
    ]
    advice = f"models sized for this data: {', '.join(fits)}" if fits else "more data helps"
    return (
        f"this run is unlikely to learn: {'; '.join(reasons)}. Estimated ~{_duration(seconds)} per "
        f"epoch, ~{_duration(seconds * cfg.epochs)} for {cfg.epochs} epochs on {device} "
        f"({flops / 1e9:.2f} GFLOP per training image; a rough estimate). {advice[0].upper()}"
        f"{advice[1:]} (`cnnbench models` lists them); Ctrl-C stops the run"
    )


def warn_if_hopeless(cfg: Any, params: int, data: Any, device: torch.device) -> None:
    """Log `hopeless_run_warning` when there is one."""
    warning = hopeless_run_warning(cfg, params, data, device)
    if warning:
        log.warning(warning)
