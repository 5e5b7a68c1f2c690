"""Data paths: folders with broken files, splits, presets, batched augmentations, stats, cache."""

from __future__ import annotations

import builtins
import logging
import os
import random
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_upright, odd_name, read_json, save_sideways_jpeg, upright_pattern
from PIL import Image
from scipy import stats as scipy_stats

from cnnbench.config import compose_checked
from cnnbench.data import ImageFiles, ImageTensors, TensorLoader, build_transforms, load_dataset
from cnnbench.data import images as images_module
from cnnbench.data.folder import load_folder
from cnnbench.data.images import BadImage, decode_file
from cnnbench.data.stats import channel_stats
from cnnbench.data.transforms import random_crop, random_resized_crop, resized_crop_params
from cnnbench.errors import CnnbenchError

ROOT_PERMISSIONS_IGNORED = hasattr(os, "geteuid") and os.geteuid() == 0


# ---------------------------------------------------------------- generated image folders


def write_images(folder: Path, n: int, color: tuple[int, int, int], size=(12, 16), seed=0):
    """n noisy JPEGs around `color`, size (H, W)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = np.clip(rng.normal(color, 25, (*size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}.jpg", quality=92)


def add_broken_files(folder: Path) -> dict[str, str]:
    """One file of every broken kind in `folder`; returns name -> expected reason prefix."""
    (folder / "empty.jpg").write_bytes(b"")
    good = next(folder.glob("*.jpg")).read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "notes.txt").write_text("not an image\n")
    (folder / "locked.jpg").write_bytes(good)
    (folder / "locked.jpg").chmod(0)
    os.symlink(folder / "gone.jpg", folder / "dangling.jpg")
    return {
        "empty.jpg": "empty file (0 bytes)",
        "truncated.jpg": "truncated or corrupt image",
        "notes.txt": "not an image file",
        "locked.jpg": "unreadable (permission denied)",
        "dangling.jpg": "unreadable (missing, or a broken link)",
    }


def add_odd_modes(folder: Path) -> dict[str, int]:
    """Grayscale, RGBA, palette, CMYK and 16-bit PNG images; returns name -> expected value."""
    h, w = 12, 16
    Image.fromarray(np.full((h, w), 100, np.uint8)).save(folder / "gray.png")
    Image.fromarray(np.full((h, w, 4), 100, np.uint8)).save(folder / "rgba.png")
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).quantize(4).save(folder / "palette.png")
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.full((h, w), 100 * 257, np.uint16)).save(folder / "wide16.png")
    return {
        "gray.png": 100,
        "rgba.png": 194,  # 100 at alpha 100/255 onto white: 100 * 100/255 + 255 * 155/255
        "palette.png": 100,
        "cmyk.jpg": 100,
        "wide16.png": 100,
    }


@pytest.fixture(autouse=True)
def _deny_locked_files_even_as_root(monkeypatch):
    """chmod 0 files are readable by root: make them unreadable for decode_file here too."""
    if not ROOT_PERMISSIONS_IGNORED:
        return
    real_open = builtins.open

    def fake_open(path, *args, **kw):
        if str(path).endswith("locked.jpg"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(images_module, "open", fake_open, raising=False)


def dataset_cfg(root: Path, tmp_path: Path, *extra: str):
    return compose_checked(
        [
            "dataset=folder",
            f"dataset.root={root}",
            f"dataset.cache_dir={tmp_path / 'cache'}",
            *extra,
        ]
    )


def load(root: Path, tmp_path: Path, *extra: str):
    cfg = dataset_cfg(root, tmp_path, *extra)
    return load_dataset(cfg.dataset, cfg.transforms, num_workers=0, progress=False)


@pytest.fixture
def pets(tmp_path) -> Path:
    root = tmp_path / "pets"
    write_images(root / "cat", 24, (200, 60, 60), seed=1)
    write_images(root / "dog", 24, (60, 60, 200), seed=2)
    return root


# ---------------------------------------------------------------- broken files and conversions


def test_broken_files_are_skipped_counted_and_listed_with_the_run(cli, tmp_path, pets):
    expected = add_broken_files(pets / "cat")
    add_odd_modes(pets / "dog")
    proc = cli(
        "train",
        "dataset=folder",
        f"dataset.root={pets}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        "transforms=resize",
        "transforms.resize=32",
        "dataset.splits=[40,6,7]",
        "epochs=1",
        "device=cpu",
        "progress=false",
        "hydra.run.dir=run",
        check=False,
    )
    if ROOT_PERMISSIONS_IGNORED:  # the subprocess reads locked.jpg fine as root
        expected.pop("locked.jpg")
    assert proc.returncode == 0, proc.stderr[-2000:]
    n_files = 48 + 5 + 5  # good JPEGs + odd modes + broken kinds
    assert f"skipped {len(expected)} of {n_files} files in {pets}" in proc.stdout + proc.stderr
    listed = dict(
        line.split("\t") for line in (tmp_path / "run/skipped_files.txt").read_text().splitlines()
    )
    assert {Path(p).name for p in listed} == set(expected)
    for path, reason in listed.items():
        assert reason.startswith(expected[Path(path).name]), (path, reason)
    results = read_json(tmp_path / "run/results.json")
    assert results["classes"] == ["cat", "dog"]
    best = torch.load(tmp_path / "run/best.pt", weights_only=True)
    assert best["classes"] == ["cat", "dog"] and best["input_size"] == [3, 32, 32]


def test_every_broken_kind_is_found_in_one_scan(tmp_path, pets):
    expected = add_broken_files(pets / "cat")
    data = load(pets, tmp_path, "dataset.image_size=16")
    assert {Path(s.path).name: s.reason.split(" (")[0] for s in data.skipped} == {
        name: reason.split(" (")[0] for name, reason in expected.items()
    }
    assert len(data.train) + len(data.val) + len(data.test) == 48


@pytest.mark.parametrize("name", ["gray.png", "rgba.png", "palette.png", "cmyk.jpg", "wide16.png"])
def test_odd_image_modes_become_rgb(tmp_path, name):
    value = add_odd_modes(tmp_path)[name]
    x = decode_file(str(tmp_path / name), None)
    assert x.dtype == torch.uint8 and x.shape == (3, 12, 16)
    assert (x.float() - value).abs().max() <= 3  # CMYK/palette round trips are near, not exact


def test_decode_resizes_and_reports_reasons(tmp_path):
    write_images(tmp_path, 1, (10, 20, 30), size=(40, 60))
    assert decode_file(str(tmp_path / "000.jpg"), (8, 8)).shape == (3, 8, 8)
    Image.fromarray(np.arange(3000, dtype=np.uint8).reshape(30, 100)).save(tmp_path / "x.png")
    data = (tmp_path / "x.png").read_bytes()
    (tmp_path / "x.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage, match="truncated or corrupt image"):
        decode_file(str(tmp_path / "x.png"), None)
    (tmp_path / "y.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(BadImage, match="not an image file"):
        decode_file(str(tmp_path / "y.png"), None)


def test_exif_orientation_turns_images_upright_in_decode_and_in_the_scan(tmp_path):
    root = tmp_path / "photos"
    (root / "sideways").mkdir(parents=True)
    (root / "upright").mkdir()
    arr = upright_pattern(96, 160)
    save_sideways_jpeg(root / "sideways" / "a.jpg", arr)
    Image.fromarray(arr).save(root / "upright" / "a.jpg", quality=95)
    with Image.open(root / "sideways" / "a.jpg") as im:
        assert im.size == (96, 160)  # stored portrait (W, H): its pixels lie on their side
    full = decode_file(str(root / "sideways" / "a.jpg"), None)
    assert full.shape == (3, 96, 160)
    assert_upright(full)
    small = decode_file(str(root / "sideways" / "a.jpg"), (24, 40))  # JPEG draft at 1/4 scale
    assert small.shape == (3, 24, 40)
    assert_upright(small)
    # The scan: both files have one native size only once the sideways one is turned upright.
    cfg = dataset_cfg(root, tmp_path)
    splits, classes, skipped, _ = load_folder(cfg.dataset, cfg.transforms, 0, progress=False)
    images = splits["all"].images
    assert classes == ["sideways", "upright"] and skipped == []
    assert images.shape == (2, 3, 96, 160) and torch.equal(images[0], full)
    assert (images[0].float() - images[1].float()).abs().mean() < 3  # two JPEG encodings


def test_16bit_gray_is_rescaled_not_clipped_for_rgb_and_gray_models(tmp_path):
    levels = np.array([[0, 257, 100 * 257, 128 * 257 + 100, 65535]], np.uint16)
    Image.fromarray(levels).save(tmp_path / "wide16.png")
    for channels in (3, 1):
        x = decode_file(str(tmp_path / "wide16.png"), None, channels)
        assert x.shape == (channels, 1, 5)
        assert x[0, 0].tolist() == [0, 1, 100, 128, 255] and bool((x == x[0]).all())


def test_transparency_is_composited_onto_white_for_rgb_and_gray_models(tmp_path):
    rgba = np.array([[[200, 0, 0, 255], [0, 0, 0, 0], [0, 0, 200, 128]]], np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    x = decode_file(str(tmp_path / "rgba.png"), None)
    # opaque: its color; transparent: white; half: 200 * 128/255 + 255 * 127/255 = 227.4
    assert x.permute(1, 2, 0)[0].tolist() == [[200, 0, 0], [255, 255, 255], [127, 127, 227]]
    gray = decode_file(str(tmp_path / "rgba.png"), None, 1)
    luma = [round(0.299 * r + 0.587 * g + 0.114 * b) for r, g, b in [(200, 0, 0), (127, 127, 227)]]
    assert gray[0, 0].tolist() == [luma[0], 255, luma[1]]


# ---------------------------------------------------------------- layouts, splits, errors


def test_seed_004_split_is_reproduced_exactly(tmp_path):
    """random.seed(42); random.shuffle(files); 400/92/10, as seed 004 does it."""
    root = tmp_path / "dogs-vs-cats"
    for cls in ("Cat", "Dog"):
        (root / cls).mkdir(parents=True)
        for i in range(251):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / cls / f"{cls.lower()}.{i}.png")
    data = load(root, tmp_path, "dataset.splits=[400,92,10]")
    seed_files = sorted(f"Cat/{p.name}" for p in (root / "Cat").iterdir()) + sorted(
        f"Dog/{p.name}" for p in (root / "Dog").iterdir()
    )
    random.seed(42)
    random.shuffle(seed_files)
    assert data.train.files == seed_files[:400]
    assert data.val.files == seed_files[400:-10]
    assert data.test.files == seed_files[-10:]
    assert data.classes == ["Cat", "Dog"]
    assert data.train.labels.tolist() == [int(f.startswith("Dog")) for f in seed_files[:400]]

    again = load(root, tmp_path, "dataset.splits=[400,92,10]")
    assert again.train.files == data.train.files  # deterministic
    other = load(root, tmp_path, "dataset.splits=[400,92,10]", "dataset.split_seed=7")
    assert other.train.files != data.train.files
    fractions = load(root, tmp_path, "dataset.splits=[0.8,0.1,0.1]")
    assert (len(fractions.train), len(fractions.val), len(fractions.test)) == (402, 50, 50)


def test_split_folders_carve_val_from_train(tmp_path):
    root = tmp_path / "split"
    for cls, color in (("a", (250, 0, 0)), ("b", (0, 250, 0)), ("c", (0, 0, 250))):
        write_images(root / "train" / cls, 20, color)
        write_images(root / "test" / cls, 4, color)
    data = load(root, tmp_path, "dataset.val_split=0.25")
    assert (len(data.train), len(data.val), len(data.test)) == (45, 15, 12)
    assert data.classes == ["a", "b", "c"]
    assert all(f.startswith("train/") for f in data.train.files + data.val.files)
    assert all(f.startswith("test/") for f in data.test.files)
    assert sorted(data.test.labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert load(root, tmp_path, "dataset.val_split=0.25").val.files == data.val.files

    write_images(root / "val" / "a", 3, (250, 0, 0))
    with_val = load(root, tmp_path)
    assert len(with_val.val) == 3 and len(with_val.train) == 60
    with pytest.raises(CnnbenchError, match="drop dataset.splits"):
        load(root, tmp_path, "dataset.splits=[10,5,5]")
    write_images(root / "test" / "zebra", 2, (9, 9, 9))
    with pytest.raises(CnnbenchError, match="class folders that .* lacks: zebra"):
        load(root, tmp_path)


@pytest.mark.parametrize(
    "layout,overrides,message",
    [
        ("missing", [], "no such folder"),
        ("no classes", [], "no class folders in"),
        ("one class", [], "only one class folder ('cat')"),
        ("empty classes", [], "no files in the class folders of"),
        ("all broken", [], "class folder(s) dog in"),
        ("pets", ["dataset.splits=[40,0,8]"], "leaves the validation set of 48 images empty"),
        ("pets", ["dataset.splits=[40,8,8]"], "asks for 56 images but only 48 usable"),
        ("pets", ["dataset.val_split=0.01"], "leaves an empty split"),
        ("mixed sizes", [], "have different sizes"),
    ],
)
def test_unusable_folders_are_one_clear_error(tmp_path, pets, layout, overrides, message):
    root = {"missing": tmp_path / "nope", "pets": pets}.get(layout, tmp_path / "data")
    if layout == "no classes":
        root.mkdir()
        (root / "readme.txt").write_text("hi")
    elif layout == "one class":
        write_images(root / "cat", 5, (1, 2, 3))
    elif layout == "empty classes":
        (root / "cat").mkdir(parents=True)
        (root / "dog").mkdir()
    elif layout == "all broken":
        write_images(root / "cat", 5, (1, 2, 3))
        (root / "dog").mkdir()
        (root / "dog" / "a.jpg").write_bytes(b"")
    elif layout == "mixed sizes":
        write_images(root / "cat", 3, (1, 2, 3), size=(10, 10))
        write_images(root / "dog", 3, (1, 2, 3), size=(12, 10))
    with pytest.raises(CnnbenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(root, tmp_path, *overrides)


def test_error_from_the_cli_is_one_line(cli, tmp_path):
    write_images(tmp_path / "data" / "only", 3, (1, 2, 3))
    proc = cli("train", "dataset=folder", f"dataset.root={tmp_path / 'data'}", check=False)
    assert proc.returncode != 0
    assert proc.stderr.count("error:") == 1 and "only one class folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_max_per_class_picks_a_seeded_subset(tmp_path, pets):
    data = load(pets, tmp_path, "dataset.max_per_class=10", "dataset.splits=[14,3,3]")
    files = data.train.files + data.val.files + data.test.files
    assert len(files) == 20 and sum(f.startswith("cat/") for f in files) == 10
    again = load(pets, tmp_path, "dataset.max_per_class=10", "dataset.splits=[14,3,3]")
    assert again.train.files == data.train.files


# ---------------------------------------------------------------- links, duplicates, odd names


def all_files(data) -> dict[str, int]:
    """Every file of the three splits -> its label; asserts that none is in two places."""
    files = data.train.files + data.val.files + data.test.files
    labels = torch.cat([data.train.labels, data.val.labels, data.test.labels]).tolist()
    assert len(set(files)) == len(files)
    return dict(zip(files, labels, strict=True))


def left_out(data, root: Path) -> dict[str, str]:
    """Skipped paths relative to `root` -> their reason, up to the first ' ('."""
    return {str(Path(s.path).relative_to(root)): s.reason.split(" (")[0] for s in data.skipped}


def test_a_symlink_loop_is_never_followed(tmp_path, pets, caplog):
    """The issue's tree: with cat/loop -> .., 10 images became 4,552, dogs labelled cat."""
    os.symlink("..", pets / "cat" / "loop")
    write_images(pets / "cat" / "sub", 1, (200, 60, 60))
    os.symlink("..", pets / "cat" / "sub" / "up")  # a loop one level down, back to cat/
    with caplog.at_level(logging.WARNING, logger="cnnbench"):
        data = load(pets, tmp_path, "dataset.splits=[41,4,4]")
    files = all_files(data)
    assert len(files) == 49
    assert {f: y for f, y in files.items() if y == 1} == {f"dog/{i:03d}.jpg": 1 for i in range(24)}
    assert set(files) - {f"dog/{i:03d}.jpg" for i in range(24)} == {
        *(f"cat/{i:03d}.jpg" for i in range(24)),
        "cat/sub/000.jpg",
    }
    assert left_out(data, pets) == {"cat/loop": "symlink loop", "cat/sub/up": "symlink loop"}
    assert f"left out 2 link(s), duplicate(s) or folder(s) in {pets}: 2 symlink loop" in caplog.text


def test_a_link_into_another_class_leaves_its_images_where_they_are(tmp_path, pets):
    os.symlink("../dog", pets / "cat" / "dogs")
    os.symlink("../dog/000.jpg", pets / "cat" / "dog0.jpg")
    files = all_files(load(pets, tmp_path, "dataset.splits=[40,4,4]"))
    assert len(files) == 48
    assert all(y == (f.startswith("dog/")) for f, y in files.items())
    assert not any(f.startswith(("cat/dogs", "cat/dog0")) for f in files)
    data = load(pets, tmp_path, "dataset.splits=[40,4,4]")
    assert left_out(data, pets) == {
        "cat/dogs": "link inside the dataset",
        "cat/dog0.jpg": "link inside the dataset",
    }


def test_links_out_of_the_dataset_are_followed_once(tmp_path, pets):
    """Users link datasets in: followed, but an outside folder is taken once, loops never."""
    photos = tmp_path / "photos"
    write_images(photos, 4, (200, 60, 60), seed=3)
    os.symlink(".", photos / "self")
    write_images(tmp_path / "elsewhere", 1, (60, 60, 200), seed=4)
    os.symlink(photos, pets / "cat" / "a_photos")
    os.symlink(photos, pets / "cat" / "b_photos")  # the same folder again
    os.symlink(tmp_path / "elsewhere" / "000.jpg", pets / "dog" / "linked.jpg")
    data = load(pets, tmp_path, "dataset.splits=[45,4,4]")
    files = all_files(data)
    assert len(files) == 48 + 4 + 1
    assert {f: files[f] for f in files if "/a_photos/" in f or "linked" in f} == {
        **{f"cat/a_photos/{i:03d}.jpg": 0 for i in range(4)},
        "dog/linked.jpg": 1,
    }
    assert left_out(data, pets) == {
        "cat/b_photos": "duplicate",
        "cat/a_photos/self": "symlink loop",
    }


def test_a_file_reached_from_two_classes_is_left_out_of_both(tmp_path, pets):
    write_images(tmp_path / "outside", 1, (90, 90, 90))
    os.symlink(tmp_path / "outside" / "000.jpg", pets / "cat" / "x.jpg")
    os.symlink(tmp_path / "outside" / "000.jpg", pets / "dog" / "x.jpg")
    os.link(pets / "dog" / "001.jpg", pets / "cat" / "hard.jpg")  # a hard link, no symlink
    data = load(pets, tmp_path, "dataset.splits=[40,3,4]")
    files = all_files(data)
    assert len(files) == 47 and not {"cat/x.jpg", "dog/x.jpg", "cat/hard.jpg"} & set(files)
    assert "dog/001.jpg" not in files
    assert left_out(data, pets) == dict.fromkeys(
        ["cat/x.jpg", "dog/x.jpg", "cat/hard.jpg", "dog/001.jpg"], "ambiguous label"
    )


@pytest.mark.parametrize("link,target", [("dog", "cat"), ("val", "train")])
def test_a_class_or_split_folder_linked_into_the_dataset_is_an_error(tmp_path, link, target):
    root = tmp_path / "data"
    parent = root / "train" if link == "val" else root
    write_images(parent / "cat", 3, (200, 60, 60))
    if link == "val":
        write_images(parent / "dog", 3, (60, 60, 200))
    os.symlink(target, root / link)
    message = f"{root / link} is a link to {root / target}, which overlaps the dataset folder"
    with pytest.raises(CnnbenchError, match=re.escape(message)):
        load(root, tmp_path)


def test_names_that_are_not_utf8_are_kept_and_written_escaped(tmp_path, pets):
    good = odd_name(pets / "dog", b"\xfe.jpg")
    good.write_bytes((pets / "dog" / "000.jpg").read_bytes())
    odd_name(pets / "cat", b"\xff.jpg").write_bytes(b"not an image")
    data = load(pets, tmp_path, "dataset.splits=[41,4,4]")
    assert all_files(data)[os.fsdecode(b"dog/\xfe.jpg")] == 1
    text = data.skipped_text()
    assert text == f"{pets}/cat/\\xff.jpg\tnot an image file\n"
    assert text.encode("utf-8").decode("utf-8") == text  # plain UTF-8 to write


def test_symlink_loops_and_odd_names_are_listed_with_the_run(cli, tmp_path, pets):
    os.symlink("..", pets / "cat" / "loop")
    odd_name(pets / "dog", b"\xfe.jpg").write_bytes((pets / "dog" / "000.jpg").read_bytes())
    odd_name(pets / "cat", b"\xff.jpg").write_bytes(b"not an image")
    proc = cli(
        "train",
        "dataset=folder",
        f"dataset.root={pets}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        "dataset.image_size=32",
        "dataset.splits=[41,4,4]",
        "epochs=1",
        "device=cpu",
        "progress=false",
        "hydra.run.dir=run",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert f"left out 1 link(s), duplicate(s) or folder(s) in {pets}: 1 symlink loop" in out
    assert f"skipped 1 of 50 files in {pets}: 1 not an image file" in out
    assert (tmp_path / "run" / "skipped_files.txt").read_text(encoding="utf-8").splitlines() == [
        f"{pets}/cat/loop\tsymlink loop (points back to {pets})",
        f"{pets}/cat/\\xff.jpg\tnot an image file",
    ]


# ---------------------------------------------------------------- cache, memory budget, streaming


def test_decoded_folder_is_cached_by_content(tmp_path, pets, monkeypatch, caplog):
    first = load(pets, tmp_path, "dataset.image_size=16")
    assert isinstance(first.train, ImageTensors) and first.input_size == (3, 16, 16)
    assert len(list((tmp_path / "cache" / "folders").glob("*.pt"))) == 1

    def no_decoding(*args, **kw):
        raise AssertionError("the second load must not decode")

    monkeypatch.setattr("cnnbench.data.folder.decode_file", no_decoding)
    with caplog.at_level(logging.INFO, logger="cnnbench"):
        second = load(pets, tmp_path, "dataset.image_size=16")
    assert "checked images from the cache" in caplog.text
    assert torch.equal(second.train.images, first.train.images)
    assert second.train.files == first.train.files
    monkeypatch.undo()

    # A changed file changes the key: decoded again, a second cache entry.
    os.utime(pets / "cat" / "000.jpg", ns=(1, 1))
    load(pets, tmp_path, "dataset.image_size=16")
    assert len(list((tmp_path / "cache" / "folders").glob("*.pt"))) == 2


@pytest.mark.parametrize(
    "transforms",
    [
        ["transforms=cifar"],
        ["transforms=cifar_strong", "transforms.color_jitter=0.4", "transforms.cutmix_alpha=1"],
    ],
)
def test_streamed_folder_gives_the_same_batches_as_in_memory(tmp_path, pets, transforms):
    add_odd_modes(pets / "dog")
    add_broken_files(pets / "cat")
    memory = load(pets, tmp_path, "dataset.image_size=16")
    stream = load(
        pets, tmp_path, "dataset.image_size=16", "dataset.max_memory_mb=0", "dataset.cache=off"
    )
    assert isinstance(stream.train, ImageFiles) and isinstance(memory.train, ImageTensors)
    assert stream.train.files == memory.train.files
    for a, b in zip(stream.train_stats(), memory.train_stats(), strict=True):
        assert a == pytest.approx(b, abs=1e-12)
    assert [s.path for s in stream.skipped] == [s.path for s in memory.skipped]
    tcfg = compose_checked(transforms).transforms
    train_tf, _ = build_transforms(tcfg, memory.train_stats, 3, len(memory.classes))
    cpu = torch.device("cpu")
    loaders = [
        TensorLoader(d.train, 8, train_tf, cpu, shuffle=True, seed=5) for d in (memory, stream)
    ]
    for a, b in zip(*loaders, strict=True):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_streaming_with_workers_and_a_file_broken_after_the_scan(tmp_path, pets, caplog):
    data = load(
        pets, tmp_path, "dataset.image_size=16", "dataset.max_memory_mb=0", "dataset.cache=off"
    )
    broken = Path(data.train.root) / data.train.files[0]
    broken.write_bytes(b"")  # broken after the scan: fed as a blank image, never a crash
    data.train.num_workers = 2
    tcfg = compose_checked(["transforms=basic"]).transforms
    tf, _ = build_transforms(tcfg, ([0.0] * 3, [1.0] * 3), 3)
    loader = TensorLoader(data.train, 8, tf, torch.device("cpu"), shuffle=False)
    with caplog.at_level(logging.WARNING, logger="cnnbench"):
        batches = list(loader)
    assert sum(b[0].shape[0] for b in batches) == len(data.train)
    assert batches[0][0][0].abs().sum() == 0
    assert "cannot be decoded any more" in caplog.text


# ---------------------------------------------------------------- statistics


def known_stats_folder(root: Path) -> None:
    """Every image: R half white, G constant 51, B a quarter white -> known mean/std."""
    arr = np.zeros((8, 8, 3), np.uint8)
    arr[:, :4, 0] = 255
    arr[:, :, 1] = 51
    arr[:, :2, 2] = 255
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(arr).save(root / cls / f"{i}.png")


def test_stats_command_on_known_images(cli, tmp_path):
    known_stats_folder(tmp_path / "known")
    proc = cli(
        "stats",
        "dataset=folder",
        f"dataset.root={tmp_path / 'known'}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        "dataset.image_size=8",  # their own size (else lenet5's native 32x32)
    )
    assert "dataset folder: 15 training images (3x8x8), 2 classes" in proc.stdout
    assert "mean: 0.5000 0.2000 0.2500" in proc.stdout
    assert "std:  0.5000 0.0000 0.4330" in proc.stdout
    assert "transforms.mean=[0.5000,0.2000,0.2500]" in proc.stdout


def test_folder_stats_match_a_full_pass(tmp_path, pets):
    data = load(pets, tmp_path)
    mean, std = data.train_stats()
    ref_mean, ref_std = channel_stats(data.train.images, chunk=5)
    assert mean == pytest.approx(ref_mean, abs=1e-9) and std == pytest.approx(ref_std, abs=1e-9)
    float_imgs = data.train.images.double() / 255
    assert mean == pytest.approx(float_imgs.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert std == pytest.approx(float_imgs.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-9)


def test_normalize_auto_statistics_are_cached_per_dataset(tmp_path):
    cfg = compose_checked(["dataset=digits", f"dataset.cache_dir={tmp_path}"])
    data = load_dataset(cfg.dataset)
    mean, std = data.train_stats()
    (path,) = (tmp_path / "stats").glob("*.json")
    cached = read_json(path)
    assert cached["mean"] == mean and cached["images"] == len(data.train)
    path.write_text('{"mean": [0.25], "std": [0.5]}')  # the cache is what is used next time
    assert load_dataset(cfg.dataset).train_stats() == ([0.25], [0.5])
    other = compose_checked(
        ["dataset=digits", f"dataset.cache_dir={tmp_path}", "dataset.split_seed=1"]
    )
    assert load_dataset(other.dataset).train_stats()[0] != [0.25]  # another split, another key


# ---------------------------------------------------------------- offline torchvision datasets


@pytest.mark.parametrize(
    "name,folder,url",
    [
        ("mnist", "MNIST/raw", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
        ("fashion_mnist", "FashionMNIST/raw", "fashion-mnist.s3-website"),
        (
            "cifar100",
            "cifar-100-python",
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        ),
    ],
)
def test_missing_torchvision_files_name_the_path_and_the_fix(tmp_path, name, folder, url):
    cfg = compose_checked([f"dataset={name}", f"dataset.root={tmp_path}"])
    with pytest.raises(CnnbenchError) as err:
        load_dataset(cfg.dataset)
    text = str(err.value)
    assert f"files not found under {tmp_path} (expected {tmp_path / folder})" in text
    assert url in text
    assert f"cnnbench stats dataset={name} dataset.root=data dataset.download=true" in text


def write_idx(raw: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """MNIST's idx format, uncompressed (what torchvision reads from <root>/MNIST/raw)."""
    raw.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    header = np.array([2051, n, h, w], dtype=">i4").tobytes()
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.astype(np.uint8).tobytes())
    header = np.array([2049, n], dtype=">i4").tobytes()
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(header + labels.astype(np.uint8).tobytes())


def test_mnist_files_load_as_32x32_single_channel_images(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw, "train", rng.integers(0, 256, (40, 28, 28)), np.arange(40) % 10)
    write_idx(raw, "t10k", np.full((10, 28, 28), 200), np.arange(10))
    cfg = compose_checked(
        ["dataset=mnist", f"dataset.root={tmp_path}", f"dataset.cache_dir={tmp_path}"]
    )
    data = load_dataset(cfg.dataset)
    assert (len(data.train), len(data.val), len(data.test)) == (36, 4, 10)
    assert data.input_size == (1, 32, 32) and data.classes[0] == "0 - zero"
    assert (data.test.images == 200).all() and data.test.labels.tolist() == list(range(10))
    native = compose_checked(
        ["dataset=mnist", f"dataset.root={tmp_path}", "dataset.image_size=null"]
    )
    assert load_dataset(native.dataset).input_size == (1, 28, 28)


def test_failed_download_is_one_message_not_a_urllib_traceback(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(self):  # what CIFAR's download raises without a network
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    def mirrors_failed(self):  # what MNIST's download raises once every mirror failed
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried ...")

    monkeypatch.setattr(torchvision.datasets.CIFAR100, "download", offline)
    monkeypatch.setattr(torchvision.datasets.MNIST, "download", mirrors_failed)
    for name, url in [("cifar100", "cifar-100-python.tar.gz"), ("mnist", "ossci-datasets")]:
        cfg = compose_checked(
            [f"dataset={name}", f"dataset.root={tmp_path}", "dataset.download=true"]
        )
        with pytest.raises(CnnbenchError, match="this machine looks offline") as err:
            load_dataset(cfg.dataset)
        assert url in str(err.value) and "keep dataset.download=false" in str(err.value)


# ---------------------------------------------------------------- transform presets


@pytest.mark.parametrize(
    "preset,size_in,train_out,eval_out",
    [
        ("basic", 32, 32, 32),
        ("cifar", 32, 32, 32),
        ("imagenet227", 300, 227, 227),
        ("rrc224", 256, 224, 224),
        ("resize", 64, 224, 224),
    ],
)
def test_every_preset_has_train_and_eval_pipelines(preset, size_in, train_out, eval_out):
    tcfg = compose_checked([f"transforms={preset}"]).transforms
    train_tf, eval_tf = build_transforms(tcfg, ([0.5] * 3, [0.25] * 3), 3)
    x = torch.randint(0, 256, (4, 3, size_in, size_in), dtype=torch.uint8)
    assert train_tf(x, torch.Generator().manual_seed(0)).shape == (4, 3, train_out, train_out)
    out = eval_tf(x, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, eval_out, eval_out)
    assert torch.equal(out, eval_tf(x, torch.Generator().manual_seed(1)))  # eval never augments
    assert train_tf.output_size(size_in, size_in) == (train_out, train_out)


def test_imagenet227_is_seed_001s_center_crop_with_imagenet_stats():
    tcfg = compose_checked(["transforms=imagenet227"]).transforms
    assert (tcfg.resize, tcfg.crop, tcfg.crop_mode.value, tcfg.hflip) == (256, 227, "center", True)
    train_tf, eval_tf = build_transforms(tcfg, lambda: pytest.fail("no stats needed"), 3)
    x = torch.randint(0, 256, (64, 3, 256, 256), dtype=torch.uint8)
    train = train_tf(x, torch.Generator().manual_seed(0))
    evald = eval_tf(x)
    same = [
        torch.equal(t, e) or torch.equal(t, e.flip(2)) for t, e in zip(train, evald, strict=True)
    ]
    assert all(same)  # train = the eval crop, maybe mirrored
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    expected = (x[0, :, 14:241, 14:241].float() / 255 - mean) / std
    assert torch.allclose(evald[0], expected, atol=1e-5)


def test_random_crop_offsets_match_torchvision_randomcrop():
    from torchvision.transforms import RandomCrop

    n, size, pad = 4000, 16, 4
    rows = torch.arange(1, size + 1, dtype=torch.float32).view(1, 1, size, 1)
    coords = torch.cat([rows.expand(n, 1, size, size), rows.mT.expand(n, 1, size, size)], 1)
    out = random_crop(coords, size, size, pad, torch.Generator().manual_seed(0))
    # Pixel (8, 8) is never padding: it reveals each sample's offset in the padded image.
    ours = torch.stack([out[:, 0, 8, 8] - 9 + pad, out[:, 1, 8, 8] - 9 + pad], 1).long()
    torch.manual_seed(0)
    img = torch.zeros(1, size + 2 * pad, size + 2 * pad)
    theirs = torch.tensor([RandomCrop.get_params(img, (size, size))[:2] for _ in range(n)])
    for k in range(2):
        a = torch.bincount(ours[:, k], minlength=2 * pad + 1)
        b = torch.bincount(theirs[:, k], minlength=2 * pad + 1)
        assert len(a) == len(b) == 2 * pad + 1  # the same range, every offset reached
        assert scipy_stats.chi2_contingency(torch.stack([a, b]).numpy()).pvalue > 0.001


def test_flip_rate_is_one_half():
    tcfg = compose_checked(["transforms=cifar", "transforms.crop_padding=0"]).transforms
    train_tf, _ = build_transforms(tcfg, ([0.0], [1.0]), 1)
    x = torch.zeros(4000, 1, 2, 2, dtype=torch.uint8)
    x[..., 0] = 255
    flipped = (train_tf(x, torch.Generator().manual_seed(0))[:, 0, 0, 1] > 0.5).float().mean()
    assert abs(flipped.item() - 0.5) < 0.03  # 4 sigma of Binomial(4000, 0.5)


@pytest.mark.parametrize(
    "hw,scale,ratio",
    [((256, 256), (0.5, 1.0), (3 / 4, 4 / 3)), ((64, 160), (0.08, 1.0), (3 / 4, 4 / 3))],
)
def test_resized_crop_params_match_torchvision_in_distribution(hw, scale, ratio):
    from torchvision.transforms import RandomResizedCrop

    n, (h, w) = 4000, hw
    top, left, ch, cw = resized_crop_params(n, h, w, scale, ratio, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    img = torch.zeros(1, h, w)
    ref = torch.tensor(
        [RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)]
    )
    ours = torch.stack([top, left, ch, cw], 1)
    assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= h).all()
    assert (ours[:, 1] >= 0).all() and (ours[:, 1] + ours[:, 3] <= w).all()

    def features(p: torch.Tensor) -> dict[str, np.ndarray]:
        t, l_, hh, ww = (p[:, i].double() for i in range(4))
        return {
            "area": (hh * ww / (h * w)).numpy(),
            "log aspect": torch.log(ww / hh).numpy(),
            "top": (t / (h - hh + 1)).numpy(),
            "left": (l_ / (w - ww + 1)).numpy(),
        }

    for name, (a, b) in {k: (features(ours)[k], features(ref)[k]) for k in features(ours)}.items():
        assert scipy_stats.ks_2samp(a, b).pvalue > 0.001, name


def test_random_resized_crop_pixels_match_torchvision_resized_crop():
    from torchvision.transforms.v2 import functional as TF

    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 128), indexing="ij")
    smooth = torch.stack([yy, xx, (yy * xx)]) * 255
    x = smooth.expand(32, 3, 96, 128).contiguous()
    out = random_resized_crop(
        x, 48, 48, (0.3, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(3)
    )
    top, left, ch, cw = resized_crop_params(
        32, 96, 128, (0.3, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(3)
    )
    for i in range(32):
        ref = TF.resized_crop(
            x[i], int(top[i]), int(left[i]), int(ch[i]), int(cw[i]), [48, 48], antialias=True
        )
        assert (out[i] - ref).abs().mean() < 0.3  # on a 0..255 scale (off by a pixel: > 1)


# ---------------------------------------------------------------- show


def test_show_saves_a_grid_of_augmented_samples(cli, tmp_path, pets):
    proc = cli(
        "show",
        "dataset=folder",
        f"dataset.root={pets}",
        f"dataset.cache_dir={tmp_path / 'cache'}",
        "transforms=cifar",
        "--out",
        "grid/pets.png",
    )
    path = Path(proc.stdout.strip())
    assert path == tmp_path / "grid" / "pets.png"
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1000, 1100)
        pixels = np.asarray(im.convert("RGB"))
    # The samples are there: red cats and blue dogs, not a blank figure.
    assert (pixels[..., 0].astype(int) - pixels[..., 2] > 80).sum() > 1000
    assert (pixels[..., 2].astype(int) - pixels[..., 0] > 80).sum() > 1000


@pytest.mark.parametrize(
    "override,message",
    [
        ("dataset.splits=[1,2]", "dataset.splits must be [train, val, test]"),
        ("dataset.splits=[0.8,0.3,0.1]", "fractions must add up to at most 1"),
        ("dataset.splits=[400,0.5,10]", "mixes counts and fractions"),
        ("num_workers=many", "num_workers must be 'auto' or a count >= 0"),
        ("transforms.scale=[0.5,1.5]", "transforms.scale must be [low, high]"),
        ("dataset.image_size=0", "dataset.image_size must be >= 1 or null"),
    ],
)
def test_bad_data_values_stop_before_any_work(override, message):
    from cnnbench.config import check_values

    with pytest.raises(CnnbenchError, match=re.escape(message)):
        check_values(compose_checked([override]))
