"""`dataset=csv`: image files and their labels listed in a CSV (a spreadsheet's export).

    path,label,split                 `split` is optional: train, val (valid, validation) or test
    photos/IMG_0001.jpg,cat,train
    photos/IMG_0002.jpg,dog,test

The header names the columns (any order, any case; other columns are ignored); the
delimiter is a comma, or a semicolon or tab when the header has no comma. Paths are relative
to the CSV's folder, or to `dataset.root` when given; absolute paths are taken as they are.

Class names are the sorted unique labels; when every label is an integer they are sorted as
numbers (0, 1, 2, ..., 10), so labels 0..K-1 keep their value as the class index.

Without a `split` column the rows are one pool, split like one image folder (dataset.splits,
or test_split then val_split); with one, each row goes to its split and missing val/test
sets are carved from the train rows, like split folders.

A row that cannot be understood (no path, an empty label, an unknown split) stops the run
with one error naming its line. A listed file that does not exist is skipped and listed in
skipped_files.txt with its line (photos get deleted while the spreadsheet stays), unless
none of them exists (then the paths are wrong: one error). The same file listed twice is
taken once; under two labels it is taken by neither. The files then go through the folder
machinery (folder.load_pools): one scan, the skip list, the decode cache, memory or stream.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import CnnbenchError
from .folder import SPLIT_DIRS, Listing, Pool, PoolSet, count_skips, load_pools
from .splits import SkippedFile

log = logging.getLogger("cnnbench")

COLUMNS = ("path", "label", "split")
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass
class Row:
    line: int  # line number in the CSV (1 is the header)
    path: str
    label: str
    split: str  # 'all' without a split column, else 'train', 'val' or 'test'


def _delimiter(header: str) -> str:
    for candidate in (",", ";", "\t"):
        if candidate in header:
            return candidate
    return ","


def _columns(header: list[str], csv_path: Path) -> dict[str, int]:
    """{column: index} of path, label and (when present) split."""
    names = [h.strip().lower() for h in header]
    found = {name: names.index(name) for name in COLUMNS if name in names}
    missing = [name for name in ("path", "label") if name not in found]
    if missing:
        raise CnnbenchError(
            f"{csv_path} line 1: the header has no {' or '.join(repr(m) for m in missing)} "
            f"column (found: {', '.join(repr(h) for h in header) or 'nothing'}); dataset=csv "
            "needs a header line `path,label` (optionally `,split`), then one row per image"
        )
    return found


def _row_problem(cells: dict[str, str], has_split: bool) -> str | None:
    if not cells["path"]:
        return "no path"
    if not cells["label"]:
        return f"empty label for {cells['path']}"
    if has_split and cells["split"].lower() not in SPLIT_DIRS:
        return (
            f"unknown split value {cells['split']!r} for {cells['path']} (valid: train, val, test)"
        )
    return None


def read_rows(csv_path: Path) -> list[Row]:
    """The rows of `csv_path`; one CnnbenchError naming the first bad row's line."""
    try:
        text = csv_path.read_text(encoding="utf-8-sig")  # Excel starts with a BOM
    except UnicodeDecodeError as err:
        raise CnnbenchError(
            f"{csv_path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as CSV UTF-8"
        ) from None
    delimiter = _delimiter(text.split("\n", 1)[0])
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)  # quoted newlines too
    header = next(reader, None)
    if header is None:
        raise CnnbenchError(f"{csv_path} is empty; write a header `path,label`, then the rows")
    index = _columns(header, csv_path)
    has_split = "split" in index
    rows, bad = [], []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue  # blank line
        values = {k: cells[i].strip() if i < len(cells) else "" for k, i in index.items()}
        problem = _row_problem(values, has_split)
        if problem is not None:
            bad.append(f"line {reader.line_num}: {problem}")
            continue
        split = SPLIT_DIRS[values["split"].lower()] if has_split else "all"
        rows.append(Row(reader.line_num, values["path"], values["label"], split))
    if bad:
        n = len(bad) - 1
        more = f" (and {n} more bad row{'s' if n > 1 else ''})" if n else ""
        raise CnnbenchError(
            f"{csv_path} {bad[0]}{more}; every row needs a path, a label and (with a split "
            "column) train, val or test"
        )
    if not rows:
        raise CnnbenchError(f"{csv_path} has a header but no rows; add one row per image")
    return rows


def class_names(labels: set[str]) -> list[str]:
    """Sorted labels; as numbers when every label is an integer ('2' before '10')."""
    if all(_INTEGER.fullmatch(label) for label in labels):
        return sorted(labels, key=lambda label: (int(label), label))
    return sorted(labels)


def _check_classes(rows: list[Row], classes: list[str], csv_path: Path) -> None:
    if len(classes) < 2:
        raise CnnbenchError(
            f"{csv_path} has only one label ({classes[0]!r}): a classifier needs at least two"
        )
    splits = {r.split for r in rows}
    if "all" in splits or "train" in splits:
        trained = {r.label for r in rows if r.split in ("all", "train")}
        stray = next((r for r in rows if r.label not in trained), None)
        if stray is not None:
            raise CnnbenchError(
                f"{csv_path} line {stray.line}: label {stray.label!r} is in the {stray.split} "
                "rows but in no train row; every class needs training images"
            )
        return
    raise CnnbenchError(
        f"{csv_path} has a split column but no train rows (only "
        f"{', '.join(sorted(splits))}); mark the training images `train`"
    )


def _list_files(rows: list[Row], base: Path, csv_path: Path) -> tuple[list, list, list]:
    """([(row, (size, mtime_ns))] of the files to scan, missing files, rows left out)."""
    listing = Listing(str(base))
    found, missing = [], []
    for row in rows:
        path = str(base / Path(row.path).expanduser())
        where = f"{csv_path.name} line {row.line}"
        try:
            st = os.stat(path)
        except OSError:
            missing.append(SkippedFile(path, f"missing ({where})"))
            continue
        if not stat.S_ISREG(st.st_mode):
            missing.append(SkippedFile(path, f"not a file ({where})"))
        elif listing.claim(st, row.label, path, "file"):
            found.append((row, path, (st.st_size, st.st_mtime_ns)))
    kept = []
    for row, path, stamp in found:  # a file listed under two labels is taken by neither
        if path in listing.ambiguous:
            listing.left_out.append(SkippedFile(path, listing.ambiguous[path]))
        else:
            kept.append((row, stamp))
    return kept, missing, listing.left_out


def list_csv(cfg) -> tuple[PoolSet, list[SkippedFile]]:
    """The pools of `cfg.csv` by split ('all' without a split column), ready for the scan,
    and the rows left out (duplicates, ambiguous labels)."""
    csv_path = Path(cfg.csv).expanduser().resolve()
    if not csv_path.is_file():
        raise CnnbenchError(
            f"dataset.csv={cfg.csv}: no such file ({csv_path}); dataset=csv needs a CSV with "
            "a header `path,label` (optionally `,split`) and one row per image"
        )
    base = Path(cfg.root).expanduser().resolve() if cfg.root else csv_path.parent
    if not base.is_dir():
        raise CnnbenchError(f"dataset.root={cfg.root}: no such folder ({base})")
    rows = read_rows(csv_path)
    classes = class_names({r.label for r in rows})
    _check_classes(rows, classes, csv_path)
    kept, missing, left_out = _list_files(rows, base, csv_path)
    if not kept:
        first = missing[0] if missing else left_out[0]
        raise CnnbenchError(
            f"none of the {len(rows)} files listed in {csv_path} can be used ({first.path}: "
            f"{first.reason}); paths are relative to {base}"
            + ("" if cfg.root else " (the CSV's folder; dataset.root=FOLDER for another)")
        )
    label_of = {name: i for i, name in enumerate(classes)}
    pools: dict[str, Pool] = {}
    for row, stamp in kept:
        pool = pools.setdefault(row.split, Pool(base, "", [], [], []))
        pool.files.append(os.path.normpath(os.path.expanduser(row.path)))
        pool.labels.append(label_of[row.label])
        pool.stamps.append(stamp)
    where = {
        split: str(csv_path) if split == "all" else f"the {split} rows of {csv_path}"
        for split in pools
    }
    fix = "fix their rows, or remove them"
    return PoolSet(
        base, pools, classes, missing, "csv", str(csv_path), where, "class(es)", fix
    ), left_out


def load_csv(cfg, tcfg, workers: str | int, progress: bool = True):
    """The files of `cfg.csv` as in-memory ImageTensors or streamed ImageFiles.

    Returns ({split: pool}, classes, skipped files, content key of the pools).
    """
    found, left_out = list_csv(cfg)
    if left_out:
        log.warning(
            f"left out {len(left_out)} row(s) of {cfg.csv}: {count_skips(left_out)} "
            "(listed in skipped_files.txt)"
        )
    splits, skipped, key = load_pools(found, cfg, tcfg, workers, progress)
    return splits, found.classes, left_out + skipped, key
