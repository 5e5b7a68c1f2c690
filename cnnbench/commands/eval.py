"""cnnbench eval: evaluate a run's best weights on its test (or val) split.

    cnnbench eval outputs/2026-11-23/12-00-00 [split=test|val] [overrides...] [--out DIR]
    cnnbench eval outputs/2026-11-23/12-00-00 --split val --device cpu --batch-size 256

The data are rebuilt exactly as `cnnbench train` built them (same saved config, split seed,
train-split statistics and eval transform), so split=test reproduces results.json's test
figures. Writes metrics.json, per_class.csv and confusion_matrix.png to RUN_DIR/eval.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import atomic_write_text, load_checkpoint
from ..device import autocast_for, resolve_device, resolve_precision
from ..distributed import Distributed
from ..engine import evaluate
from ..errors import CnnbenchError, user_errors
from ..metrics import write_json
from ..models import create_model
from ..plots import write_confusion_matrix
from ..runs import compose_saved, split_override
from ..train import Data, build_data, eval_loader
from .args import (
    add_device_options,
    add_overrides,
    command_parser,
    flag_overrides,
    parse_command,
    run_dir_arg,
)

SPLITS = ("test", "val")
USAGE = (
    "cnnbench eval RUN_DIR [split=test|val] [overrides...] [--device NAME] [--batch-size N] "
    "[--out DIR]"
)
DESCRIPTION = """
Evaluates RUN_DIR/best.pt on the run's test split (or split=val) with the run's saved config
and eval transform; prints loss, top-1, top-5 and per-class accuracy and writes
metrics.json, per_class.csv and confusion_matrix.png to RUN_DIR/eval (or --out DIR).
Overrides change the saved config, e.g. device=cpu, eval_batch_size=256, dataset.root=PATH.
"""
EXAMPLES = (
    "cnnbench eval outputs/2026-11-23/12-00-00",
    "cnnbench eval outputs/2026-11-23/12-00-00 split=val --device cpu --out /tmp/val-eval",
)


def load_best(run_dir: Path) -> dict[str, Any]:
    """A run's best.pt, with a message that says what is missing."""
    path = Path(run_dir) / "best.pt"
    if not path.is_file():
        raise CnnbenchError(
            f"{run_dir} has no best.pt: the run did not finish an epoch (resume it with "
            f"`cnnbench train resume={run_dir}`)"
        )
    return load_checkpoint(path)


def model_from_checkpoint(ckpt: dict[str, Any], device: torch.device) -> nn.Module:
    """Rebuild the model best.pt was saved from and load its weights, in eval mode."""
    channels = int(ckpt["input_size"][0])
    model = create_model(ckpt["model_name"], int(ckpt["num_classes"]), channels)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CnnbenchError(
            f"best.pt does not fit model {ckpt['model_name']!r}: {str(err).splitlines()[0]}"
        ) from None
    return model.to(device).eval()


def rebuild_data(cfg: Any) -> Data:
    """The splits and pipelines exactly as `cnnbench train` built them from `cfg`."""
    return build_data(cfg, progress=cfg.progress)


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, n: int) -> torch.Tensor:
    """n x n counts: rows are true classes, columns predicted classes."""
    return torch.bincount(labels * n + predicted, minlength=n * n).view(n, n)


def per_class_rows(matrix: torch.Tensor, classes: list[str]) -> list[dict[str, Any]]:
    support, predicted, correct = matrix.sum(1), matrix.sum(0), matrix.diag()
    rows = []
    for i, name in enumerate(classes):
        s, p, c = int(support[i]), int(predicted[i]), int(correct[i])
        rows.append(
            dict(
                class_name=name,
                support=s,
                correct=c,
                accuracy=c / s if s else None,
                precision=c / p if p else None,
            )
        )
    return rows


def evaluate_run(
    run_dir: Path,
    split: str = "test",
    overrides: list[str] | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Evaluate `run_dir`'s best.pt on `split`; write and return metrics.json's data."""
    run_dir = Path(run_dir).expanduser().resolve()
    if split not in SPLITS:
        raise CnnbenchError(f"split={split}: valid splits are {', '.join(SPLITS)}")
    cfg = compose_saved(run_dir, overrides or [])
    ckpt = load_best(run_dir)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.device, device)

    # ---- data, exactly as train.py builds it: train-split statistics, eval transform
    data = rebuild_data(cfg)
    input_size, num_classes = list(data.input_size), data.num_classes
    if input_size != list(ckpt["input_size"]) or num_classes != ckpt["num_classes"]:
        raise CnnbenchError(
            f"the data ({'x'.join(map(str, input_size))} images, {num_classes} classes) "
            f"do not match best.pt ({'x'.join(map(str, ckpt['input_size']))}, "
            f"{ckpt['num_classes']} classes); drop the dataset/transforms overrides"
        )
    classes = list(ckpt.get("classes") or data.splits.classes)
    classes += [str(i) for i in range(len(classes), num_classes)]  # a head wider than the data
    images = getattr(data.splits, split)
    loader = eval_loader(cfg, images, data.eval_tf, device, Distributed())

    # ---- model; a forward hook records each batch's top-1 class for the confusion matrix
    model = model_from_checkpoint(ckpt, device)
    if cfg.device.channels_last:
        model = model.to(memory_format=torch.channels_last)
    predictions: list[torch.Tensor] = []
    hook = model.register_forward_hook(
        lambda _m, _i, out: predictions.append(out.detach().float().topk(1, dim=1).indices[:, 0])
    )
    try:
        result = evaluate(
            model,
            loader,
            nn.CrossEntropyLoss(),
            autocast=autocast_for(precision, device),
            progress=cfg.progress,
            desc=f"[{split}]",
        )
    finally:
        hook.remove()
    matrix = confusion_matrix(images.labels, torch.cat(predictions).cpu(), len(classes))
    per_class = per_class_rows(matrix, classes)

    metrics = dict(
        run_dir=str(run_dir),
        split=split,
        checkpoint_epoch=ckpt.get("epoch"),
        images=result.images,
        loss=result.loss,
        top1=result.top1,
        top5=result.top5,
        per_class_accuracy={r["class_name"]: r["accuracy"] for r in per_class},
        classes=classes,
        confusion_matrix=matrix.tolist(),
    )
    out_dir = Path(out_dir) if out_dir else run_dir / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    atomic_write_text(out_dir / "per_class.csv", _per_class_csv(per_class))
    write_confusion_matrix(out_dir / "confusion_matrix.png", matrix.tolist(), classes)
    metrics["out_dir"] = str(out_dir)
    metrics["per_class"] = per_class
    return metrics


def _per_class_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    fields = ["class_name", "support", "correct", "accuracy", "precision"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in fields})
    return buf.getvalue()


def format_report(m: dict[str, Any]) -> str:
    width = max(len("class"), *(len(r["class_name"]) for r in m["per_class"]))
    lines = [
        f"{m['split']} split of {m['run_dir']} (best.pt from epoch {m['checkpoint_epoch']}, "
        f"{m['images']} images)",
        f"loss {m['loss']:.4f}  top-1 {m['top1']:.4f}  top-5 {m['top5']:.4f}",
        "",
        f"{'class':<{width}}  support  accuracy  precision",
    ]
    for r in m["per_class"]:
        acc = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        prec = "-" if r["precision"] is None else f"{r['precision']:.4f}"
        lines.append(f"{r['class_name']:<{width}}  {r['support']:>7}  {acc:>8}  {prec:>9}")
    lines += ["", f"wrote metrics.json, per_class.csv, confusion_matrix.png to {m['out_dir']}"]
    return "\n".join(lines)


def parse_args(args: list[str]) -> tuple[Path, str, list[str], Path | None]:
    """(run dir, split, overrides, --out dir) from `cnnbench eval` arguments."""
    parser = command_parser("eval", USAGE, DESCRIPTION, EXAMPLES)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run dir (outputs/DATE/TIME)")
    add_overrides(parser, "split=test|val, or overrides of the saved config")
    parser.add_argument("--split", choices=SPLITS, help="same as split=test|val")
    add_device_options(parser)
    parser.add_argument("--out", type=Path, metavar="DIR", help="output dir (default RUN_DIR/eval)")
    opts = parse_command(parser, args)
    flags = dict(split=opts.split, device=opts.device, eval_batch_size=opts.batch_size)
    overrides = flag_overrides(parser, opts.overrides, flags)
    split, overrides = split_override(overrides, "split")
    return run_dir_arg(parser, opts.run_dir), split or "test", overrides, opts.out


def run_cli(args: list[str]) -> None:
    run_dir, split, overrides, out_dir = parse_args(args)
    with user_errors():
        metrics = evaluate_run(run_dir, split, overrides, out_dir)
    print(format_report(metrics), flush=True)
