"""cnnbench predict: classify image files and folders with a run's best weights.

    cnnbench predict outputs/2026-11-23/12-00-00 cat.jpg photos/ [--out DIR]
    cnnbench predict outputs/2026-11-23/12-00-00 photos/ device=cpu eval_batch_size=32

Each image is decoded exactly as training decodes folder images (`data.images.decode_file`:
upright by its EXIF orientation, in the model's channels (RGB or L), 16-bit gray rescaled,
transparency onto white, resized to the model's input size), then normalized with the run's
statistics (stored in best.pt). Writes predictions.csv (path, predicted label, its
probability, top-5) and predictions.png (a grid of the images as the model saw them, with
their labels) to RUN_DIR/predict or --out DIR. Unreadable files are listed on screen and in
skipped.csv (broken links too); they do not stop the others. Names that are not UTF-8 are
written with \\xNN escapes.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..checkpoint import atomic_write_text
from ..config import DeviceConfig, DeviceName
from ..data.images import BadImage, decode_file, printable
from ..data.transforms import BatchTransform
from ..device import resolve_device
from ..errors import CnnbenchError, user_errors
from ..export import OnnxClassifier, is_exported_file
from ..plots import write_image_grid
from ..train import load_best, model_from_checkpoint, normalization
from .args import (
    DEVICES,
    CommandParser,
    add_device_options,
    command_parser,
    config_overrides,
    flag_overrides,
    override_value,
    parse_command,
    positive_int,
    run_dir_arg,
)

log = logging.getLogger("cnnbench")

IMAGE_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
    ".pbm",
}
CSV_FIELDS = ["path", "label", "probability", "top5"]


def natural_key(path: Path) -> list:
    """Sort key in natural order: img2.jpg before img10.jpg (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", str(path))
    return [(int(p), p) if p.isdigit() else (-1, p) for p in parts]


def find_images(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files to classify (folders searched recursively for image suffixes) and the paths left
    out with a reason: missing, broken links (in folders too), folders without images."""
    files: list[Path] = []
    missing: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            found, broken = [], []
            for p in sorted(path.rglob("*"), key=natural_key):
                if p.is_symlink() and not p.exists():
                    broken.append((p, f"broken link (to {os.readlink(p)})"))
                elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                    found.append(p)
            if not found and not broken:
                missing.append((path, "folder holds no image files"))
            files += found
            missing += broken
        elif path.is_file():
            files.append(path)
        elif path.is_symlink():
            missing.append((path, f"broken link (to {os.readlink(path)})"))
        else:
            missing.append((path, "no such file or directory"))
    return files, missing


def _batches(files: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(files), size):
        yield files[start : start + size]


@torch.no_grad()
def predict(
    run_dir: Path,
    paths: list[Path],
    out_dir: Path | None = None,
    device_name: str = "auto",
    batch_size: int = 64,
    grid_max: int = 64,
) -> dict[str, Any]:
    """Classify `paths`; write predictions.csv, predictions.png (and skipped.csv if any)."""
    run_dir = Path(run_dir).expanduser().resolve()
    device = resolve_device(DeviceConfig(name=DeviceName(device_name)))
    if is_exported_file(run_dir):  # `cnnbench export`'s file, run by onnxruntime (export.py)
        exported = OnnxClassifier(run_dir)
        (channels, height, width), classes = exported.input_size, exported.classes
        mean, std, model = exported.mean, exported.std, exported.torch_logits
        run_dir = run_dir.parent  # default --out: predict/ next to the .onnx file
    else:
        ckpt = load_best(run_dir)
        channels, height, width = (int(v) for v in ckpt["input_size"])
        classes = [str(c) for c in ckpt.get("classes") or range(int(ckpt["num_classes"]))]
        mean, std = normalization(run_dir, ckpt)
        model = model_from_checkpoint(ckpt, device)
    transform = BatchTransform(train=False, mean=mean, std=std)
    k = min(5, len(classes))

    files, skipped = find_images([Path(p) for p in paths])
    rows: list[dict[str, Any]] = []
    thumbs, titles = [], []
    for batch in _batches(files, batch_size):
        tensors, kept = [], []
        for path in batch:
            try:  # the decode training used: upright, same channels, size and conversions
                x = decode_file(str(path), (height, width), channels)
            except Exception as err:  # noqa: BLE001 (one odd file never stops the others)
                text = str(err) if isinstance(err, BadImage) else f"{type(err).__name__}: {err}"
                skipped.append((path, text.splitlines()[0] if text else type(err).__name__))
                continue
            tensors.append(x)
            kept.append(path)
            if len(thumbs) < grid_max:  # what the model saw
                thumb = Image.fromarray(x.permute(1, 2, 0).squeeze(2).numpy())
                thumb.thumbnail((128, 128))
                thumbs.append(thumb)
        if not kept:
            continue
        probs = model(transform(torch.stack(tensors).to(device))).float().softmax(dim=1).cpu()
        top_p, top_i = probs.topk(k, dim=1)
        for path, p_row, i_row in zip(kept, top_p.tolist(), top_i.tolist(), strict=True):
            rows.append(
                dict(
                    path=printable(str(path)),  # a non-UTF-8 name as \\xNN: writable, printable
                    label=classes[i_row[0]],
                    probability=p_row[0],
                    top5=";".join(
                        f"{classes[i]}:{p:.4f}" for i, p in zip(i_row, p_row, strict=True)
                    ),
                )
            )
            if len(titles) < len(thumbs):  # cat/0001.jpg: two 0001.jpg differ
                name = printable(f"{path.parent.name}/{path.name}")
                name = name if len(name) <= 22 else "…" + name[-21:]
                titles.append(f"{name}\n{classes[i_row[0]]} ({p_row[0]:.0%})")

    out_dir = Path(out_dir) if out_dir else run_dir / "predict"
    out_dir.mkdir(parents=True, exist_ok=True)
    if skipped:
        listed = [dict(path=printable(str(p)), reason=printable(r)) for p, r in skipped]
        atomic_write_text(out_dir / "skipped.csv", _csv(["path", "reason"], listed))
    else:
        (out_dir / "skipped.csv").unlink(missing_ok=True)  # from an earlier call
    if rows:
        atomic_write_text(out_dir / "predictions.csv", _csv(CSV_FIELDS, rows))
        write_image_grid(out_dir / "predictions.png", thumbs, titles)
    return dict(rows=rows, skipped=skipped, out_dir=out_dir, grid_images=len(thumbs))


def _csv(fields: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: f"{row[k]:.6f}" if isinstance(row[k], float) else row[k] for k in fields}
        )
    return buf.getvalue()


USAGE = (
    "cnnbench predict RUN_DIR PATH... [device=NAME] [eval_batch_size=N] [--device NAME] "
    "[--batch-size N] [--grid-max N] [--out DIR]"
)
DESCRIPTION = """
Classify image files and folders (searched recursively) with RUN_DIR/best.pt; writes
predictions.csv and predictions.png to RUN_DIR/predict (or --out DIR). An argument KEY=VALUE
whose KEY is a config key (device=cpu, device.name=cpu, eval_batch_size=32) is an override;
every other argument is an image path (write ./key=value.png for such a file name).
"""
EXAMPLES = (
    "cnnbench predict outputs/2026-11-23/12-00-00 cat.jpg photos/ --out preds",
    "cnnbench predict outputs/2026-11-23/12-00-00 photos/ device=cpu eval_batch_size=32",
)


def parse_args(args: list[str]) -> argparse.Namespace:
    """run_dir, paths, out, device, batch_size and grid_max from `cnnbench predict` arguments."""
    parser = command_parser("predict", USAGE, DESCRIPTION, EXAMPLES)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run dir (outputs/DATE/TIME)")
    parser.add_argument(
        "items",
        nargs="+",
        metavar="PATH",
        help="image files and/or folders (KEY=VALUE with a config KEY is an override)",
    )
    add_device_options(parser)
    parser.add_argument(
        "--grid-max", type=int, default=64, metavar="N", help="images in the PNG grid (default 64)"
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="output dir (default RUN_DIR/predict)"
    )
    opts = parse_command(parser, args)
    overrides, paths = config_overrides(opts.items)
    if not paths:
        parser.error("no image PATH given")
    if opts.grid_max < 0:
        parser.error(f"--grid-max must be >= 0 (got {opts.grid_max})")
    flags = dict(device=opts.device, eval_batch_size=opts.batch_size)
    device, batch_size = _device_and_batch(parser, flag_overrides(parser, overrides, flags))
    return argparse.Namespace(
        run_dir=run_dir_arg(parser, opts.run_dir),
        paths=[Path(p) for p in paths],
        out=opts.out,
        device=device,
        batch_size=batch_size,
        grid_max=opts.grid_max,
    )


def _device_and_batch(parser: CommandParser, overrides: list[str]) -> tuple[str, int]:
    """The device name and batch size the overrides ask for (default auto, 64)."""
    device, overrides = override_value(overrides, "device")
    batch, overrides = override_value(overrides, "eval_batch_size")
    if overrides:
        parser.error(
            f"{overrides[0]}: predict takes only device=NAME and eval_batch_size=N "
            "(other config keys do not change its predictions)"
        )
    if (device or "auto") not in DEVICES:
        parser.error(f"device={device}: valid devices are {', '.join(DEVICES)}")
    try:
        return device or "auto", positive_int(batch or "64")
    except argparse.ArgumentTypeError as err:
        parser.error(f"eval_batch_size={batch}: {err}")


def run_cli(args: list[str]) -> None:
    opts = parse_args(args)
    with user_errors():
        result = predict(
            opts.run_dir, opts.paths, opts.out, opts.device, opts.batch_size, opts.grid_max
        )
        rows, skipped, out = result["rows"], result["skipped"], result["out_dir"]
        if skipped:
            print(f"skipped {len(skipped)} unreadable file(s):", file=sys.stderr)
            for path, reason in skipped:
                print(f"  {path}: {reason}", file=sys.stderr)
        if not rows:
            raise CnnbenchError(
                f"no readable images among {' '.join(map(str, opts.paths))} "
                f"(the skipped files are listed in {out / 'skipped.csv'})"
            )
    for row in rows[:20]:
        print(f"{row['path']}: {row['label']} ({row['probability']:.4f})")
    if len(rows) > 20:
        print(f"... and {len(rows) - 20} more")
    print(
        f"wrote {out / 'predictions.csv'} ({len(rows)} images) and {out / 'predictions.png'}"
        + (f"; skipped files listed in {out / 'skipped.csv'}" if skipped else "")
    )
