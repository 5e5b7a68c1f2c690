"""cnnbench show: a 5x5 grid of augmented training samples with their class names (PNG).

    cnnbench show dataset=cifar10 transforms=cifar
    cnnbench show dataset=folder dataset.root=~/pets transforms=rrc224 --out pets.png
    cnnbench show dataset=cifar10 --out grids/    # grids/samples_cifar10_basic.png
    cnnbench show dataset=cifar10 transforms=cifar_strong --ops   # each op of the policy

The samples go through the train pipeline of the transforms preset, exactly as the model
sees them (then un-normalized for display); with MixUp/CutMix each title names the two
classes mixed and their shares. `--ops` draws one image through every op of the
transforms.auto_augment policy at the magnitudes the policy uses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..data import BatchTransform, TensorLoader, build_transforms
from ..data.autoaugment import OPS, OpTable, apply_ops, auto_augment_policies
from ..data.transforms import resolve_stats
from ..errors import user_errors
from .args import add_overrides, command_parser, parse_command
from .stats import load_for_command

USAGE = "cnnbench show [dataset=NAME] [transforms=NAME] [overrides...] [--out PATH]"
DESCRIPTION = """
Save a 5x5 grid of augmented training samples, titled with their class names, as a PNG and
print its path. The samples go through the train pipeline of the transforms preset, exactly
as the model sees them (then un-normalized for display). With --ops: a grid of one image
through each op of the auto-augment policy (transforms.auto_augment) at its magnitudes.
"""
EXAMPLES = (
    "cnnbench show dataset=cifar10 transforms=cifar",
    "cnnbench show dataset=folder dataset.root=~/pets transforms=rrc224 --out pets.png",
    "cnnbench show dataset=cifar10 transforms=cifar_strong --ops",
)


def output_path(out: str | None, default_name: str) -> Path:
    """--out PATH as given; a directory (existing, or written with a trailing /) gets the
    default file name inside it; no --out: the default name in the working directory."""
    if out is None:
        return Path(default_name)
    path = Path(out).expanduser()
    return path / default_name if path.is_dir() or out.endswith(("/", os.sep)) else path


def sample_grid(
    images: torch.Tensor | Sequence[torch.Tensor | None],
    titles: list[str],
    path: Path,
    rows: int = 5,
    cols: int = 5,
) -> None:
    """Save float images in [0, 1] (C x H x W each; None: an empty cell) as a titled grid PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.0, rows * 2.2), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(images) or images[k] is None:
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


def label_titles(y: torch.Tensor, classes: list[str]) -> list[str]:
    """Class names; for soft targets (MixUp/CutMix) the two largest shares, 'cat 62% dog 38%'."""
    if y.ndim == 1:
        return [classes[i] for i in y.tolist()]
    shares, top = y.topk(min(2, y.shape[1]), dim=1)
    return [
        " ".join(f"{classes[c]} {p:.0%}" for p, c in zip(ps, cs, strict=True) if p > 0)
        for ps, cs in zip(shares.tolist(), top.tolist(), strict=True)
    ]


def policy_magnitudes(tcfg, op: str, table: OpTable, signed: bool) -> list[float]:
    """The magnitudes of `op` a policy uses, at most 6: TrivialAugmentWide's bins spread from
    weak to strong, RandAugment's bin, the bins of AutoAugment's sub-policies; +/- if signed."""
    policy = tcfg.auto_augment.value
    row = table.magnitudes[table.row(op)]
    if not row.any():
        return [0.0]
    if policy == "trivial":  # 31 bins
        bins = [10, 20, 30] if signed else [0, 6, 12, 18, 24, 30]
    elif policy == "rand":
        bins = [tcfg.rand_magnitude]
    else:
        used = {b for pair in auto_augment_policies(policy) for name, _, b in pair if name == op}
        bins = sorted(used)[:3] if signed else sorted(used)[:6]
    values = [float(row[b]) for b in bins]
    return [-v for v in reversed(values)] + values if signed else values


def ops_grid(image: torch.Tensor, tcfg, path: Path) -> None:
    """`image` (uint8 C x H x W) through each op of the policy, a row per op: the original,
    then the op at each magnitude `policy_magnitudes` lists."""
    from ..errors import CnnbenchError

    policy = tcfg.auto_augment.value
    if policy == "none":
        raise CnnbenchError(
            "--ops draws the ops of transforms.auto_augment, which is none: pick a policy, e.g. "
            "transforms=cifar_strong or transforms.auto_augment=trivial"
        )
    h, w = image.shape[-2:]
    table = OpTable.build(policy, 31 if policy in ("trivial", "rand") else 10, h, w)
    used = None
    if policy not in ("trivial", "rand"):  # AutoAugment: the ops its sub-policies name
        used = {name for pair in auto_augment_policies(policy) for name, _, _ in pair}
    cells, titles, cols = [], [], 7
    for op, signed in zip(table.ops.tolist(), table.signed.tolist(), strict=True):
        if used is not None and OPS[op] not in used:
            continue
        values = policy_magnitudes(tcfg, OPS[op], table, signed)
        batch = image.expand(len(values), *image.shape)
        out = apply_ops(batch, torch.full((len(values),), op), torch.tensor(values).double())
        blank = cols - 1 - len(values)
        cells += [image.float() / 255, *(img.float() / 255 for img in out)] + [None] * blank
        has_magnitude = bool(table.magnitudes[table.row(OPS[op])].any())
        named = [f"{OPS[op]} {v:.3g}" if has_magnitude else OPS[op] for v in values]
        titles += ["original", *named] + [""] * blank
    sample_grid(cells, titles, path, rows=len(cells) // cols, cols=cols)


def run_cli(args: list[str]) -> None:
    """`cnnbench show [overrides...] [--out PATH] [--ops]`: save the grid, print its path."""
    parser = command_parser("show", USAGE, DESCRIPTION, EXAMPLES)
    add_overrides(parser, "overrides as `cnnbench train` takes them (dataset=NAME, ...)")
    parser.add_argument(
        "--out",
        metavar="PATH",
        help="PNG file, or a DIR to write the default name into "
        "(default samples_DATASET_TRANSFORMS.png, ops_DATASET_TRANSFORMS.png with --ops)",
    )
    parser.add_argument(
        "--ops",
        action="store_true",
        help="one image through each op of the auto-augment policy, at its magnitudes",
    )
    opts = parse_command(parser, args)
    with user_errors():
        cfg, data = load_for_command(opts.overrides)
        channels = data.input_size[0]
        train_tf, _ = build_transforms(
            cfg.transforms, data.train_stats, channels, len(data.classes)
        )
        mean, std = resolve_stats(cfg.transforms, data.train_stats, channels)
        n = min(25, len(data.train))
        pick = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(cfg.seed))
        subset = data.train.subset(pick[:n].sort().values)
        kind = "ops" if opts.ops else "samples"
        path = output_path(opts.out, f"{kind}_{cfg.dataset.name}_{cfg.transforms.name}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        if opts.ops:  # the first sample as stored: uint8 through a pipeline that only scales
            as_is = BatchTransform(train=False, mean=[0.0] * channels, std=[1 / 255] * channels)
            (image, _), *_ = TensorLoader(subset, 1, as_is, torch.device("cpu"), shuffle=False)
            ops_grid(image[0].round().to(torch.uint8), cfg.transforms, path)
            print(path.resolve())
            return
        loader = TensorLoader(
            subset, n, train_tf, torch.device("cpu"), shuffle=False, seed=cfg.seed
        )
        x, y = next(iter(loader))
        shown = x * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
        sample_grid(shown.clamp(0, 1), label_titles(y, data.classes), path)
        print(path.resolve())
