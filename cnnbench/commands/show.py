"""cnnbench show: a 5x5 grid of augmented training samples with their class names (PNG).

    cnnbench show dataset=cifar10 transforms=cifar
    cnnbench show dataset=folder dataset.root=~/pets transforms=rrc224 --out pets.png
    cnnbench show dataset=cifar10 --out grids/    # grids/samples_cifar10_basic.png

The samples go through the train pipeline of the transforms preset, exactly as the model
sees them (then un-normalized for display).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..data import TensorLoader, build_transforms
from ..data.transforms import resolve_stats
from ..errors import user_errors
from .args import add_overrides, command_parser, parse_command
from .stats import load_for_command

USAGE = "cnnbench show [dataset=NAME] [transforms=NAME] [overrides...] [--out PATH]"
DESCRIPTION = """
Save a 5x5 grid of augmented training samples, titled with their class names, as a PNG and
print its path. The samples go through the train pipeline of the transforms preset, exactly
as the model sees them (then un-normalized for display).
"""
EXAMPLES = (
    "cnnbench show dataset=cifar10 transforms=cifar",
    "cnnbench show dataset=folder dataset.root=~/pets transforms=rrc224 --out pets.png",
)


def output_path(out: str | None, default_name: str) -> Path:
    """--out PATH as given; a directory (existing, or written with a trailing /) gets the
    default file name inside it; no --out: the default name in the working directory."""
    if out is None:
        return Path(default_name)
    path = Path(out).expanduser()
    return path / default_name if path.is_dir() or out.endswith(("/", os.sep)) else path


def sample_grid(
    images: torch.Tensor, titles: list[str], path: Path, rows: int = 5, cols: int = 5
) -> None:
    """Save float images in [0, 1] (N x C x H x W) as a titled grid PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.0, rows * 2.2))
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= images.shape[0]:
            continue
        img = images[k].permute(1, 2, 0).numpy()
        if img.shape[2] == 1:
            ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(img)
        ax.set_title(titles[k], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_cli(args: list[str]) -> None:
    """`cnnbench show [overrides...] [--out PATH]`: save the grid and print its path."""
    parser = command_parser("show", USAGE, DESCRIPTION, EXAMPLES)
    add_overrides(parser, "overrides as `cnnbench train` takes them (dataset=NAME, ...)")
    parser.add_argument(
        "--out",
        metavar="PATH",
        help="PNG file, or a DIR to write the default name into "
        "(default samples_DATASET_TRANSFORMS.png)",
    )
    opts = parse_command(parser, args)
    with user_errors():
        cfg, data = load_for_command(opts.overrides)
        channels = data.input_size[0]
        train_tf, _ = build_transforms(cfg.transforms, data.train_stats, channels)
        mean, std = resolve_stats(cfg.transforms, data.train_stats, channels)
        n = min(25, len(data.train))
        pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(cfg.seed))
        subset = data.train.subset(pick[:n].sort().values)
        loader = TensorLoader(
            subset, n, train_tf, torch.device("cpu"), shuffle=False, seed=cfg.seed
        )
        x, y = next(iter(loader))
        shown = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
        titles = [data.classes[i] for i in y.tolist()]
        path = output_path(opts.out, f"samples_{cfg.dataset.name}_{cfg.transforms.name}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        sample_grid(shown.clamp(0, 1), titles, path)
        print(path.resolve())
