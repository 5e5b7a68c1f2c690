"""A run's config as flat `dotted.key -> value` pairs, and a stable hash of it.

Used to compare runs (`cnnbench diff`), to log a config as parameters (MLflow, wandb) and to
stamp exported models with the config they were trained with.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

IGNORED = ("resume", "hydra")  # how a run was continued, and Hydra's own settings


def to_plain(cfg: Any, resolve: bool = False) -> dict[str, Any]:
    """A DictConfig (or a plain mapping) as plain dicts and lists; enums as their names.

    With `resolve`, interpolations are replaced by their values where they can be (inside
    the Hydra app), else kept as written.
    """
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    try:
        data = OmegaConf.to_container(cfg, resolve=resolve, enum_to_str=True)
    except Exception:  # a resolver that only exists inside Hydra (${hydra:...}, ${now:...})
        data = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    assert isinstance(data, dict)
    return data


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as `a.b.c -> value`; lists and scalars are values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def flat_config(cfg: Any, resolve: bool = False) -> dict[str, Any]:
    """`cfg` flattened, without the keys in IGNORED."""
    data = to_plain(cfg, resolve)
    for key in IGNORED:
        data.pop(key, None)
    return flatten(data)
