"""timm's architectures (`model=timm model.arch=NAME`, optional extra `cnnbench[timm]`).

The run's model name is `timm/<arch>`; `timm.create_model(arch, pretrained=False,
num_classes=..., in_chans=...)` builds it (nothing is downloaded: pretrained weights come
from a local file, `model.weights=PATH`, like every other model). The native input size is
timm's pretrained config's `input_size` (what timm's resolve_data_config uses).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from ..errors import CnnbenchError
from .base import ModelInfo
from .catalog import TIMM_PREFIX

INSTALL = "pip install 'cnnbench[timm]'"


def require_timm() -> Any:
    """The timm module, or one error naming the extra to install."""
    try:
        import timm
    except ImportError:
        raise CnnbenchError(f"model=timm needs timm, which is not installed: {INSTALL}") from None
    return timm


def timm_info(name: str) -> ModelInfo:
    """What the registry knows about `timm/<arch>`."""
    timm = require_timm()
    arch = name[len(TIMM_PREFIX) :]
    if not timm.is_model(arch):
        raise CnnbenchError(
            f"timm has no architecture {arch!r} (model.arch); list them with python -c "
            f"\"import timm; print(timm.list_models('*{arch.split('_')[0]}*'))\""
        )
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    input_size = tuple(cfg.input_size) if cfg is not None and cfg.input_size else (3, 224, 224)
    classes = cfg.num_classes if cfg is not None and cfg.num_classes else 1000
    return ModelInfo(
        name,
        partial(build_timm, arch),
        input_size,  # type: ignore[arg-type]
        classes,
        f"timm {timm.__version__}: {arch}",
    )


def build_timm(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    timm = require_timm()
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)
