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

from ..averaging import with_tta
from ..checkpoint import atomic_write_text
from ..data import ImageFiles, ImageTensors, MappedImages
from ..data.images import decode_file
from ..device import autocast_for, resolve_device, resolve_precision
from ..distributed import Distributed
from ..engine import evaluate
from ..errors import CnnbenchError, user_errors
from ..metrics import write_json
from ..plots import run_label, write_confusion_matrix
from ..report_metrics import top1_report
from ..runs import compose_saved, split_override
from ..train import Data, build_data, eval_loader, load_best, model_from_checkpoint
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
and eval transform (and its test-time augmentation; tta=flip or tta=none to change it); prints loss, top-1, top-5 and per-class accuracy and writes
metrics.json, per_class.csv and confusion_matrix.png to RUN_DIR/eval (or --out DIR).
Overrides change the saved config, e.g. device=cpu, eval_batch_size=256, dataset.root=PATH.
"""
EXAMPLES = (
    "cnnbench eval outputs/2026-11-23/12-00-00",
    "cnnbench eval outputs/2026-11-23/12-00-00 split=val --device cpu --out /tmp/val-eval",
)


def rebuild_data(cfg: Any) -> Data:
    """The splits and pipelines exactly as `cnnbench train` built them from `cfg`."""
    return build_data(cfg, progress=cfg.progress)


# Above this many classes no classes x classes matrix is made (20,000 classes: 3.2 GB);
# the per-class figures and the top confusions need none.
MAX_MATRIX_CLASSES = 1000


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, n: int) -> torch.Tensor:
    """n x n counts: rows are true classes, columns predicted classes."""
    return torch.bincount(labels * n + predicted, minlength=n * n).view(n, n)


def per_class_rows(
    labels: torch.Tensor, predicted: torch.Tensor, classes: list[str], report: dict[str, Any]
) -> list[dict[str, Any]]:
    """support, correct, accuracy (= recall), precision and F1 per class."""
    n = len(classes)
    support = torch.bincount(labels, minlength=n)
    correct = torch.bincount(labels[labels == predicted], minlength=n)
    hits = torch.bincount(predicted, minlength=n)
    rows = []
    for i, name in enumerate(classes):
        s, p, c = int(support[i]), int(hits[i]), int(correct[i])
        scores = report["per_class"][i]
        rows.append(
            dict(
                class_name=name,
                support=s,
                correct=c,
                accuracy=c / s if s else None,
                precision=c / p if p else None,
                f1=scores["f1"] if s or p else None,
            )
        )
    return rows


class Top1:
    """A forward hook keeping each image's top-1 class and its probability (not N x classes)."""

    def __init__(self) -> None:
        self.classes: list[torch.Tensor] = []
        self.confidence: list[torch.Tensor] = []

    def __call__(self, _module: nn.Module, _inputs: Any, logits: torch.Tensor) -> None:
        top = logits.detach().float().softmax(dim=1).max(dim=1)
        self.classes.append(top.indices.cpu())
        self.confidence.append(top.values.cpu())


def split_images(split: Any) -> Any:
    """The uint8 images of a split: the tensor in memory (or the mapped rows), or decoded on
    demand (streamed)."""
    if isinstance(split, (ImageTensors, MappedImages)):
        return split.images
    return _DecodedFiles(split)


class _DecodedFiles:
    """images[indices] of a streamed split, decoded as training decodes them."""

    def __init__(self, split: ImageFiles) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: list[int]) -> torch.Tensor:
        paths = self.split.paths()
        return torch.stack([decode_file(paths[i], self.split.size) for i in index])


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

    # ---- model (under the run's tta, or tta=...); a forward hook records each image's top-1
    # class and probability
    model = model_from_checkpoint(ckpt, device)
    if cfg.device.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = with_tta(model, cfg.tta)
    top1 = Top1()
    hook = model.register_forward_hook(top1)
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
    out_dir = Path(out_dir) if out_dir else run_dir / "eval"
    labels, predicted = images.labels, torch.cat(top1.classes)
    report = top1_report(
        labels,
        predicted,
        torch.cat(top1.confidence),
        classes,
        split_images(images),
        out_dir=out_dir,
    )
    per_class = per_class_rows(labels, predicted, classes, report)
    small = len(classes) <= MAX_MATRIX_CLASSES
    matrix = confusion_matrix(labels, predicted, len(classes)).tolist() if small else None

    metrics = dict(
        run_dir=str(run_dir),
        split=split,
        tta=getattr(cfg.tta, "value", cfg.tta),
        checkpoint_epoch=ckpt.get("epoch"),
        images=result.images,
        loss=result.loss,
        top1=result.top1,
        top5=result.top5,
        per_class_accuracy={r["class_name"]: r["accuracy"] for r in per_class},
        classes=classes,
        confusion_matrix=matrix,  # None above MAX_MATRIX_CLASSES classes
        report={k: v for k, v in report.items() if k != "per_class"},
    )
    write_json(out_dir / "metrics.json", metrics)
    atomic_write_text(out_dir / "per_class.csv", _per_class_csv(per_class))
    if matrix is not None:
        title = (
            f"{run_label(run_dir)}: {split}, top-1 {result.top1:.4f} (epoch {ckpt.get('epoch')})"
        )
        write_confusion_matrix(out_dir / "confusion_matrix.png", matrix, classes, title)
    metrics["out_dir"] = str(out_dir)
    metrics["per_class"] = per_class
    return metrics


def _per_class_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    fields = ["class_name", "support", "correct", "accuracy", "precision", "f1"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in fields})
    return buf.getvalue()


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_report(m: dict[str, Any]) -> str:
    """The console report: totals, the per-class table, averages, calibration, confusions."""
    report = m["report"]
    width = max(len("weighted avg"), *(len(r["class_name"]) for r in m["per_class"]))
    top5 = f"  top-5 {m['top5']:.4f}" if len(m["classes"]) > 5 else ""
    lines = [
        f"{m['split']} split of {m['run_dir']} (best.pt from epoch {m['checkpoint_epoch']}, "
        f"{m['images']} images{', tta=flip' if m['tta'] == 'flip' else ''})",
        f"loss {m['loss']:.4f}  top-1 {m['top1']:.4f}{top5}",
        "",
        f"{'class':<{width}}  support  recall  precision      f1",
    ]
    for r in m["per_class"]:
        cells = f"{_cell(r['accuracy']):>6}  {_cell(r['precision']):>9}  {_cell(r['f1']):>6}"
        lines.append(f"{r['class_name']:<{width}}  {r['support']:>7}  {cells}")
    for name in ("macro_avg", "weighted_avg"):
        avg = report[name]
        cells = f"{avg['recall']:>6.4f}  {avg['precision']:>9.4f}  {avg['f1']:>6.4f}"
        lines.append(f"{name.replace('_', ' '):<{width}}  {avg['support']:>7}  {cells}")
    cal = report["calibration"]
    lines += ["", f"calibration: ECE {cal['ece']:.4f} ({cal['n_bins']} bins), mean confidence "
              f"{cal['mean_confidence']:.4f}"]  # fmt: skip
    confusions = report["top_confusions"][:5]
    if confusions:
        pairs = ", ".join(f"{c['true']} -> {c['predicted']} ({c['count']})" for c in confusions)
        lines.append(f"most frequent confusions: {pairs}")
    files = ["metrics.json", "per_class.csv"] + (
        ["confusion_matrix.png"] if m["confusion_matrix"] is not None else []
    )
    files += [Path(f).name for f in report["files"].values() if f]
    lines += ["", f"wrote {', '.join(files)} to {m['out_dir']}"]
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
