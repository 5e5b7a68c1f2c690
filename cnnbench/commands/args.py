"""One argument style for the non-Hydra commands: argparse, with config overrides as positionals.

Each command builds its parser with `command_parser` and parses with `parse_command`: `-h`/`--help`
anywhere prints the usage, options and examples; an unknown flag or a stray argument is one
`error:` line (with the usage) and exit 2. `key=value` / `group=option` positionals are the
overrides `cnnbench train` takes; `--device`, `--batch-size` and `--split` are spelled-out
forms of `device=`, `eval_batch_size=` and `split=` (`flag_overrides`).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..config import DeviceName, is_config_key
from ..errors import CnnbenchError, user_errors

DEVICES = [d.value for d in DeviceName]
# A Hydra override: [+|++|~]key[.key...][@pkg]=value, or ~key (delete).
_OVERRIDE = re.compile(r"^(\+\+|\+|~)?([A-Za-z_][\w.@/-]*)=|^~[A-Za-z_][\w.]*$")
_KEY_VALUE = re.compile(r"^([A-Za-z_][\w.]*)=")


class CommandParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one `error:` line and exit 2."""

    def error(self, message: str) -> NoReturn:
        print(
            f"error: {message}; usage: {self.usage} (see {self.prog} --help)",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(2)


def command_parser(
    name: str, usage: str, description: str, examples: Sequence[str] = ()
) -> CommandParser:
    """The parser of `cnnbench NAME`: `usage` is its one-line usage (without "usage: ")."""
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None
    return CommandParser(
        prog=f"cnnbench {name}",
        usage=usage,
        description=description.strip(),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )


def add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    """Positional `key=value` / `group=option` overrides, collected in `overrides`."""
    parser.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help=help)


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """`--device NAME` (as device=NAME) and `--batch-size N` (as eval_batch_size=N)."""
    parser.add_argument("--device", choices=DEVICES, help="same as device=NAME")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        help="images per batch, same as eval_batch_size=N",
    )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def parse_command(parser: CommandParser, args: Sequence[str]) -> argparse.Namespace:
    """Parse `args` (options and positionals in any order); check the overrides' form."""
    opts = parser.parse_intermixed_args(list(args))
    for arg in getattr(opts, "overrides", None) or []:
        if not is_override(arg):
            parser.error(
                f"stray argument {arg!r}: overrides are key=value or group=option "
                "(e.g. dataset=cifar10 device=cpu)"
            )
    if getattr(opts, "overrides", None):
        from ..runs import path_overrides

        opts.overrides = path_overrides(opts.overrides)  # dataset.root=~/pets
    return opts


def is_override(arg: str) -> bool:
    """True for a Hydra override (`key=value`, `+key=value`, `~key`), False for anything else."""
    return bool(_OVERRIDE.match(arg))


def override_key(arg: str) -> str:
    """The key of an override, without `+`/`~` prefixes ('' if `arg` is none)."""
    match = _OVERRIDE.match(arg)
    return (match.group(2) or arg.lstrip("~")) if match else ""


def config_overrides(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """(overrides, others): a `KEY=VALUE` whose KEY is a config key is an override."""
    overrides, others = [], []
    for item in items:
        match = _KEY_VALUE.match(item)
        (overrides if match and is_config_key(match.group(1)) else others).append(item)
    return overrides, others


def _same_key(key: str, other: str) -> bool:
    """`device=cpu` picks the device group; `device.name=cpu` sets the same thing."""
    return other in (key, f"{key}.name")


def flag_overrides(
    parser: CommandParser, overrides: Sequence[str], flags: dict[str, Any]
) -> list[str]:
    """`overrides` plus each given flag (config key -> value) as `key=value`.

    A key given both ways (`device=cpu --device cuda`) is an error, not a silent pick.
    """
    out = list(overrides)
    for key, value in flags.items():
        if value is None:
            continue
        twice = [o for o in overrides if _same_key(key, override_key(o))]
        if twice:
            flag = "--" + key.removeprefix("eval_").replace("_", "-")
            parser.error(f"{twice[0]} and {flag} {value} both set {key}: give it once")
        out.append(f"{key}={value}")
    return out


def override_value(overrides: Sequence[str], key: str) -> tuple[str | None, list[str]]:
    """Take `key=value` (or `key.name=value`) out of `overrides`: (last value, the others)."""
    value, rest = None, []
    for arg in overrides:
        if _same_key(key, override_key(arg)) and not arg.startswith("~"):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return value, rest


def run_dir_arg(parser: CommandParser, value: str) -> Path:
    """RUN_DIR, the first positional; a missing `key=value` there means RUN_DIR was left out."""
    path = Path(value).expanduser()
    if not path.exists() and is_override(value):
        parser.error(f"missing RUN_DIR ({value!r} is an override, not a directory)")
    return path


def check_train_args(args: Sequence[str]) -> None:
    """`cnnbench train --epochs 3` and `+epochs=3`: one error line naming the override to use."""
    with user_errors(exit_code=2):
        for i, arg in enumerate(args):
            if arg.startswith("--"):
                _check_train_flag(arg, args[i + 1] if i + 1 < len(args) else "")
            elif arg.startswith("+") and not arg.startswith("++"):
                key = override_key(arg)
                if key and is_config_key(key):
                    raise CnnbenchError(
                        f"{key} is already a config key: drop the '+' and use {arg[1:]} "
                        "('+' adds a key the config does not have)"
                    )


def _check_train_flag(arg: str, following: str) -> None:
    """`--epochs 3` / `--batch-size=8` spell a config key as a flag: name the override."""
    name, eq, value = arg[2:].partition("=")
    key = name.replace("-", "_")
    if key and is_config_key(key):
        if not eq:
            value = following if following and not following.startswith("-") else "VALUE"
        raise CnnbenchError(f"use {key}={value} (cnnbench train takes Hydra overrides key=value)")
