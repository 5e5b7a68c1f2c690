"""`dataset=folder`: images in class subfolders, checked once, then held in memory or streamed.

Layouts under `dataset.root`:

    root/<class>/<image>                        one folder: split with dataset.splits or
                                                dataset.test_split / dataset.val_split
    root/train/<class>/<image>                  split folders: val/ (or valid/) and test/
    root/{val,test}/<class>/<image>             are optional and carved from train/ when absent

Links, and the rule that no image gets two labels (or two splits). The listing walks every
class folder once and takes each folder and each file at most once, by (st_dev, st_ino):

- A link, to a folder or a file, is followed only when it points out of the dataset folder
  (users link datasets in: root/cat -> /data/cats, cat/1.jpg -> /photos/1.jpg). A link to
  anything inside `dataset.root` is not followed: what it points to counts where it really
  lies (cat/more -> ../dog leaves dog's images dogs), and a link to a folder that holds the
  link itself (cat/loop -> ..) is a symlink loop.
- A folder or file reached a second time (two links to one outside folder, hard links, bind
  mounts) is a duplicate when the class is the same: only the first is taken, so it cannot
  land in two splits. Under two different classes its label is ambiguous: it is taken by
  neither.
- A split or class folder that is itself a link into (or around) the dataset folder is an
  error: root/dog -> cat would make every cat a dog too.

Everything left out is counted in one log line and listed in skipped_files.txt.

Every file is then fully decoded once before training (the scan; `images.decode_file`, the
decode predict uses too): empty, truncated, non-image and unreadable files are skipped and
reported, the rest are turned upright (EXIF) and converted to RGB at one storage size.
Where the decoded pixels live while training is `dataset.cache`: `auto` keeps folders whose
decoded size fits `dataset.max_memory_mb` in memory as uint8 tensors and writes larger ones,
during the scan, into a memory-mapped cache file read through the page cache (mapped.py);
`memory` and `disk` force one or the other; `off` decodes larger folders batch by batch in
DataLoader workers every epoch (streamed). Scan results (and the decoded images) are cached on
disk keyed by the files' names, sizes and mtimes.
"""

from __future__ import annotations

import logging
import os
import random
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import CacheMode
from ..errors import CnnbenchError
from .cache import cache_root, content_key, load_entry, save_entry
from .images import BadImage, decode_file, image_size_of
from .mapped import (
    DiskSink,
    MappedFile,
    MemorySink,
    build_lock,
    check_space,
    is_complete,
    megabytes,
    open_mapped,
    room_for,
)
from .splits import ImageFiles, ImageTensors, MappedImages, SkippedFile

log = logging.getLogger("cnnbench")

SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SMALL_SCAN = 1000  # below this many files, decoding in the main process beats starting workers
SCAN_CHUNK = 256  # files per scan work item


def resolve_workers(value: str | int, n_items: int | None = None) -> int:
    """num_workers: 'auto' is one worker per available core (at most 8), none for small sets."""
    text = str(value).strip().lower()
    if text != "auto":
        return int(text)
    if n_items is not None and n_items < SMALL_SCAN:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cores or 1))


@dataclass
class Pool:
    """The files of one folder (root, or root/train, root/val, root/test) with their labels."""

    folder: Path
    prefix: str  # path of `folder` relative to the dataset root ("" or "train/")
    files: list[str]  # relative to `folder`
    labels: list[int]
    stamps: list[tuple[int, int]]  # (size, mtime_ns) per file, for the cache key


@dataclass
class ScannedPool:
    files: list[str]  # usable files, relative to the dataset root
    labels: torch.Tensor
    sums: torch.Tensor  # N x 2 x 3 float64
    size: tuple[int, int]
    images: torch.Tensor | None  # N x 3 x H x W uint8 when decoded into memory
    skipped: list[SkippedFile]
    mapped: MappedFile | None = None  # the memory-mapped cache file holding the images


def _visible(name: str) -> bool:
    return not name.startswith(".") and name != "__MACOSX"


def _subdirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if _visible(e.name) and e.is_dir())


Listed = list[tuple[str, tuple[int, int]]]  # (path relative to a class folder, (size, mtime))


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies under it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


@dataclass
class Listing:
    """One listing of a dataset tree: what it took, by (st_dev, st_ino), and what it left out."""

    root: str  # the dataset root, resolved
    taken: dict[tuple[int, int], tuple[str, str]] = field(default_factory=dict)  # (class, path)
    ambiguous: dict[str, str] = field(default_factory=dict)  # first path -> reason to drop it
    left_out: list[SkippedFile] = field(default_factory=list)

    def claim(self, st: os.stat_result, label: str, path: str, what: str) -> bool:
        """Take the folder or file `path` for class `label`; False (recorded) if taken before."""
        key = (st.st_dev, st.st_ino)
        if key not in self.taken:
            self.taken[key] = (label, path)
            return True
        first_label, first = self.taken[key]
        if first_label == label:
            reason = f"duplicate (the same {what} as {first})"
        else:  # the same pixels under two classes: neither label can be trusted
            reason = f"ambiguous label (the same {what} is also {first}, class {first_label})"
            self.ambiguous[first] = f"ambiguous label ({first} is also {path}, class {label})"
        self.left_out.append(SkippedFile(path, reason))
        return False

    def link_reason(self, path: str, is_dir: bool) -> str | None:
        """Why the link `path` is not followed, or None (it points out of the dataset)."""
        target = os.path.realpath(path)
        if is_dir and _inside(os.path.realpath(os.path.dirname(path)), target):
            return f"symlink loop (points back to {target})"
        if _inside(target, self.root):
            return f"link inside the dataset (to {target}; counted where it lies)"
        return None

    def take(self, entry: os.DirEntry, label: str) -> tuple[str, tuple[int, int]] | None:
        """('folder' or 'file', (size, mtime_ns)) to list `entry`; None when it is left out."""
        try:
            st = entry.stat()  # of the link's target
        except OSError:
            return "file", (-1, 0)  # a broken link, or gone: the scan reports it
        what = "folder" if stat.S_ISDIR(st.st_mode) else "file"
        reason = self.link_reason(entry.path, what == "folder") if entry.is_symlink() else None
        if reason is not None:
            self.left_out.append(SkippedFile(entry.path, reason))
            return None
        if not self.claim(st, label, entry.path, what):
            return None
        return what, (st.st_size, st.st_mtime_ns)

    def class_files(self, class_dir: Path, label: str) -> Listed:
        """Visible files under `class_dir` (recursively), relative to it, sorted, with stamps."""
        if not self.claim(class_dir.stat(), label, str(class_dir), "folder"):
            return []
        found: Listed = []
        stack = [""]
        while stack:
            rel = stack.pop()
            folder = class_dir / rel
            try:
                with os.scandir(folder) as it:
                    entries = sorted((e for e in it if _visible(e.name)), key=lambda e: e.name)
            except OSError as err:
                self.left_out.append(
                    SkippedFile(str(folder), f"unreadable folder ({err.strerror})")
                )
                continue
            subfolders = []
            for entry in entries:
                taken = self.take(entry, label)
                name = f"{rel}/{entry.name}" if rel else entry.name
                if taken is not None and taken[0] == "folder":
                    subfolders.append(name)
                elif taken is not None:
                    found.append((name, taken[1]))
            stack += reversed(subfolders)  # depth first, in name order
        return sorted(found)

    def drop_ambiguous(self, class_dir: Path, files: Listed) -> Listed:
        """`files` less those in or under a path that another class also reached."""
        if not self.ambiguous:
            return files
        kept: Listed = []
        for name, stamp in files:
            path = str(class_dir / name)
            up = [path, *(str(p) for p in Path(path).parents if _inside(str(p), str(class_dir)))]
            hit = next((self.ambiguous[p] for p in up if p in self.ambiguous), None)
            if hit is None:
                kept.append((name, stamp))
            else:
                self.left_out.append(SkippedFile(path, hit))
        return kept


def _check_folder_links(folders: dict[str, Path], classes: list[str], root: Path) -> None:
    """Split and class folders may link out of the dataset, never into it (or around it)."""
    for folder in folders.values():
        for path in [folder, *(folder / name for name in classes)]:
            real = os.path.realpath(path)
            if real != str(path) and (_inside(real, str(root)) or _inside(str(root), real)):
                raise CnnbenchError(
                    f"{path} is a link to {real}, which overlaps the dataset folder {root}: "
                    "the same images would count twice, under two labels or in two splits; "
                    "make it a real folder or remove the link"
                )


def list_pool(
    folder: Path,
    prefix: str,
    listed: dict[str, Listed],
    classes: list[str],
    max_per_class: int | None,
    seed: int,
) -> Pool:
    """The pool of `folder` from its listed class files (a seeded subset with max_per_class)."""
    files, labels, stamps = [], [], []
    for label, name in enumerate(classes):
        found = dict(listed.get(name, []))
        names = sorted(found)
        if max_per_class is not None and len(names) > max_per_class:
            names = sorted(random.Random(f"{seed}:{name}").sample(names, max_per_class))
        files += [f"{name}/{f}" for f in names]
        labels += [label] * len(names)
        stamps += [found[f] for f in names]
    return Pool(folder, prefix, files, labels, stamps)


def find_pools(cfg) -> tuple[dict[str, Pool], list[str], list[SkippedFile], list[SkippedFile]]:
    """The pools of `cfg.root` by split name ('all' for one folder), the classes, stray files
    and the links, duplicates and folders the listing left out."""
    root = Path(cfg.root).expanduser().resolve()
    if not root.is_dir():
        raise CnnbenchError(
            f"dataset.root={cfg.root}: no such folder ({root}); dataset=folder needs a folder of "
            "class subfolders, e.g. root/cat/1.jpg root/dog/2.jpg, or root/train/<class>/... "
            "with optional root/val/ and root/test/"
        )
    folders, main, classes = _layout(root)
    _check_folder_links(folders, classes, root)
    stray = [
        SkippedFile(str(main / e.name), "not inside a class folder")
        for e in sorted(os.scandir(main), key=lambda e: e.name)
        if _visible(e.name) and not e.is_dir()
    ]
    listing = Listing(str(root))
    listed = {
        split: {n: listing.class_files(folder / n, n) for n in classes if (folder / n).is_dir()}
        for split, folder in folders.items()
    }
    pools = {}
    for split, folder in folders.items():
        kept = {n: listing.drop_ambiguous(folder / n, f) for n, f in listed[split].items()}
        prefix = "" if split == "all" else f"{folder.name}/"
        pools[split] = list_pool(folder, prefix, kept, classes, cfg.max_per_class, cfg.split_seed)
    return pools, classes, stray, listing.left_out


def _layout(root: Path) -> tuple[dict[str, Path], Path, list[str]]:
    """({split: folder} ('all' for one folder), the folder of the classes, the classes)."""
    top = _subdirs(root)
    layout = {SPLIT_DIRS[d.lower()]: d for d in top if d.lower() in SPLIT_DIRS}
    split_layout = "train" in layout and len(layout) == len(top)
    folders = {k: root / v for k, v in layout.items()} if split_layout else {"all": root}
    main = folders["train" if split_layout else "all"]
    classes = _subdirs(main)
    if not classes:
        raise CnnbenchError(
            f"no class folders in {main}: dataset=folder expects <root>/<class>/<image> "
            "(e.g. root/cat/1.jpg, root/dog/2.jpg), or the same under root/train/"
        )
    if len(classes) == 1:
        raise CnnbenchError(
            f"only one class folder ({classes[0]!r}) in {main}: a classifier needs at least "
            "two; add a folder per class"
        )
    for split, folder in folders.items():
        extra = sorted(set(_subdirs(folder)) - set(classes))
        if extra:
            raise CnnbenchError(
                f"{folder} has class folders that {main} lacks: {', '.join(extra)}; every "
                f"class in {split}/ must also be in train/"
            )
    return folders, main, classes


class _ScanSet(Dataset):
    """Chunk c of the files, decoded: (first index, images, channel sums, reasons).

    Working on chunks keeps the traffic between worker processes to one tensor per chunk.
    `images` is a stacked uint8 tensor (or a list when sizes differ; only image shapes when
    not `keep`); the entries of unusable files are None, with their reason in `reasons`.
    """

    def __init__(self, paths: list[str], size: tuple[int, int] | None, keep: bool) -> None:
        self.paths, self.size, self.keep = paths, size, keep

    def __len__(self) -> int:
        return (len(self.paths) + SCAN_CHUNK - 1) // SCAN_CHUNK

    def __getitem__(self, c: int):
        start = c * SCAN_CHUNK
        paths = self.paths[start : start + SCAN_CHUNK]
        images: list[torch.Tensor | None] = []
        reasons: list[str | None] = []
        for path in paths:
            try:
                images.append(decode_file(path, self.size))
                reasons.append(None)
            except BadImage as err:
                images.append(None)
                reasons.append(str(err))
        shapes = {tuple(x.shape) for x in images if x is not None}
        sums = torch.zeros(len(paths), 2, 3, dtype=torch.float64)
        stacked = None
        if len(shapes) == 1:
            blank = torch.zeros(next(iter(shapes)), dtype=torch.uint8)
            stacked = torch.stack([blank if x is None else x for x in images])
            xf = stacked.to(torch.float64).div_(255.0)
            sums[:, 0], sums[:, 1] = xf.sum(dim=(2, 3)), xf.square_().sum(dim=(2, 3))
        else:  # sizes differ (an error unless resizing) or nothing decoded
            for k, x in enumerate(images):
                if x is not None:
                    xf = x.to(torch.float64).div_(255.0)
                    sums[k, 0], sums[k, 1] = xf.sum(dim=(1, 2)), xf.square_().sum(dim=(1, 2))
        if not self.keep:
            return start, [None if x is None else tuple(x.shape) for x in images], sums, reasons
        return start, (stacked if stacked is not None else images), sums, reasons


def _first(batch: list):
    return batch[0]


def _size_mismatch(
    root: Path | str, first: str, first_size, other: str, other_size
) -> CnnbenchError:
    return CnnbenchError(
        f"images in {root} have different sizes ({first_size[1]}x{first_size[0]} for {first}, "
        f"{other_size[1]}x{other_size[0]} for {other}); pick one storage size with "
        "dataset.image_size=N, or a transforms preset that resizes (transforms=resize "
        "transforms.resize=N, imagenet227, rrc224)"
    )


def scan_pool(
    pool: Pool,
    size: tuple[int, int] | None,
    keep: bool,
    workers: str | int,
    progress: bool = True,
    sink: MemorySink | DiskSink | None = None,
) -> ScannedPool:
    """Fully decode every file of `pool` once; keep the images when `keep`, in `sink`
    (default: memory; a DiskSink writes them into the memory-mapped cache file instead)."""
    from tqdm import tqdm

    paths = [str(pool.folder / f) for f in pool.files]
    n = len(paths)
    num_workers = resolve_workers(workers, n)
    loader = DataLoader(
        _ScanSet(paths, size, keep),
        batch_size=1,
        num_workers=num_workers,
        collate_fn=_first,
        generator=torch.Generator(),  # leave the global RNG (model init) untouched
    )
    ok = torch.zeros(n, dtype=torch.bool)
    sums = torch.zeros(n, 2, 3, dtype=torch.float64)
    sink = sink or MemorySink()
    skipped: list[SkippedFile] = []
    first = None
    bar = tqdm(total=n, desc=f"[Scan] {pool.folder.name}", disable=None if progress else True)
    for start, chunk, chunk_sums, reasons in loader:
        for k, reason in enumerate(reasons):
            i = start + k
            if reason is not None:
                skipped.append(SkippedFile(paths[i], reason))
                continue
            shape = tuple(chunk[k].shape[1:]) if keep else tuple(chunk[k][1:])
            if first is None:
                first = (pool.files[i], shape)
                if keep:
                    sink.open(n, (3, *shape))
            elif shape != first[1]:
                raise _size_mismatch(pool.folder, first[0], first[1], pool.files[i], shape)
            if keep:
                sink.put(chunk[k])
            ok[i] = True
            sums[i] = chunk_sums[k]
        bar.update(len(reasons))
    bar.close()
    index = ok.nonzero().flatten()
    files = [pool.prefix + pool.files[i] for i in index.tolist()]
    return ScannedPool(
        files=files,
        labels=torch.tensor(pool.labels, dtype=torch.int64)[index],
        sums=sums[index],
        size=first[1] if first is not None else (size or (0, 0)),
        images=sink.result() if keep else None,
        skipped=skipped,
    )


def _storage_size(cfg, tcfg, pools: dict[str, Pool]) -> tuple[tuple[int, int] | None, tuple]:
    """(size to resize to or None for native, estimated (H, W) for the memory budget)."""
    side = cfg.image_size or (tcfg.resize if tcfg is not None else None)
    if side:
        return (side, side), (side, side)
    for pool in pools.values():
        for f in pool.files[:64]:
            probe = image_size_of(str(pool.folder / f))
            if probe is not None:
                return None, probe
    return None, (0, 0)


def count_skips(skipped: list[SkippedFile]) -> str:
    kinds = Counter(s.reason.split(" (")[0] for s in skipped)
    return ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())


@dataclass
class PoolSet:
    """Listed files ready for the scan, from a folder tree or a CSV: what `load_pools` takes."""

    root: Path  # the dataset root: files are kept relative to it (absolute when outside it)
    pools: dict[str, Pool]  # by split: 'all', or 'train' with optional 'val' and 'test'
    classes: list[str]
    skipped: list[SkippedFile]  # files found unusable before the scan (stray, missing)
    kind: str  # 'folder' or 'csv', part of the cache keys
    source: str  # how messages name the dataset (the folder, the CSV)
    where: dict[str, str]  # how messages name each split's files
    classes_are: str = "class folder(s)"  # how messages name classes
    class_fix: str = "add images or remove the folder(s)"


def load_folder(cfg, tcfg, workers: str | int, progress: bool = True):
    """Pools of `cfg.root` as in-memory ImageTensors, memory-mapped MappedImages or streamed
    ImageFiles (`dataset.cache`, `_pixels_mode`).

    Returns ({split: pool}, classes, skipped files, content key of the pools).
    """
    pools, classes, skipped, left_out = find_pools(cfg)
    root = Path(cfg.root).expanduser().resolve()
    if left_out:
        log.warning(
            f"left out {len(left_out)} link(s), duplicate(s) or folder(s) in {root}: "
            f"{count_skips(left_out)} (listed in skipped_files.txt)"
        )
    total = sum(len(p.files) for p in pools.values())
    if total == 0:
        raise CnnbenchError(
            f"no files in the class folders of {root}; put images in <root>/<class>/"
        )
    where = {split: str(pool.folder) for split, pool in pools.items()}
    found = PoolSet(root, pools, classes, skipped, "folder", str(root), where)
    splits, skipped, key = load_pools(found, cfg, tcfg, workers, progress)
    return splits, classes, left_out + skipped, key


def load_pools(found: PoolSet, cfg, tcfg, workers: str | int, progress: bool = True):
    """Scan (or read from the cache) every pool of `found`, then hold it in memory, map it from
    the decoded cache on disk, or stream it (dataset.cache, `_pixels_mode`).

    `cfg` gives dataset.image_size, max_memory_mb, cache and cache_dir. Returns ({split:
    ImageTensors, MappedImages or ImageFiles}, every skipped file, content key of the pools).
    """
    pools, classes, root = found.pools, found.classes, found.root
    skipped = list(found.skipped)
    total = sum(len(p.files) for p in pools.values())
    size, estimate = _storage_size(cfg, tcfg, pools)
    decoded_mb = total * 3 * estimate[0] * estimate[1] / 2**20
    where = cache_root(cfg.cache_dir) / "folders"
    mode = _pixels_mode(cfg, decoded_mb, found.source)
    if mode == "disk" and _cache_mode(cfg) == CacheMode.auto:
        by_key = {_pool_key(found.kind, mode, size, classes, p): p for p in pools.values()}
        mode = _disk_if_room(where, found.source, by_key, 3 * estimate[0] * estimate[1])
    in_memory = mode == "memory"
    scanned: dict[str, ScannedPool] = {}
    keys = []
    for split, pool in pools.items():
        key = _pool_key(found.kind, mode, size, classes, pool)
        keys.append(key)
        if mode == "disk":
            needed = len(pool.files) * 3 * estimate[0] * estimate[1]
            what = found.where[split]
            target = _MappedTarget(where / f"{key}.u8", key, pool, root, size, needed, what)
            scanned[split] = _mapped_pool(target, workers, progress)
            continue
        path = where / f"{key}.pt"
        entry = load_entry(path)
        if entry is not None and _became_readable(root, entry["skipped"]):
            entry = None  # a permission fix changes no mtime: check again
        if entry is not None:
            log.info(
                f"{found.where[split]}: {len(entry['files'])} checked images from the cache {path}"
            )
            scanned[split] = ScannedPool(
                files=entry["files"],
                labels=entry["labels"],
                sums=entry["sums"],
                size=tuple(entry["size"]),
                images=entry.get("images"),
                skipped=[SkippedFile(str(root / p), r) for p, r in entry["skipped"]],
            )
            continue
        what = "decoding into memory" if in_memory else "checking (streamed later)"
        log.info(f"{found.where[split]}: {len(pool.files)} files, {what} at {_size_text(size)}")
        result = scan_pool(pool, size, in_memory, workers, progress)
        scanned[split] = result
        entry = dict(labels=result.labels, sums=result.sums, **_index_of(result, root))
        if result.images is not None:
            entry["images"] = result.images
        if save_entry(path, entry):
            log.info(f"cached as {path}")
    candidates = total + len(skipped)  # `skipped` holds the stray files so far
    for s in scanned.values():
        skipped += s.skipped
    if skipped:
        log.warning(
            f"skipped {len(skipped)} of {candidates} files in {found.source}: "
            f"{count_skips(skipped)} "
            "(listed in skipped_files.txt)"
        )
    _check_pools(scanned, found)
    sizes = {s.size for s in scanned.values()}
    if len(sizes) > 1:
        a, b = sorted(sizes)[:2]
        raise _size_mismatch(found.source, "one split", a, "another", b)
    num_workers = resolve_workers(workers)
    splits = {}
    for split, s in scanned.items():
        if s.images is not None:
            splits[split] = ImageTensors(s.images, s.labels, s.files, s.sums)
        elif s.mapped is not None:
            rows = torch.arange(len(s.files))
            splits[split] = MappedImages(s.mapped.images, rows, s.labels, s.files, s.sums)
        else:
            splits[split] = ImageFiles(str(root), s.files, s.labels, s.size, s.sums, num_workers)
    why = f"about {megabytes(decoded_mb * 2**20)} decoded, max_memory_mb={cfg.max_memory_mb}"
    if mode == "stream":
        log.info(f"{found.source}: {why}: streaming with {num_workers} loader workers")
    elif mode == "disk":
        log.info(f"{found.source}: {why}: training reads the memory-mapped cache")
    return splits, skipped, content_key(f"{found.kind}-set", keys)


def _relative(path: str, root: Path) -> str:
    """`path` relative to `root` when it lies inside, else as it is (a CSV may name any file)."""
    return os.path.relpath(path, root) if _inside(path, str(root)) else path


def _pool_key(kind: str, mode: str, size, classes: list[str], pool: Pool) -> str:
    """The cache key of a pool's entry: its files (names, sizes, mtimes, labels), classes,
    storage size, where the pixels live, and the kind of listing (folder, csv)."""
    return content_key(kind, mode, size, classes, pool.prefix, pool.files, pool.stamps, pool.labels)


def _cache_mode(cfg) -> CacheMode:
    return CacheMode(getattr(cfg.cache, "value", cfg.cache))


def _disk_if_room(where: Path, source: str, by_key: dict[str, Pool], image_bytes: int) -> str:
    """dataset.cache=auto above max_memory_mb: 'disk' when the pools' cache files are complete
    or fit (`room_for`), else 'stream', with a warning saying why."""
    missing = [pool for key, pool in by_key.items() if not is_complete(where / f"{key}.u8", key)]
    needed = sum(len(pool.files) for pool in missing) * image_bytes
    fits, free = room_for(where, needed)
    if not missing or fits:
        return "disk"
    log.warning(
        f"{source}: the memory-mapped cache would take {megabytes(needed)} in {where}, which has "
        f"{megabytes(free)} free (dataset.cache=auto leaves 5% of the disk free): streaming "
        "instead, decoding every file every epoch (several times slower). Free some space or "
        "point dataset.cache_dir at a larger disk (dataset.cache=disk insists)"
    )
    return "stream"


def _pixels_mode(cfg, decoded_mb: float, source: str) -> str:
    """Where the decoded pixels live (dataset.cache): 'memory', 'disk' (the memory-mapped
    cache) or 'stream' (decoded from the files every epoch)."""
    cache = _cache_mode(cfg)
    if cache == CacheMode.memory:
        _check_memory(decoded_mb, source)
    if cache in (CacheMode.memory, CacheMode.disk):
        return cache.value
    if decoded_mb <= cfg.max_memory_mb:
        return "memory"
    return "disk" if cache == CacheMode.auto else "stream"


def _check_memory(decoded_mb: float, source: str) -> None:
    """dataset.cache=memory: an error when the decoded images cannot fit in available memory."""
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return
    fields = dict(line.split(":", 1) for line in meminfo.splitlines() if ":" in line)
    available_mb = int(fields.get("MemAvailable", "0 kB").split()[0]) / 1024
    if available_mb and decoded_mb > available_mb:
        raise CnnbenchError(
            f"dataset.cache=memory: {source} needs about {decoded_mb:,.0f} MB decoded but only "
            f"{available_mb:,.0f} MB of memory are available; use dataset.cache=disk (a "
            "memory-mapped file read through the page cache) or dataset.cache=auto"
        )


def _index_of(result: ScannedPool, root: Path) -> dict:
    """What a cache entry records of a scan besides the pixels, labels and sums."""
    return dict(
        files=result.files,
        size=list(result.size),
        skipped=[[_relative(s.path, root), s.reason] for s in result.skipped],
    )


@dataclass
class _MappedTarget:
    """One split's memory-mapped cache file, and what building it needs."""

    path: Path
    key: str
    pool: Pool
    root: Path
    size: tuple[int, int] | None  # storage size (None: the images' own)
    needed: int  # estimated bytes of the decoded images
    what: str  # how messages name the pool's files (PoolSet.where)

    def fresh(self) -> MappedFile | None:
        """The complete file, unless a file it skipped as unreadable can be read now."""
        mapped = open_mapped(self.path, self.key)
        if mapped is not None and _became_readable(self.root, mapped.index["skipped"]):
            return None  # a permission fix changes no mtime: check again
        return mapped

    def build(self, workers: str | int, progress: bool) -> MappedFile:
        """Decode the pool into the file (the space is checked first and shown)."""
        what = self.what
        free = check_space(self.path.parent, self.needed, what)
        log.info(
            f"{what}: {len(self.pool.files)} files, decoding at {_size_text(self.size)} into "
            f"the memory-mapped cache {self.path}: about {megabytes(self.needed)} on disk "
            f"({megabytes(free)} free there)"
        )
        sink = DiskSink(self.path, self.key, what)
        try:
            result = scan_pool(self.pool, self.size, True, workers, progress, sink)
            mapped = sink.finish(result.labels, result.sums, _index_of(result, self.root))
        except BaseException:
            sink.abort()
            raise
        log.info(f"cached as {self.path}")
        return mapped


def _mapped_pool(target: _MappedTarget, workers: str | int, progress: bool) -> ScannedPool:
    """The pool from its memory-mapped cache file: the file when complete, else built
    (decoded once, under a lock per key: a parallel job waits for it)."""
    mapped = target.fresh()
    if mapped is not None:
        log.info(
            f"{target.what}: {len(mapped.index['files'])} checked images from the "
            f"memory-mapped cache {target.path} ({megabytes(mapped.nbytes)})"
        )
    else:
        with build_lock(target.path, target.what):
            mapped = target.fresh() or target.build(workers, progress)
    index = mapped.index
    return ScannedPool(
        files=index["files"],
        labels=mapped.labels,
        sums=mapped.sums,
        size=tuple(index["size"]),
        images=None,
        skipped=[SkippedFile(str(target.root / p), r) for p, r in index["skipped"]],
        mapped=mapped,
    )


def _became_readable(root: Path, skipped: list[list[str]]) -> bool:
    return any(
        reason.startswith("unreadable") and os.access(root / path, os.R_OK)
        for path, reason in skipped
    )


def _size_text(size: tuple[int, int] | None) -> str:
    return "the images' own size" if size is None else f"{size[1]}x{size[0]}"


def _check_pools(scanned: dict[str, ScannedPool], found: PoolSet) -> None:
    for split, s in scanned.items():
        if len(s.files) == 0:
            raise CnnbenchError(
                f"{found.where[split]}: no usable images ({len(s.skipped)} skipped, see above)"
            )
        if split in ("all", "train"):
            counts = torch.bincount(s.labels, minlength=len(found.classes))
            empty = [found.classes[i] for i in (counts == 0).nonzero().flatten().tolist()]
            if empty:
                raise CnnbenchError(
                    f"{found.classes_are} {', '.join(empty)} in {found.where[split]} have no "
                    f"usable images; {found.class_fix}"
                )
