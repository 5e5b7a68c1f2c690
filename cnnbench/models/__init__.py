"""Model zoo: importing this package registers every family."""

from . import alexnet, fastnet, lenet  # noqa: F401  (registration side effects)
from .registry import (
    ModelInfo,
    check_input_size,
    count_params,
    create_model,
    get_model_info,
    model_names,
    register_model,
)

__all__ = [
    "ModelInfo",
    "check_input_size",
    "count_params",
    "create_model",
    "get_model_info",
    "model_names",
    "register_model",
]
