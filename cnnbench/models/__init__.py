"""Model zoo: one module per family (importing it registers its models), plus helpers.

Importing this package imports nothing heavy: `cnnbench.models.catalog` (every model name,
size and parameter count, as data) is read without torch; the names below load their module
(and torch) on first use, and the registry imports the family modules when a model is built.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "FAMILIES": "registry",
    "ModelInfo": "base",
    "check_input_size": "registry",
    "count_params": "registry",
    "create_model": "registry",
    "get_model_info": "registry",
    "load_families": "registry",
    "model_names": "registry",
    "native_input_size": "registry",
    "register_model": "registry",
    "registered_models": "registry",
    "apply_weights": "weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
