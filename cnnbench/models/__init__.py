"""Model zoo: importing this package registers every family, one module per family."""

from importlib import import_module
from pkgutil import iter_modules

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

# Every module of this package but the helpers is a family; importing it registers its
# models. Registration order is the order `cnnbench models` lists them in: these first, then
# any other family file (a new one needs no edit here).
FAMILIES = ("lenet", "alexnet", "vgg", "resnet", "fastnet")
_HELPERS = {"registry", "summary", "weights"}
_OTHERS = sorted(m.name for m in iter_modules(__path__) if m.name not in (*FAMILIES, *_HELPERS))
for _family in (*FAMILIES, *_OTHERS):
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
