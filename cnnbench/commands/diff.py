"""cnnbench diff: what differs between runs, and what it changed.

    cnnbench diff outputs/2026-11-23/12-00-00 outputs/2026-11-23/12-30-00 [--out DIR]

Prints the config keys whose values differ (the saved `.hydra/config.yaml` of each run,
flattened to dotted keys; `resume` is left out), the final and best metrics side by side
(metrics.csv, results.json) and writes diff.png, the runs' loss and accuracy curves overlaid.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import CnnbenchError, user_errors
from ..flatconfig import flat_config
from ..metrics import read_metrics_csv
from ..plots import write_runs_overlay
from ..runs import config_hash, saved_config

ABSENT = "(absent)"


def run_labels(runs: list[Path]) -> list[str]:
    """The shortest path tails that tell the runs apart (`12-00-00`, `2026-11-23/12-00-00`)."""
    parts = [run.resolve().parts for run in runs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(run) for run in runs]  # the same run twice


def config_differences(runs: list[Path]) -> tuple[dict[str, list[Any]], int]:
    """Keys whose values differ between the runs' saved configs -> one value per run, and
    the number of keys compared."""
    flats = [flat_config(saved_config(run)) for run in runs]
    keys = sorted(set().union(*flats))
    differ = {}
    for key in keys:
        values = [flat.get(key, ABSENT) for flat in flats]
        if any(v != values[0] for v in values[1:]):
            differ[key] = values
    return differ, len(keys)


def run_metrics(run: Path) -> dict[str, Any]:
    """Final and best figures of a run (None where the run has not got that far)."""
    csv_path, results_path = run / "metrics.csv", run / "results.json"
    rows = read_metrics_csv(csv_path) if csv_path.is_file() else []
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    last = rows[-1] if rows else {}
    best = min(rows, key=lambda r: r["val_loss"]) if rows else {}
    wall = results.get("wall_seconds", sum(r["seconds"] for r in rows))
    return {
        "epochs": len(rows),
        "final train_loss": last.get("train_loss"),
        "final train_acc": last.get("train_acc"),
        "final val_loss": last.get("val_loss"),
        "final val_acc": last.get("val_acc"),
        "best epoch": int(best["epoch"]) if best else None,
        "best val_loss": best.get("val_loss"),
        "val_acc at best": best.get("val_acc"),
        "test_loss": results.get("test_loss"),
        "test_top1": results.get("test_top1"),
        "test_top5": results.get("test_top5"),
        "params": results.get("params"),
        "wall_seconds": wall or None,
    }


def _show_config(value: Any) -> str:
    """A config value as written in YAML/JSON (0.001, null, [1, 2]); strings bare."""
    return value if isinstance(value, str) else json.dumps(value)


def _show(value: Any, name: str = "") -> str:
    """A metric for the table: 4 decimals (seconds: 1), big counts with thousands separators."""
    if value is None:
        return "-"
    if isinstance(value, float) and name.endswith("seconds"):
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Plain left-aligned columns, two spaces apart."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def diff_runs(runs: list[Path], out_dir: Path) -> dict[str, Any]:
    """Compare `runs`; write diff.png into `out_dir`; return what the report prints."""
    if len(runs) < 2:
        raise CnnbenchError("cnnbench diff needs two or more run dirs: cnnbench diff RUN_A RUN_B")
    for run in runs:
        if not run.is_dir():
            raise CnnbenchError(f"{run} is not a run directory (outputs/DATE/TIME)")
    letters = [chr(ord("A") + i) if i < 26 else str(i + 1) for i in range(len(runs))]
    labels = [f"{k}: {tail}" for k, tail in zip(letters, run_labels(runs), strict=True)]
    differ, compared = config_differences(runs)
    metrics = [run_metrics(run) for run in runs]
    histories = {
        label: read_metrics_csv(run / "metrics.csv") if (run / "metrics.csv").is_file() else []
        for label, run in zip(labels, runs, strict=True)
    }
    out_dir = Path(out_dir).expanduser().resolve()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CnnbenchError(f"cannot write to --out {out_dir}: {err.strerror or err}") from None
    plot = out_dir / "diff.png"
    write_runs_overlay(plot, histories)
    return dict(
        runs=[str(r) for r in runs],
        letters=letters,
        hashes=[config_hash(r) for r in runs],
        differ=differ,
        compared=compared,
        metrics=metrics,
        plot=plot,
    )


def format_diff(d: dict[str, Any]) -> str:
    """The report `cnnbench diff` prints: runs, differing keys, metrics, where diff.png is."""
    letters = d["letters"]
    lines = ["runs:"]
    lines += table(
        ["", "run", "config hash"],
        [[k, run, h[:12]] for k, run, h in zip(letters, d["runs"], d["hashes"], strict=True)],
    )[1:]
    n = len(d["differ"])
    lines += ["", f"config: {n} of {d['compared']} keys differ" + (":" if n else " (same config)")]
    if n:
        rows = [[key, *map(_show_config, values)] for key, values in d["differ"].items()]
        lines += table(["key", *letters], rows)
    lines += [""]
    rows = [[name, *(_show(m[name], name) for m in d["metrics"])] for name in d["metrics"][0]]
    lines += table(["metric", *letters], rows)
    lines += ["", f"wrote {d['plot']} (loss and accuracy curves of the runs, overlaid)"]
    return "\n".join(lines)


def run_cli(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="cnnbench diff",
        description=(
            "Compare runs: the config keys that differ (resume ignored), the final and best "
            "metrics side by side, and diff.png with their curves overlaid."
        ),
    )
    parser.add_argument("runs", nargs="+", type=Path, help="two or more run dirs")
    parser.add_argument(
        "--out", type=Path, default=Path("."), help="where to write diff.png (default: here)"
    )
    opts = parser.parse_args(args)
    with user_errors():
        result = diff_runs(opts.runs, opts.out)
    print(format_diff(result))
