"""`cnnbench <command> ...`: dispatch to the commands."""

from __future__ import annotations

import sys

USAGE = """usage: cnnbench <command> [args...]

commands:
  train [overrides...]   train a model (Hydra overrides; -m for a sweep; --help for options)

examples:
  cnnbench train
  cnnbench train model=alexnet_cifar dataset=cifar10 transforms=cifar epochs=10
  cnnbench train -m optimizer.lr=1e-3,1e-4 model=lenet5,alexnet_cifar
"""


def _hydra_command(prog: str, module_main, args: list[str]) -> None:
    # Hydra's @main reads sys.argv; present the rest of the command line as its own.
    sys.argv = [prog, *args]
    module_main()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        raise SystemExit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command == "train":
        from . import train
        from .config import compose_checked
        from .errors import user_errors

        if not any(a.startswith("-") for a in rest):  # plain run: check overrides up front
            with user_errors():
                compose_checked(rest)
        _hydra_command("cnnbench train", train.main, rest)
        return
    print(f"error: unknown command {command!r}\n\n{USAGE}", file=sys.stderr, end="")
    raise SystemExit(2)


if __name__ == "__main__":
    main()
