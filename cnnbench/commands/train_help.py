"""`cnnbench train --help`: groups, options and the composed config, without Hydra's app_help.

Hydra's own help builds a config repository per group option (~1 s of CPU for cnnbench's
schemas); this prints the same page from configs/hydra/help/cnnbench.yaml (header, footer,
template) with one composition, so `--help` answers at once. `--hydra-help` stays Hydra's.
"""

from __future__ import annotations

from importlib.resources import files

HELP_FLAGS = ("-h", "--help")


def wants_help(args: list[str]) -> bool:
    """`--help`/`-h` given (overrides may come with it: they shape the config shown)."""
    return any(a in HELP_FLAGS for a in args)


def help_text(args: list[str]) -> str:
    """The help page for `cnnbench train ARGS --help` (ARGS' overrides applied to the config)."""
    import yaml
    from omegaconf import OmegaConf

    from ..config import GROUPS, compose_checked, group_options

    page = yaml.safe_load(
        (files("cnnbench.configs") / "hydra" / "help" / "cnnbench.yaml").read_text()
    )
    overrides = [a for a in args if not a.startswith("-")]
    groups = "\n".join(f"{g}: {', '.join(sorted(group_options(g)))}" for g in sorted(GROUPS))
    config = OmegaConf.to_yaml(compose_checked(overrides))
    return (
        page["template"]
        .replace("${hydra.help.header}", page["header"])
        .replace("${hydra.help.footer}", page["footer"])
        .replace("$APP_CONFIG_GROUPS", groups + "\n")
        .replace("$CONFIG", config)
    )
