"""Shell completion (bash, zsh, fish): Hydra's, registered for the `cnnbench` program.

    eval "$(cnnbench train -sc install=bash)"      # zsh too (bashcompinit); fish: | source

Hydra's install script registers its completion function for the program that printed it and,
on Tab, calls `cnnbench -sc query=SHELL` with the line typed so far in COMP_LINE. That call
lands here: the first word after `cnnbench` completes to a command name; after a command
that takes overrides, the command word is taken out of the line and Hydra completes groups,
options and keys (`model=le` -> `model=lenet5`, `dataset.` -> `dataset.root=`, ...). Where
nothing matches (a run directory, an image), the shell falls back to file names.
"""

from __future__ import annotations

import os
import sys

FLAGS = ("-sc", "--shell-completion")
# Commands whose arguments include config overrides (completed by Hydra).
OVERRIDE_COMMANDS = ("train", "summary", "stats", "show", "eval", "rerun")


def requested(args: list[str]) -> bool:
    """True when `args` (anywhere) ask for shell completion: `-sc install=bash`, ..."""
    return any(a in FLAGS for a in args)


def run(args: list[str], commands: list[str]) -> None:
    """`cnnbench [COMMAND] -sc install|uninstall|query=SHELL`; `commands` are the names."""
    flag = next(i for i, a in enumerate(args) if a in FLAGS)
    request = args[flag + 1] if flag + 1 < len(args) else ""
    action, _, shell = request.partition("=")
    if action == "query":
        line = os.environ.get("COMP_LINE", "")
        words, new_word = line.split(), line.endswith(" ")
        if len(words) + new_word <= 2:  # the command word itself
            prefix = "" if new_word or len(words) < 2 else words[1]
            sep = "\n" if shell == "fish" else " "
            print(sep.join(c for c in commands if c.startswith(prefix)))
            return
        if words[1] not in OVERRIDE_COMMANDS:
            return  # no overrides to complete: the shell completes file names
        overrides = [w for w in words[2:-1] if "=" in w and not w.startswith("-")]
        typed = [*overrides, *([] if new_word else words[-1:])]
        os.environ["COMP_LINE"] = " ".join([words[0], *typed]) + (" " if new_word else "")
    _hydra(["-sc", request])


def _hydra(args: list[str]) -> None:
    """Run Hydra's completion plugin as `cnnbench ARGS` (the program the script registers)."""
    from .commands.train import main
    from .config import register_configs

    register_configs()
    sys.argv = ["cnnbench", *args]
    main()
