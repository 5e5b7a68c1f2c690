"""`cnnbench models`: every registered model with its parameters, native input size and source.

The table is cnnbench/zoo.py's (printed without importing torch: under 1 s); `registry_rows`
computes the same rows from the registry (parameters counted on the meta device, so even the
VGGs allocate no weights), and a test keeps the two equal.
"""

from __future__ import annotations

import sys

from ..zoo import ZOO
from .args import command_parser, parse_command

USAGE = "cnnbench models [--markdown]"
DESCRIPTION = """
List every registered model: name, parameters (for its default classes), native input size
(channels x height x width), default classes and the seed it comes from.
Train one with `cnnbench train model=NAME`; see its layers with `cnnbench summary model=NAME`.
"""
EXAMPLES = ("cnnbench models", "cnnbench models --markdown   # the table of README.md")

COLUMNS = ("name", "params", "input", "classes", "source")


def display_row(name: str, params: int, input_size: tuple, classes: int, source: str) -> dict:
    """One table row as display strings."""
    size = "x".join(map(str, input_size))
    return dict(name=name, params=f"{params:,}", input=size, classes=str(classes), source=source)


def zoo_rows() -> list[dict[str, str]]:
    """One row of display strings per zoo model (cnnbench/zoo.py), in registration order."""
    return [display_row(*model) for model in ZOO]


def registry_rows() -> list[dict[str, str]]:
    """The same rows computed from the model registry (imports torch, builds each model)."""
    import torch

    from ..models import count_params, create_model, registered_models

    rows = []
    for info in registered_models():
        with torch.device("meta"):
            params = count_params(create_model(info.name))
        rows.append(display_row(info.name, params, info.input_size, info.num_classes, info.source))
    return rows


def format_table(rows: list[dict[str, str]], markdown: bool = False) -> str:
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for row in rows:
            cells = [f"`{row['name']}`", *(row[c] for c in COLUMNS[1:])]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in COLUMNS}
    right = {"params", "classes"}  # numbers align right

    def line(cells: dict[str, str]) -> str:
        return "  ".join(
            cells[c].rjust(widths[c]) if c in right else cells[c].ljust(widths[c]) for c in COLUMNS
        ).rstrip()

    return "\n".join([line({c: c for c in COLUMNS}), *map(line, rows)]) + "\n"


def run_cli(args: list[str]) -> None:
    """`cnnbench models [--markdown]`."""
    parser = command_parser("models", USAGE, DESCRIPTION, EXAMPLES)
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    opts = parse_command(parser, args)
    sys.stdout.write(format_table(zoo_rows(), markdown=opts.markdown))
