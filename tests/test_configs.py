"""Every option of every group composes, and each option's schema is the whole truth.

As lightning-hydra-template's test_configs: the lists come from the configs themselves, so a
new option is tested without editing this file.
"""

from __future__ import annotations

from importlib.resources import files

import pytest
from omegaconf import OmegaConf

from cnnbench.config import (
    GROUPS,
    REGISTERED_GROUPS,
    TrainConfig,
    TransformsConfig,
    check_values,
    compose_checked,
    group_options,
    option_keys,
)
from cnnbench.errors import CnnbenchError
from cnnbench.models import model_names
from cnnbench.models.catalog import ENTRIES


def representatives(group: str) -> list[str]:
    """The options to compose: all, but for `model` (88 options of one schema that differ
    only in their name) one per family and timm; test_every_model_is_registered covers all."""
    if group != "model":
        return group_options(group)
    first = {}
    for entry in ENTRIES:
        first.setdefault(entry.family, entry.name)
    return [*first.values(), "timm"]


OPTIONS = [(group, option) for group in GROUPS for option in representatives(group)]
# Options that need a value to be usable, and the name they then give their node.
NEEDS = {("model", "timm"): (["model.arch=resnet18"], "timm/resnet18")}


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_passes_the_value_checks(group, option):
    extra, named = NEEDS.get((group, option), ([], option))
    if (group, option) == ("model", "timm"):
        pytest.importorskip("timm", reason="pip install 'cnnbench[timm]'")
    cfg = compose_checked([f"{group}={option}", *extra])
    check_values(cfg)
    if group != "recipe":  # a recipe sets values of the other groups
        name = cfg[group].name
        assert (name.value if hasattr(name, "value") else name) == named
    assert OmegaConf.to_container(cfg, resolve=True)  # no interpolation left unresolved


def test_groups_have_options_and_the_models_are_the_catalog():
    assert all(group_options(group) for group in GROUPS)
    assert sorted(group_options("model")) == sorted([*model_names(), "timm"])
    assert not (files("cnnbench.configs") / "model").is_dir()  # registered, no YAML per model


def test_every_model_is_registered_as_a_model_option():
    from hydra.core.config_store import ConfigStore

    from cnnbench.config import register_configs

    register_configs()
    stored = ConfigStore.instance().repo["model"]
    for name in model_names():
        assert stored[f"{name}.yaml"].node.name == name
    assert "arch" in stored["timm.yaml"].node.keys()  # noqa: SIM118 (MISSING is listed)


# (group, option, a key of another option of that group)
FOREIGN_KEYS = [
    (group, option, key)
    for group, options in REGISTERED_GROUPS.items()
    for option, schema in options.items()
    if group != "model" or option in ("lenet5", "timm")  # the model options share a schema
    for key in sorted(
        {k for other in options.values() for k in option_keys(other)} - set(option_keys(schema))
    )[:2]
]


@pytest.mark.parametrize(
    "group,option,key", FOREIGN_KEYS, ids=[f"{g}={o}-{k}" for g, o, k in FOREIGN_KEYS]
)
def test_a_key_the_chosen_option_does_not_use_is_an_error(group, option, key):
    with pytest.raises(CnnbenchError) as err:
        compose_checked([f"{group}={option}", f"{group}.{key}=1"])
    message = str(err.value)
    assert message.startswith(f"{group}.{key} is not used by {group}={option} (its keys: name")
    assert "did you mean" in message and f"{group}.{key}=1?" in message


def test_dataset_root_without_a_folder_dataset_suggests_one():
    with pytest.raises(CnnbenchError) as err:
        compose_checked(["dataset.root=/data/pets"])
    assert str(err.value).startswith("dataset.root is not used by dataset=digits (its keys: ")
    assert "did you mean dataset=folder dataset.root=/data/pets?" in str(err.value)


def _defaults(schema) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(schema), enum_to_str=True)


def _restated(values: dict, defaults: dict) -> list[str]:
    return [k for k, v in values.items() if k != "name" and k in defaults and defaults[k] == v]


def test_each_default_has_one_home():
    """Presets and recipes only pick values: none restates a schema's default."""
    root = files("cnnbench.configs")
    for option in group_options("transforms"):
        preset = OmegaConf.to_container(OmegaConf.load(str(root / "transforms" / f"{option}.yaml")))
        assert not _restated(preset, _defaults(TransformsConfig)), f"transforms/{option}.yaml"
    for recipe in group_options("recipe"):
        values = OmegaConf.to_container(OmegaConf.load(str(root / "recipe" / f"{recipe}.yaml")))
        cfg = compose_checked([f"recipe={recipe}"])
        assert not _restated(values or {}, _defaults(TrainConfig)), f"recipe/{recipe}.yaml"
        for group, options in REGISTERED_GROUPS.items():
            chosen = options[str(OmegaConf.to_container(cfg[group], enum_to_str=True)["name"])]
            picked = (values or {}).get(group, {})
            assert not _restated(picked, _defaults(chosen)), f"recipe/{recipe}.yaml: {group}"
