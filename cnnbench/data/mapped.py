"""Where a folder scan puts the decoded images: memory, or a memory-mapped cache file on disk.

Folders too large for memory (dataset.cache=auto above dataset.max_memory_mb, or
dataset.cache=disk) are decoded once, at the storage size, into one file per split,
`<cache_dir>/folders/<key>.u8`, keyed like the other cache entries (cache.content_key):

    [0, 4096)        header: MAGIC, the JSON length, JSON (format, key, rows, image shape,
                     offsets of the sections, total bytes)
    [4096, ...)      the images: uint8 rows of C x H x W, in scan order
    (64-aligned)     labels (int64 N), per-image channel sums (float64 N x 2 x C), the index
                     (JSON: file names relative to the dataset root, skipped files, size)
    last 16 bytes    FOOTER and the total size again

Training maps the images (np.memmap, copy-on-write) and reads the rows of each batch through
the page cache: nothing is loaded up front, and processes mapping one file (DDP ranks, sweep
jobs) share one copy of it in memory.

Crash safety: the file is written under a temporary name (`.<name>.XXXX.tmp`), its header
last, then fsynced and renamed into place. A write killed at any point leaves no file under
the cache's name, and a file whose size, header or footer disagree (truncated, half copied)
is ignored and rebuilt. A lock per key makes a second process wait for the first one's file
instead of decoding too (and removes temp files that killed writers left). The space needed
is logged and checked before decoding and reserved with fallocate; a full disk (or any other
write failure) is one `error:` line naming the fixes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ..checkpoint import _fsync_dir
from ..errors import CnnbenchError

try:
    import fcntl
except ImportError:  # Windows: no lock; concurrent builders each write (and rename) a file
    fcntl = None

log = logging.getLogger("cnnbench")

MAGIC = b"CNNBMAP1"
FOOTER = b"CNNBEND1"
HEADER_BYTES = 4096  # the images start on a page boundary
FORMAT = 1
FULL_DISK = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
FIXES = (
    "free some space, point dataset.cache_dir at a larger disk, or set dataset.cache=off "
    "to decode the images from their files every epoch instead (several times slower)"
)


def megabytes(nbytes: float) -> str:
    """'2,812 MB', '3.4 MB', '0.04 MB'."""
    mb = nbytes / 2**20
    return f"{mb:,.0f} MB" if mb >= 10 else f"{mb:.2g} MB"


class MemorySink:
    """The scan's images kept in memory: one uint8 N x C x H x W tensor."""

    def open(self, n: int, shape: tuple[int, int, int]) -> None:
        self.images = torch.empty((n, *shape), dtype=torch.uint8)
        self.rows = 0

    def put(self, image: torch.Tensor) -> None:
        self.images[self.rows] = image
        self.rows += 1

    def result(self) -> torch.Tensor | None:
        return self.images[: self.rows] if hasattr(self, "images") else None


@dataclass
class MappedFile:
    """A complete cache file: the images mapped, the small sections read into memory."""

    path: Path
    images: torch.Tensor  # N x C x H x W uint8 over the mapping (np.memmap, copy-on-write)
    labels: torch.Tensor  # int64 N
    sums: torch.Tensor  # float64 N x 2 x C, as ImageTensors.sums
    index: dict[str, Any]  # files, skipped ([path, reason] pairs), size ([H, W])

    @property
    def nbytes(self) -> int:
        return self.path.stat().st_size


def _align(offset: int, to: int = 64) -> int:
    return -(-offset // to) * to


def _read_header(path: Path, key: str) -> dict[str, Any]:
    """The header of a complete cache file for `key`; ValueError saying what is wrong."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
        f.seek(max(0, size - len(FOOTER) - 8))
        tail = f.read(len(FOOTER) + 8)
    if len(head) < HEADER_BYTES or head[: len(MAGIC)] != MAGIC:
        raise ValueError("no header")
    length = int.from_bytes(head[8:16], "little")
    header = json.loads(head[16 : 16 + length])
    if header.get("format") != FORMAT or header.get("key") != key:
        raise ValueError("another format or key")
    expected = header["bytes"]
    if size != expected or tail != FOOTER + expected.to_bytes(8, "little"):
        raise ValueError(f"{size:,} bytes where {expected:,} were written")
    return header


def open_mapped(path: Path, key: str) -> MappedFile | None:
    """The cache file at `path`, mapped; None when absent, incomplete or damaged."""
    if not path.is_file():
        return None
    try:
        header = _read_header(path, key)
    except (OSError, ValueError, KeyError) as err:
        log.warning(f"ignoring the incomplete or damaged cache file {path} ({err}); decoding again")
        return None
    n, shape = header["rows"], tuple(header["shape"])
    if n == 0:
        images = torch.empty((0, *shape), dtype=torch.uint8)
    else:
        mapped = np.memmap(path, np.uint8, mode="c", offset=HEADER_BYTES, shape=(n, *shape))
        images = torch.from_numpy(mapped)
    labels = np.fromfile(path, "<i8", count=n, offset=header["labels"])
    sums = np.fromfile(path, "<f8", count=n * 2 * shape[0], offset=header["sums"])
    with open(path, "rb") as f:
        f.seek(header["index"])
        index = json.loads(f.read(header["index_bytes"]))
    return MappedFile(
        path,
        images,
        torch.from_numpy(labels.astype(np.int64)),
        torch.from_numpy(sums.astype(np.float64)).view(n, 2, shape[0]),
        index,
    )


def is_complete(path: Path, key: str) -> bool:
    """Whether `path` is a complete cache file for `key` (header, size and footer agree)."""
    try:
        _read_header(path, key)
    except (OSError, ValueError, KeyError):
        return False
    return True


def room_for(folder: Path, needed: int) -> tuple[bool, int]:
    """(whether `needed` bytes fit in `folder` leaving 5% of its disk free, the free bytes):
    dataset.cache=auto writes the cache only then, and streams otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(folder)
    except OSError:
        return False, 0
    return needed <= usage.free - usage.total // 20, usage.free


def check_space(folder: Path, needed: int, what: str) -> int:
    """Free bytes in `folder` (created if missing); an error when `needed` bytes do not fit."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as err:
        raise write_error(err, folder, what) from None
    if needed > free:
        raise CnnbenchError(
            f"the decoded cache of {what} needs {megabytes(needed)} but {folder} has "
            f"{megabytes(free)} free: {FIXES}"
        )
    return free


def write_error(err: OSError, folder: Path, what: str, written: int = 0) -> CnnbenchError:
    """A failed cache write as one message: a full disk, or another OSError."""
    if err.errno in FULL_DISK:
        return CnnbenchError(
            f"out of space writing the decoded cache of {what} to {folder} "
            f"({err.strerror or err} after {megabytes(written)}; the partial file is "
            f"removed): {FIXES}"
        )
    return CnnbenchError(
        f"cannot write the decoded cache of {what} in {folder} ({err.strerror or err}): set "
        "dataset.cache_dir to a writable folder, or dataset.cache=off to decode the images "
        "every epoch instead"
    )


@contextmanager
def build_lock(path: Path, what: str) -> Iterator[None]:
    """Held while `path` is built: another process building it waits, then finds the file.

    Temp files that killed writers left in its folder are removed first (`remove_dead_temps`).
    """
    lock_path = path.with_name(path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path, "a+b")  # noqa: SIM115 (held across the yield)
    except OSError as err:
        raise write_error(err, path.parent, what) from None
    with lock:
        if fcntl is None:
            yield
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"waiting for another process that is decoding {what} into {path}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        remove_dead_temps(path.parent)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def remove_dead_temps(folder: Path) -> None:
    """Delete the temp cache files of writers that died: a live writer holds a lock on its."""
    for temp in folder.glob(".*.u8.*.tmp"):
        try:
            with open(temp, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: its writer is gone
                temp.unlink(missing_ok=True)
        except OSError:  # locked by a live writer (BlockingIOError), or gone already
            continue


class DiskSink:
    """The scan's images written, one row after another, into a new cache file.

    `open` creates the temp file and reserves the space, `put` appends a row, `finish` adds
    the labels, sums and index, writes the header and renames the file into place; `abort`
    removes the temp file. Every OSError becomes one CnnbenchError (see `write_error`).
    """

    def __init__(self, path: Path, key: str, what: str) -> None:
        self.path, self.key, self.what = path, key, what
        self.file: BinaryIO | None = None
        self.tmp: str | None = None
        self.shape: tuple[int, int, int] = (3, 0, 0)
        self.rows = 0

    def _fail(self, err: OSError) -> CnnbenchError:
        written = 0
        with contextlib.suppress(OSError, ValueError, AttributeError):
            written = self.file.tell()
        self.abort()
        return write_error(err, self.path.parent, self.what, written)

    def open(self, n: int, shape: tuple[int, int, int]) -> None:
        self.shape = shape
        reserve = _align(HEADER_BYTES + n * math.prod(shape)) + n * (8 + 16 * shape[0])
        try:
            fd, self.tmp = tempfile.mkstemp(
                dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
            )
            self.file = os.fdopen(fd, "wb", buffering=1 << 20)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)  # "alive" for remove_dead_temps
            fallocate = getattr(os, "posix_fallocate", None)  # not on macOS or Windows
            try:
                if fallocate is not None:
                    fallocate(fd, 0, reserve)  # a full disk fails here, not mid-way
            except OSError as err:
                if err.errno in FULL_DISK:
                    raise
            self.file.seek(HEADER_BYTES)
        except OSError as err:
            raise self._fail(err) from None

    def put(self, image: torch.Tensor) -> None:
        try:
            self.file.write(image.contiguous().numpy().data)
        except OSError as err:
            raise self._fail(err) from None
        self.rows += 1

    def result(self) -> None:
        return None  # the images are read back from the finished file

    def _section(self, data: bytes) -> int:
        """Append `data` at the next 64-byte boundary; returns its offset."""
        at = _align(self.file.tell())
        self.file.write(b"\0" * (at - self.file.tell()))
        self.file.write(data)
        return at

    def finish(self, labels: torch.Tensor, sums: torch.Tensor, index: dict[str, Any]) -> MappedFile:
        """Complete the file and rename it into place; the finished file, mapped."""
        if self.file is None:  # nothing decoded: an empty file still records the skipped ones
            self.open(0, self.shape)
        raw_index = json.dumps(index).encode("utf-8")
        try:
            header = dict(format=FORMAT, key=self.key, rows=self.rows, shape=list(self.shape))
            header["labels"] = self._section(labels.numpy().astype("<i8").tobytes())
            header["sums"] = self._section(sums.numpy().astype("<f8").tobytes())
            header["index"] = self._section(raw_index)
            header["index_bytes"] = len(raw_index)
            header["bytes"] = self.file.tell() + len(FOOTER) + 8
            self.file.write(FOOTER + header["bytes"].to_bytes(8, "little"))
            self.file.truncate()  # the space reserved for files the scan skipped
            text = json.dumps(header).encode("utf-8")
            self.file.seek(0)
            self.file.write(MAGIC + len(text).to_bytes(8, "little") + text)
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.chmod(self.tmp, 0o644)
            os.replace(self.tmp, self.path)
        except OSError as err:
            raise self._fail(err) from None
        _fsync_dir(self.path.parent)
        mapped = open_mapped(self.path, self.key)
        if mapped is None:
            raise CnnbenchError(f"the decoded cache {self.path} cannot be read back: {FIXES}")
        return mapped

    def abort(self) -> None:
        """Close and remove the temp file (a failed or interrupted scan)."""
        if self.file is not None and not self.file.closed:
            with contextlib.suppress(OSError):  # flushing what is left may fail again
                self.file.close()
        if self.tmp is not None:
            Path(self.tmp).unlink(missing_ok=True)
