"""`cnnbench models [--all]`: the models with their parameters, native input size and source.

Read from the model catalog (`models/catalog.py`), so listing imports no torch. Parameters
are for each model's default classes and input channels (SPEC.md's table for the zoo),
counted on the meta device when the catalog was generated.
"""

from __future__ import annotations

import sys

from ..models.catalog import ENTRIES, ModelEntry, zoo_entries
from .args import command_parser, parse_command

USAGE = "cnnbench models [--all] [--markdown]"
DESCRIPTION = """
List the model zoo: name, parameters (for its default classes), native input size
(channels x height x width), default classes and the seed it comes from. --all adds every
classifier of torchvision.models (ImageNet top-1 of its published weights as the source).
Train one with `cnnbench train model=NAME` (a folder of images is resized to the model's
native size unless dataset.image_size or transforms.resize say otherwise); see its layers with
`cnnbench summary model=NAME`; estimate a run with `cnnbench plan model=NAME ...`.
"""
EXAMPLES = (
    "cnnbench models",
    "cnnbench models --all",
    "cnnbench models --markdown   # the table of README.md",
)

COLUMNS = ("name", "params", "input", "classes", "source")
TIMM_NOTE = (
    "model=timm model.arch=NAME: any of timm's architectures (pip install 'cnnbench[timm]'; "
    'python -c "import timm; print(timm.list_models())")\n'
)


def entry_row(entry: ModelEntry) -> dict[str, str]:
    """One row of display strings."""
    return dict(
        name=entry.name,
        params=f"{entry.params:,}",
        input="x".join(map(str, entry.input_size)),
        classes=str(entry.num_classes),
        source=entry.source,
    )


def zoo_rows(every: bool = False) -> list[dict[str, str]]:
    """Rows of the zoo (registration order), or with `every` of the whole catalog."""
    return [entry_row(entry) for entry in (ENTRIES if every else zoo_entries())]


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
    """`cnnbench models [--all] [--markdown]`."""
    parser = command_parser("models", USAGE, DESCRIPTION, EXAMPLES)
    parser.add_argument(
        "--all", action="store_true", help="every model: the zoo and torchvision's classifiers"
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    opts = parse_command(parser, args)
    text = format_table(zoo_rows(opts.all), markdown=opts.markdown)
    sys.stdout.write(text + ("\n" + TIMM_NOTE if opts.all else ""))
