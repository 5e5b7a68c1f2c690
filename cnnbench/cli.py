"""`cnnbench <command> ...`: dispatch to the command modules.

Each command lives in its own module exposing `run_cli(args: list[str]) -> None`.
"""

from __future__ import annotations

import importlib
import os
import sys

from . import completion

# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "cnnbench.commands.train",
        "train a model: cnnbench train [overrides...] (-m to sweep)",
    ),
    "models": (
        "cnnbench.commands.models",
        "list the models: name, parameters, input size, source (--all: torchvision's too)",
    ),
    "plan": (
        "cnnbench.commands.plan",
        "estimate a run's time and memory: cnnbench plan [overrides...]",
    ),
    "summary": (
        "cnnbench.commands.summary",
        "a model's torchsummary table: cnnbench summary model=NAME",
    ),
    "stats": (
        "cnnbench.commands.stats",
        "train-split mean/std per channel: cnnbench stats dataset=...",
    ),
    "show": (
        "cnnbench.commands.show",
        "PNG grid of augmented train samples: cnnbench show dataset=...",
    ),
    "eval": (
        "cnnbench.commands.eval",
        "evaluate a run's best.pt: cnnbench eval RUN_DIR [split=test|val]",
    ),
    "predict": (
        "cnnbench.commands.predict",
        "classify images: cnnbench predict RUN_DIR|MODEL.onnx PATH... [--out DIR]",
    ),
    "export": (
        "cnnbench.commands.export",
        "a run as a checked ONNX/TorchScript file: cnnbench export RUN_DIR [--format F]",
    ),
    "rerun": (
        "cnnbench.commands.rerun",
        "re-run a saved config: cnnbench rerun RUN_DIR [overrides...]",
    ),
    "report": (
        "cnnbench.commands.report",
        "sweep leaderboard: cnnbench report MULTIRUN_DIR [--sort KEY]",
    ),
    "diff": (
        "cnnbench.commands.diff",
        "compare runs (config, metrics, curves): cnnbench diff RUN_A RUN_B [...]",
    ),
}

EXAMPLES = """examples:
  cnnbench train
  cnnbench train model=alexnet_cifar dataset=cifar10 transforms=cifar epochs=10
  cnnbench train -m optimizer.lr=1e-3,1e-4 model=lenet5,alexnet_cifar
  cnnbench train --help          # groups, options and every config key
  eval "$(cnnbench -sc install=bash)"   # Tab completion (zsh too; fish: -sc install=fish | source)
"""


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return (
        "usage: cnnbench <command> [args...]\n\ncommands:\n" + "\n".join(lines) + "\n\n" + EXAMPLES
    )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(), end="")
        raise SystemExit(0 if args else 2)
    if completion.requested(args):  # `cnnbench [train] -sc install=bash`, and the shell's Tab
        completion.run(args, list(COMMANDS))
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(
            f"error: unknown command {command!r}; valid commands: {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    # Before torch loads libgomp: its default busy-wait makes torch's CPU threads stall each
    # other whenever other processes share the cores (README, Performance). Users may override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .interrupt import graceful_stop  # Ctrl-C from here on: one line, exit 130, no traceback

    with graceful_stop():
        importlib.import_module(COMMANDS[command][0]).run_cli(rest)


if __name__ == "__main__":
    main()
