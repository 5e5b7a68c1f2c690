"""cnnbench predict: classify image files and folders with a run's best weights.

    cnnbench predict outputs/2026-11-23/12-00-00 cat.jpg photos/ [--out DIR]

Each image is loaded with PIL, converted to the model's channels (RGB or L), resized to its
input size and normalized with the run's statistics (stored in best.pt). Writes
predictions.csv (path, predicted label, its probability, top-5) and predictions.png (a grid
of the images with their labels) to RUN_DIR/predict or --out DIR. Unreadable files are
listed on screen and in skipped.csv; they do not stop the others.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..checkpoint import atomic_write_text
from ..config import DeviceConfig, DeviceName
from ..data.transforms import BatchTransform
from ..device import resolve_device
from ..errors import CnnbenchError, user_errors
from ..export import OnnxClassifier, is_exported_file
from ..plots import write_image_grid
from ..runs import compose_saved
from .eval import load_best, model_from_checkpoint, rebuild_data

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


def find_images(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files to classify (folders searched recursively for image suffixes) and missing paths."""
    files: list[Path] = []
    missing: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                missing.append((path, "folder holds no image files"))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            missing.append((path, "no such file or directory"))
    return files, missing


def load_image(path: Path, mode: str) -> Any:
    """The image at `path` in PIL `mode` ('RGB' or 'L'); raises OSError/ValueError if unreadable."""
    with Image.open(path) as img:
        img.load()
        if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:  # onto white
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert(mode)
        return img.convert(mode)


def normalization(run_dir: Path, ckpt: dict[str, Any]) -> tuple[list, list]:
    """Mean/std the run normalized with: from best.pt, else recomputed from the saved config."""
    if ckpt.get("mean") is not None and ckpt.get("std") is not None:
        return list(ckpt["mean"]), list(ckpt["std"])
    log.info("best.pt has no normalization statistics (an older run): recomputing them")
    _, eval_tf = rebuild_data(compose_saved(run_dir))
    return eval_tf.mean, eval_tf.std


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
        classes = list(ckpt["classes"])
        mean, std = normalization(run_dir, ckpt)
        model = model_from_checkpoint(ckpt, device)
    transform = BatchTransform(train=False, mean=mean, std=std)
    mode = "L" if channels == 1 else "RGB"
    k = min(5, len(classes))

    files, skipped = find_images([Path(p) for p in paths])
    rows: list[dict[str, Any]] = []
    thumbs, titles = [], []
    for batch in _batches(files, batch_size):
        tensors, kept = [], []
        for path in batch:
            try:
                img = load_image(path, mode)
            except Exception as err:  # PIL raises OSError, ValueError, DecompressionBombError...
                skipped.append((path, f"{err.__class__.__name__}: {err}".splitlines()[0]))
                continue
            resized = img.resize((width, height), resample=Image.Resampling.BILINEAR)
            arr = np.asarray(resized, dtype=np.uint8).reshape(height, width, channels)
            tensors.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
            kept.append(path)
            if len(thumbs) < grid_max:
                img.thumbnail((128, 128))
                thumbs.append(img)
        if not kept:
            continue
        probs = model(transform(torch.stack(tensors).to(device))).float().softmax(dim=1).cpu()
        top_p, top_i = probs.topk(k, dim=1)
        for path, p_row, i_row in zip(kept, top_p.tolist(), top_i.tolist(), strict=True):
            rows.append(
                dict(
                    path=str(path),
                    label=classes[i_row[0]],
                    probability=p_row[0],
                    top5=";".join(
                        f"{classes[i]}:{p:.4f}" for i, p in zip(i_row, p_row, strict=True)
                    ),
                )
            )
            if len(titles) < len(thumbs):
                name = path.name if len(path.name) <= 20 else path.name[:19] + "…"
                titles.append(f"{name}\n{classes[i_row[0]]} ({p_row[0]:.0%})")

    out_dir = Path(out_dir) if out_dir else run_dir / "predict"
    out_dir.mkdir(parents=True, exist_ok=True)
    if skipped:
        atomic_write_text(
            out_dir / "skipped.csv",
            _csv(["path", "reason"], [dict(path=str(p), reason=r) for p, r in skipped]),
        )
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


def run_cli(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="cnnbench predict",
        description="Classify image files and folders with RUN_DIR/best.pt.",
    )
    parser.add_argument("run_dir", type=Path, help="a run dir (outputs/DATE/TIME)")
    parser.add_argument("paths", nargs="+", type=Path, help="image files and/or folders")
    parser.add_argument("--out", type=Path, help="output dir (default RUN_DIR/predict)")
    parser.add_argument("--device", default="auto", choices=[d.value for d in DeviceName])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--grid-max", type=int, default=64, help="images in the PNG grid")
    opts = parser.parse_args(args)
    with user_errors():
        if opts.batch_size < 1 or opts.grid_max < 0:
            raise CnnbenchError("--batch-size must be >= 1 and --grid-max >= 0")
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
