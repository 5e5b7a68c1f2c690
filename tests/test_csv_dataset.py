"""dataset=csv: a spreadsheet of paths and labels, with broken rows, splits and the cache."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import read_json
from test_data import write_images

from cnnbench.config import compose_checked
from cnnbench.data import ImageFiles, ImageTensors, MappedImages, load_dataset
from cnnbench.errors import CnnbenchError
from cnnbench.runs import compose_saved


@pytest.fixture
def photos(tmp_path) -> Path:
    """12 red and 12 blue JPEGs in one flat folder: red/000.jpg ... (labels are in the CSV)."""
    root = tmp_path / "photos"
    write_images(root / "red", 12, (220, 40, 40), seed=1)
    write_images(root / "blue", 12, (40, 40, 220), seed=2)
    return root


def write_csv(path: Path, rows: list[str], header: str = "path,label") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def rows_for(names: dict[str, str], n: int = 12, prefix: str = "") -> list[str]:
    """`prefix<color>/<i>.jpg,<label>` for the first n images of each color."""
    return [f"{prefix}{c}/{i:03d}.jpg,{label}" for c, label in names.items() for i in range(n)]


def load(tmp_path: Path, csv: Path, *extra: str):
    cfg = compose_checked(
        ["dataset=csv", f"dataset.csv={csv}", f"dataset.cache_dir={tmp_path / 'cache'}", *extra]
    )
    return load_dataset(cfg.dataset, cfg.transforms, num_workers=0, progress=False)


def test_split_column_integer_labels_and_a_semicolon_excel_csv(tmp_path, photos):
    rows = [f"red/{i:03d}.jpg;10;{'TEST' if i < 3 else 'train'}" for i in range(12)]
    rows += [
        f"blue/{i:03d}.jpg;2;{'test' if i < 3 else 'valid' if i < 5 else 'train'}"
        for i in range(12)
    ]
    csv = photos / "labels.csv"
    csv.write_text("\ufeffPath;Label;Split\n" + "\n".join(rows) + "\n", encoding="utf-8")
    data = load(tmp_path, csv, "dataset.image_size=8")
    assert data.classes == ["2", "10"]  # all integers: numeric order, not "10" < "2"
    assert (len(data.train), len(data.val), len(data.test)) == (16, 2, 6)
    assert data.test.files == [f"red/{i:03d}.jpg" for i in range(3)] + [
        f"blue/{i:03d}.jpg" for i in range(3)
    ]
    assert data.test.labels.tolist() == [1, 1, 1, 0, 0, 0]
    assert data.val.files == ["blue/003.jpg", "blue/004.jpg"]
    red = data.train.images[data.train.labels == 1].float().mean(dim=(0, 2, 3))
    assert red[0] > 150 and red[2] < 100  # label '10' is the red images


def test_no_split_column_splits_like_one_folder_and_missing_files_are_listed(
    cli, tmp_path, photos, monkeypatch
):
    rows = rows_for({"red": "cat", "blue": "dog"})
    rows.insert(5, "red/gone.jpg,cat")
    csv = write_csv(tmp_path / "sheet" / "labels.csv", rows)
    proc = cli(
        "train",
        "dataset=csv",
        "dataset.csv=sheet/labels.csv",  # relative to the working directory
        f"dataset.root={photos}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        "dataset.splits=[16,4,4]",
        "dataset.image_size=32",
        "epochs=1",
        "device=cpu",
        "progress=false",
        "hydra.run.dir=run",
    )
    assert f"skipped 1 of 25 files in {csv}: 1 missing" in proc.stdout + proc.stderr
    listed = (tmp_path / "run" / "skipped_files.txt").read_text()
    assert listed == f"{photos / 'red' / 'gone.jpg'}\tmissing (labels.csv line 7)\n"
    results = read_json(tmp_path / "run" / "results.json")
    assert results["classes"] == ["cat", "dog"] and results["dataset"] == "csv"
    assert "16 train / 4 val / 4 test" in proc.stdout + proc.stderr
    monkeypatch.chdir(photos)  # eval, predict and rerun find the CSV from anywhere
    assert compose_saved(tmp_path / "run").dataset.csv == str(csv)


@pytest.mark.parametrize(
    "header,rows,message",
    [
        ("file,label", ["red/000.jpg,cat"], "labels.csv line 1: the header has no 'path' column"),
        (
            "path,class",
            ["red/000.jpg,cat"],
            "the header has no 'label' column (found: 'path', 'class')",
        ),
        (
            "path,label",
            ["red/000.jpg,cat", "red/001.jpg,", "red/002.jpg, "],
            "labels.csv line 3: empty label for red/001.jpg (and 1 more bad row);",
        ),
        ("path,label", ["red/000.jpg,cat", ",dog"], "labels.csv line 3: no path"),
        (
            "path,label,split",
            ["red/000.jpg,cat,train", "blue/000.jpg,dog,training"],
            "labels.csv line 3: unknown split value 'training' for blue/000.jpg "
            "(valid: train, val, test)",
        ),
        (
            "path,label,split",
            ["red/000.jpg,cat,train", "blue/000.jpg,dog,"],
            "line 3: unknown split value '' for blue/000.jpg",
        ),
        ("path,label", ["nope/1.jpg,cat", "nope/2.jpg,dog"], "none of the 2 files listed in"),
        ("path,label", ["red/000.jpg,cat", "red/001.jpg,cat"], "has only one label ('cat')"),
        (
            "path,label,split",
            ["red/000.jpg,cat,train", "blue/000.jpg,dog,test"],
            "line 3: label 'dog' is in the test rows but in no train row",
        ),
        (
            "path,label,split",
            ["red/000.jpg,cat,val", "blue/000.jpg,dog,test"],
            "has a split column but no train rows (only test, val)",
        ),
        ("path,label", [], "has a header but no rows"),
    ],
)
def test_broken_rows_are_one_error_naming_the_line(tmp_path, photos, header, rows, message):
    csv = write_csv(photos / "labels.csv", rows, header)
    with pytest.raises(CnnbenchError, match=re.escape(message)):
        load(tmp_path, csv)


def test_missing_csv_empty_csv_and_all_files_missing_point_at_the_fix(tmp_path, photos):
    with pytest.raises(CnnbenchError, match=r"dataset.csv=.*nope.csv: no such file"):
        load(tmp_path, tmp_path / "nope.csv")
    (tmp_path / "latin1.csv").write_bytes(b"path,label\n\xe9t\xe9.jpg,cat\n")  # Excel's cp1252
    with pytest.raises(CnnbenchError, match="latin1.csv is not UTF-8 text .*save it as CSV UTF-8"):
        load(tmp_path, tmp_path / "latin1.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CnnbenchError, match="empty.csv is empty; write a header `path,label`"):
        load(tmp_path, tmp_path / "empty.csv")
    csv = write_csv(tmp_path / "elsewhere" / "labels.csv", rows_for({"red": "a", "blue": "b"}))
    with pytest.raises(CnnbenchError) as err:
        load(tmp_path, csv)
    assert f"({tmp_path / 'elsewhere' / 'red' / '000.jpg'}: missing (labels.csv line 2))" in str(
        err.value
    )
    assert "(the CSV's folder; dataset.root=FOLDER for another)" in str(err.value)
    assert len(load(tmp_path, csv, f"dataset.root={photos}", "dataset.image_size=8").train) > 0


def test_a_file_listed_twice_is_taken_once_and_under_two_labels_by_neither(tmp_path, photos):
    rows = rows_for({"red": "cat", "blue": "dog"}, n=10)
    rows += ["red/000.jpg,cat", "./red/001.jpg,cat", "blue/009.jpg,cat"]  # dup, dup, ambiguous
    csv = write_csv(photos / "labels.csv", rows)
    data = load(tmp_path, csv, "dataset.image_size=8", "dataset.splits=[15,2,2]")
    files = data.train.files + data.val.files + data.test.files
    assert len(files) == 19 and len(set(files)) == 19 and "blue/009.jpg" not in files
    left_out = sorted(
        (str(Path(s.path).relative_to(photos)), s.reason.split(" (")[0]) for s in data.skipped
    )
    assert left_out == [
        ("blue/009.jpg", "ambiguous label"),
        ("blue/009.jpg", "ambiguous label"),
        ("red/000.jpg", "duplicate"),
        ("red/001.jpg", "duplicate"),
    ]


def test_relabelled_rows_are_not_served_from_the_cache_and_streaming_works(tmp_path, photos):
    csv = write_csv(photos / "labels.csv", rows_for({"red": "a", "blue": "b"}))
    first = load(tmp_path, csv, "dataset.image_size=8", "dataset.splits=[20,2,2]")
    assert isinstance(first.train, ImageTensors)
    csv.write_text(csv.read_text().replace("blue/000.jpg,b", "blue/000.jpg,a"))
    second = load(tmp_path, csv, "dataset.image_size=8", "dataset.splits=[20,2,2]")
    label = {
        f: int(y)
        for s in (second.train, second.val, second.test)
        for f, y in zip(s.files, s.labels, strict=True)
    }
    assert label["blue/000.jpg"] == 0 and label["blue/001.jpg"] == 1
    assert len(list((tmp_path / "cache" / "folders").glob("*.pt"))) == 2
    streamed = load(
        tmp_path, csv, "dataset.image_size=8", "dataset.splits=[20,2,2]", "dataset.cache=off",
        "dataset.max_memory_mb=0",
    )  # fmt: skip
    assert isinstance(streamed.train, ImageFiles) and streamed.train.root == str(photos)
    assert streamed.train.files == second.train.files
    assert torch.equal(streamed.train.labels, second.train.labels)
    # Above max_memory_mb, dataset.cache=auto maps the decoded images from the disk cache.
    mapped = load(
        tmp_path, csv, "dataset.image_size=8", "dataset.splits=[20,2,2]", "dataset.max_memory_mb=0"
    )
    assert isinstance(mapped.train, MappedImages) and mapped.train.files == second.train.files
    assert torch.equal(mapped.train.images[list(range(len(mapped.train)))], second.train.images)
    assert torch.equal(mapped.train.labels, second.train.labels)
