"""Model zoo: importing this package registers every family, one module per family."""

from importlib import import_module

from .registry import (
    ModelInfo,
    check_input_size,
    count_params,
    create_model,
    get_model_info,
    model_names,
    register_model,
    registered_models,
)
from .weights import apply_weights

# Registration order is the order `cnnbench models` lists them in.
FAMILIES = ("lenet", "alexnet", "vgg", "resnet", "fastnet")
for _family in FAMILIES:
    import_module(f".{_family}", __name__)

__all__ = [
    "FAMILIES",
    "ModelInfo",
    "apply_weights",
    "check_input_size",
    "count_params",
    "create_model",
    "get_model_info",
    "model_names",
    "register_model",
    "registered_models",
]
