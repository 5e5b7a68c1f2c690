"""cnnbench report: a leaderboard of the jobs of a sweep (or of any folder of runs).

    cnnbench report multirun/2026-11-23/12-00-00 --sort test_top1 --desc

Prints a markdown table, writes `leaderboard.csv` and `curves.png` (the jobs' validation
curves overlaid) into the directory. Jobs that differ only in `dataset.fold` (a k-fold sweep,
`-m dataset.folds=5 'dataset.fold=range(5)'`) are one row: each metric's mean ± standard
deviation over the folds (`--per-job` for one row per job).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

from ..checkpoint import atomic_write_text
from ..errors import CnnbenchError, user_errors
from ..metrics import read_metrics_csv
from ..plots import write_sweep_curves
from ..runs import SAVED_CONFIG
from ..sweep import ERROR_FILE
from .args import command_parser, parse_command

METRICS = ["params", "best_val_loss", "test_top1", "test_top5", "epochs", "wall_seconds"]
DEFAULT_SORT = "best_val_loss"
FOLD_KEY = "dataset.fold"


def _job_sort_key(path: Path) -> tuple:
    return tuple(int(p) if p.isdigit() else math.inf for p in path.parts) + (str(path),)


def find_jobs(root: Path) -> list[Path]:
    """Job directories (with a saved config) under `root`, in job-number order."""
    jobs = [p.parent.parent for p in root.glob(f"**/{SAVED_CONFIG}")]
    return sorted(jobs, key=lambda p: _job_sort_key(p.relative_to(root)))


def job_overrides(job: Path) -> dict[str, str]:
    """The command-line overrides of a job (`.hydra/overrides.yaml`) as key -> value."""
    path = job / ".hydra" / "overrides.yaml"
    items = yaml.safe_load(path.read_text()) if path.is_file() else None
    pairs = (str(item).split("=", 1) for item in items or [])
    return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}


def effective_values(job: Path, keys: list[str], given: dict[str, str]) -> dict[str, str]:
    """Each key's value for `job`: as overridden, else from its saved config (a group: the
    option's name), '' where the config has none."""
    from omegaconf import OmegaConf

    from ..config import GROUPS

    cfg = OmegaConf.load(job / SAVED_CONFIG)
    values = {}
    for key in keys:
        found = OmegaConf.select(cfg, f"{key}.name" if key in GROUPS else key, default=None)
        plain = found is not None and not OmegaConf.is_config(found)
        values[key] = given[key] if key in given else str(found) if plain else ""
    return values


def _params_from_summary(job: Path) -> int | None:
    path = job / "summary.txt"
    match = re.search(r"Total params: ([\d,]+)", path.read_text()) if path.is_file() else None
    return int(match.group(1).replace(",", "")) if match else None


def job_row(job: Path) -> dict[str, Any]:
    """One leaderboard row: status and metrics of a finished, failed or unfinished job."""
    metrics_path = job / "metrics.csv"
    history = read_metrics_csv(metrics_path) if metrics_path.is_file() else []
    row: dict[str, Any] = {key: None for key in METRICS}
    results_path, error_path = job / "results.json", job / ERROR_FILE
    if results_path.is_file():
        results = json.loads(results_path.read_text())
        row.update({key: results.get(key) for key in METRICS})
        row["status"], row["error"] = "ok", ""
    else:
        row["params"] = _params_from_summary(job)
        if history:
            row["best_val_loss"] = min(r["val_loss"] for r in history)
            row["wall_seconds"] = sum(r["seconds"] for r in history)
        row["epochs"] = len(history)
        if error_path.is_file():
            first = error_path.read_text().strip().splitlines()
            row["status"], row["error"] = "failed", first[0] if first else "(no message)"
        else:  # still running, or killed (resume it with `cnnbench train resume=JOB_DIR`)
            row["status"], row["error"] = "unfinished", ""
    row["history"] = history
    return row


def leaderboard(root: Path, sort: str = DEFAULT_SORT, desc: bool = False) -> tuple[list, list]:
    """(columns, rows) for the jobs under `root`, sorted by `sort` (missing values last)."""
    jobs = find_jobs(root)
    if not jobs:
        raise CnnbenchError(f"no runs under {root} (expected job dirs with {SAVED_CONFIG})")
    overrides = {job: job_overrides(job) for job in jobs}
    keys: list[str] = []
    for found in overrides.values():
        keys += [k for k in found if k not in keys]
    # Keys whose values differ between jobs (a job that left one at its default has the
    # default), as columns; a metric's name (epochs) is shown once, as the metric.
    values = {job: effective_values(job, keys, overrides[job]) for job in jobs}
    varying = [
        k
        for k in keys
        if len({v[k] for v in values.values()}) > 1 and k not in (*METRICS, "resume")
    ]
    rows = []
    for job in jobs:
        row = {"job": str(job.relative_to(root)) or "."}
        row.update({k: values[job][k] for k in varying})
        row.update(job_row(job))
        row["overrides"] = " ".join(f"{k}={v}" for k, v in overrides[job].items())
        rows.append(row)
    columns = ["job", *varying, *METRICS, "status", "error"]
    return columns, sort_rows(rows, columns, sort, desc)


def sort_rows(rows: list[dict], columns: list[str], sort: str, desc: bool) -> list[dict]:
    """`rows` sorted by column `sort` (numbers before text), rows without a value last."""
    if sort not in columns:
        raise CnnbenchError(f"cannot sort by {sort!r}; valid keys: {', '.join(columns)}")

    def missing(row: dict) -> bool:
        return row[sort] in (None, "") or (isinstance(row[sort], float) and math.isnan(row[sort]))

    def value(row: dict) -> tuple:
        try:
            return (0, float(row[sort]), "")
        except (TypeError, ValueError):
            return (1, 0.0, str(row[sort]))

    present = sorted((r for r in rows if not missing(r)), key=value, reverse=desc)
    return present + [r for r in rows if missing(r)]


def _job_span(jobs: list[str]) -> str:
    """'0-4' for consecutive job numbers, else '0,2,7'."""
    if all(j.isdigit() for j in jobs) and len(jobs) > 1:
        numbers = sorted(int(j) for j in jobs)
        if numbers == list(range(numbers[0], numbers[-1] + 1)):
            return f"{numbers[0]}-{numbers[-1]}"
    return ",".join(jobs)


def _mean_std(values: list[Any]) -> tuple[Any, Any]:
    """(mean, sample standard deviation) of the present values; equal values stay as they are
    (std 0), none give (None, None)."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not present:
        return None, None
    if all(v == present[0] for v in present):
        return present[0], 0.0 if isinstance(present[0], float) else 0
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return statistics.fmean(present), std


def fold_group_row(rows: list[dict], keys: list[str]) -> dict[str, Any]:
    """One row for the jobs `rows` of a k-fold sweep that differ only in dataset.fold."""
    group: dict[str, Any] = {"job": _job_span([r["job"] for r in rows])}
    group.update({k: rows[0][k] for k in keys})
    ok = [r for r in rows if r["status"] == "ok"]
    group["folds"] = f"{len(ok)}" if len(ok) == len(rows) else f"{len(ok)} of {len(rows)}"
    for metric in METRICS:
        group[metric], group[f"{metric}_std"] = _mean_std([r[metric] for r in ok])
    statuses = [r["status"] for r in rows]
    counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
    group["status"] = "ok" if ok == rows else ", ".join(f"{n} {s}" for s, n in counts.items())
    group["error"] = next((r["error"] for r in rows if r["error"]), "")
    folds = [f"{FOLD_KEY}={r[FOLD_KEY]}" for r in rows]
    group["overrides"] = " ".join(o for o in rows[0]["overrides"].split() if o not in folds)
    return group


def group_folds(columns: list[str], rows: list[dict], sort: str, desc: bool) -> tuple:
    """(columns, rows) with the jobs that differ only in dataset.fold merged: each metric's
    mean and std (columns METRIC and METRIC_std) over the folds that finished."""
    keys = [c for c in columns[1 : columns.index(METRICS[0])] if c != FOLD_KEY]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if row[FOLD_KEY] != "":
            groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    merged = [r | {"folds": ""} for r in rows if r[FOLD_KEY] == ""]  # jobs without a fold
    for group in groups.values():
        merged.append(
            fold_group_row(sorted(group, key=lambda r: _job_sort_key(Path(r["job"]))), keys)
        )
    stats = [c for m in METRICS for c in (m, f"{m}_std")]
    grouped_columns = ["job", *keys, "folds", *stats, "status", "error"]
    return grouped_columns, sort_rows(merged, grouped_columns, sort, desc)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key == "params" and isinstance(value, int):
        return f"{value:,}"
    if key == "wall_seconds" and isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    if key == "error" and len(str(value)) > 100:
        return str(value)[:99] + "…"
    return str(value)


def _cell_with_std(key: str, row: dict) -> str:
    """A cell; `mean ± std` where the row has a spread for it (a k-fold group)."""
    text, std = _cell(key, row[key]), row.get(f"{key}_std")
    if std is None or (std == 0 and isinstance(row[key], int)):
        return text  # one job, or a count all folds share (params, epochs)
    return f"{text} ± {_cell(key, std)}"


def to_markdown(
    columns: list[str], rows: list[dict], common: dict[str, str], note: str = ""
) -> str:
    lines = []
    if common:
        lines += ["common overrides: " + " ".join(f"`{k}={v}`" for k, v in common.items()), ""]
    if note:
        lines += [note, ""]
    shown = [c for c in columns if not c.endswith("_std")]
    lines.append("| " + " | ".join(shown) + " |")
    lines.append("|" + "|".join("---" for _ in shown) + "|")
    for row in rows:
        cells = [_cell_with_std(c, row).replace("|", "\\|") for c in shown]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(columns: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    fields = [*columns, "overrides"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in fields})
    return buf.getvalue()


def report(root: Path, sort: str = DEFAULT_SORT, desc: bool = False, per_job: bool = False) -> str:
    """Write leaderboard.csv and curves.png into `root`; return the markdown table.

    Jobs that differ only in dataset.fold are one row (mean ± std) unless `per_job`."""
    root = Path(root)
    if not root.is_dir():
        raise CnnbenchError(
            f"{root}: no such directory (pass a multirun dir, e.g. multirun/DATE/TIME)"
        )
    columns, rows = leaderboard(root, sort, desc)
    all_overrides = [job_overrides(root / r["job"]) for r in rows]
    common = {
        k: v for k, v in all_overrides[0].items() if all(o.get(k) == v for o in all_overrides)
    }
    varying = columns[1 : columns.index(METRICS[0])]
    label = {
        r["job"]: " ".join([f"#{r['job']}", *(f"{k}={r[k]}" for k in varying if r[k] != "")])
        for r in rows
    }
    write_sweep_curves(root / "curves.png", {label[r["job"]]: r["history"] for r in rows})
    note = ""
    if FOLD_KEY in varying and not per_job:
        columns, rows = group_folds(columns, rows, sort, desc)
        note = (
            f"jobs that differ only in {FOLD_KEY} are one row: mean ± std (sample standard "
            "deviation) over the folds that finished; --per-job for one row per job"
        )
    atomic_write_text(root / "leaderboard.csv", to_csv(columns, rows))
    return to_markdown(columns, rows, common, note)


USAGE = "cnnbench report MULTIRUN_DIR [--sort KEY] [--desc] [--per-job]"
DESCRIPTION = """
Leaderboard of a sweep (or of any folder of runs): a markdown table on stdout, and
leaderboard.csv and curves.png (the jobs' validation curves overlaid) in MULTIRUN_DIR.
Jobs that differ only in dataset.fold (k-fold) are one row: mean ± std over the folds.
"""
EXAMPLES = (
    "cnnbench report multirun/2026-11-23/12-00-00",
    "cnnbench report multirun/2026-11-23/12-00-00 --sort test_top1 --desc",
)


def run_cli(args: list[str]) -> None:
    parser = command_parser("report", USAGE, DESCRIPTION, EXAMPLES)
    parser.add_argument(
        "multirun_dir",
        type=Path,
        metavar="MULTIRUN_DIR",
        help="a multirun dir (multirun/DATE/TIME)",
    )
    parser.add_argument(
        "--sort",
        default=DEFAULT_SORT,
        metavar="KEY",
        help=f"column to sort by (default {DEFAULT_SORT}; a metric or a swept key)",
    )
    parser.add_argument("--desc", action="store_true", help="sort descending (best accuracy first)")
    parser.add_argument(
        "--per-job",
        action="store_true",
        help="one row per job, also for k-fold jobs (default: their mean ± std per group)",
    )
    opts = parse_command(parser, args)
    with user_errors():
        table = report(opts.multirun_dir, opts.sort, opts.desc, opts.per_job)
    print(table, end="")
    where = opts.multirun_dir
    print(f"wrote {where / 'leaderboard.csv'} and {where / 'curves.png'}", file=sys.stderr)
