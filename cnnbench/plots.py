"""PNG figures of a run: learning curves, confusion matrix, prediction grid, sweep overlays.

matplotlib is imported lazily and used through its object API with the Agg canvas (no
pyplot state, no display needed); every PNG is written atomically.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write

log = logging.getLogger("cnnbench")

# CurvesWriter: a refresh is skipped while the time since the last one is under this many
# times what the last one cost, so plots take at most ~5% of a run with sub-second epochs.
_MAX_SHARE = 20.0


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path, dpi: int = 80, tight: bool = False) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    atomic_write(Path(path), lambda f: f.write(buf.getvalue()))


def run_label(run_dir: Path) -> str:
    """A run's name in figure titles: its last two path parts (`2026-11-23/12-00-00`)."""
    return "/".join(Path(run_dir).resolve().parts[-2:])


class CurvesWriter:
    """Rewrites a run's curves.png after each epoch, without slowing quick runs down.

    Always on the first and the `final` epoch; in between, skipped while epochs are so quick
    that replotting every time would cost more than ~5% of the run. A plotting failure is
    logged, never fatal to training. The figure is titled with the run dir's name.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.title = run_label(self.path.parent)
        self.ended, self.cost = -math.inf, 0.0  # when the last refresh ended, what it cost

    def refresh(self, rows: Sequence[dict[str, Any]], final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self.ended < _MAX_SHARE * self.cost:
            return
        try:
            write_curves(self.path, rows, self.title)
        except Exception as err:  # a figure must never stop a training run
            log.warning(f"could not write {self.path}: {err.__class__.__name__}: {err}")
        self.ended = time.perf_counter()
        self.cost = self.ended - now


def write_curves(path: Path, rows: Sequence[dict[str, Any]], title: str = "") -> None:
    """Train/val loss and accuracy per epoch (metrics.csv rows) as one two-panel PNG, the
    best epoch (lowest validation loss, best.pt's) marked with a dotted line."""
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    best = min(rows, key=lambda r: r["val_loss"])["epoch"]
    fig = _figure(8, 3.5)
    loss_ax, acc_ax = fig.subplots(1, 2)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.82, wspace=0.2)
    fig.suptitle(f"{title + ': ' if title else ''}best epoch {best} (best.pt)", fontsize="medium")
    for ax, key, title in ((loss_ax, "loss", "loss"), (acc_ax, "acc", "accuracy")):
        ax.axvline(int(best), color="gray", linestyle=":", label=f"best epoch {best}")
        ax.plot(epochs, [r[f"train_{key}"] for r in rows], "o-", ms=3, label="train")
        ax.plot(epochs, [r[f"val_{key}"] for r in rows], "o-", ms=3, label="val")
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def write_sweep_curves(path: Path, runs: dict[str, Sequence[dict[str, Any]]]) -> None:
    """Validation loss and accuracy per epoch of several runs, overlaid (one line per run)."""
    fig = _figure(10, 3.8)
    loss_ax, acc_ax = fig.subplots(1, 2)
    for label, rows in runs.items():
        if not rows:
            continue
        epochs = [int(r["epoch"]) for r in rows]
        loss_ax.plot(epochs, [r["val_loss"] for r in rows], "o-", ms=3, label=label)
        acc_ax.plot(epochs, [r["val_acc"] for r in rows], "o-", ms=3, label=label)
    for ax, title in ((loss_ax, "validation loss"), (acc_ax, "validation accuracy")):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    if any(runs.values()):
        acc_ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, path, dpi=100, tight=True)


def write_confusion_matrix(
    path: Path, matrix: Sequence[Sequence[int]], classes: list[str], title: str = ""
) -> None:
    """Counts (rows: true class, columns: predicted class) with class names on both axes."""
    n = len(classes)
    side = min(max(4.0, 0.5 * n + 2.0), 30.0)
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(n), labels=classes, rotation=90 if n > 10 else 45, ha="center")
    ax.set_yticks(range(n), labels=classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title, fontsize="medium")
    if n <= 30:  # counts in the cells while they stay legible
        peak = max((max(row) for row in matrix), default=0) or 1
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                color = "white" if count > peak / 2 else "black"
                ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
    _save(fig, path, dpi=100, tight=True)


def write_image_grid(
    path: Path, images: Sequence[Any], titles: Sequence[str], row_height: float = 2.2
) -> None:
    """PIL images in a grid, each with its title (the predicted label and probability).

    Rows are `row_height` inches for 2.0-inch images: 2.2 fits two title lines.
    """
    n = len(images)
    cols = min(8, max(1, math.ceil(math.sqrt(n))))
    rows = max(1, math.ceil(n / cols))
    fig = _figure(2.0 * cols, row_height * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            img = images[k]
            if img.mode == "L":
                ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(img)
            ax.set_title(titles[k], fontsize=8)
    _save(fig, path, dpi=100, tight=True)


def write_reliability_diagram(path: Path, calibration: dict[str, Any]) -> None:
    """Accuracy per confidence bin (report_metrics.calibration) against the diagonal, each
    bin's mean confidence marked, and the images per bin below.

    Bars reaching the diagonal are a calibrated model; bars below it, an overconfident one.
    """
    bins = calibration["bins"]
    width = bins[0]["upper"] - bins[0]["lower"]
    filled = [b for b in bins if b["count"]]
    fig = _figure(5.0, 6.0)
    acc_ax, count_ax = fig.subplots(2, 1, sharex=True, gridspec_kw=dict(height_ratios=[3, 1]))
    acc_ax.bar(
        [b["lower"] for b in filled],
        [b["accuracy"] for b in filled],
        width=width,
        align="edge",
        edgecolor="black",
        label="accuracy",
    )
    acc_ax.hlines(
        [b["confidence"] for b in filled],
        [b["lower"] for b in filled],
        [b["upper"] for b in filled],
        colors="tab:red",
        linewidth=2.5,
        label="mean confidence",
    )
    acc_ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    acc_ax.set_xlim(0, 1)
    acc_ax.set_ylim(0, 1)
    acc_ax.set_ylabel("accuracy")
    acc_ax.set_title(
        f"reliability diagram: ECE {calibration['ece']:.4f} ({calibration['n_bins']} bins)"
    )
    acc_ax.legend(loc="upper left", fontsize="small")
    acc_ax.grid(alpha=0.3)
    count_ax.bar(
        [b["lower"] for b in bins],
        [b["count"] for b in bins],
        width=width,
        align="edge",
        edgecolor="black",
    )
    count_ax.set_xlabel("confidence (top probability)")
    count_ax.set_ylabel("images")
    count_ax.grid(alpha=0.3)
    _save(fig, path, dpi=100, tight=True)


def write_runs_overlay(path: Path, runs: dict[str, Sequence[dict[str, Any]]]) -> None:
    """Loss and accuracy per epoch of a few runs (metrics.csv rows), overlaid: one color per
    run, validation solid, training dashed (cnnbench diff)."""
    fig = _figure(11, 4.0)
    loss_ax, acc_ax = fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for color, (label, rows) in zip(colors, runs.items(), strict=True):
        epochs = [int(r["epoch"]) for r in rows]
        for ax, key in ((loss_ax, "loss"), (acc_ax, "acc")):
            ax.plot(epochs, [r[f"val_{key}"] for r in rows], "o-", ms=3, color=color, label=label)
            ax.plot(epochs, [r[f"train_{key}"] for r in rows], "--", color=color, alpha=0.7)
    for ax, title in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(f"{title} (validation solid, training dashed)", fontsize="medium")
        ax.grid(alpha=0.3)
    if any(runs.values()):
        acc_ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    _save(fig, path, dpi=100, tight=True)
