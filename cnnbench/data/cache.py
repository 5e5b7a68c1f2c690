"""On-disk cache for decoded folders and dataset statistics, keyed by content.

Keys hash what the cached value depends on (file names, sizes, mtimes, decode parameters),
so an edited, added or removed file gives a new key and a stale entry is never used.
Entries are written atomically; a cache that cannot be written only costs time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_write, atomic_write_text

log = logging.getLogger("cnnbench")

CACHE_VERSION = 2  # bump when the layout or the decoding of cached entries changes (2: EXIF, alpha)


def cache_root(cache_dir: str | None) -> Path:
    """dataset.cache_dir, else $CNNBENCH_CACHE, else $XDG_CACHE_HOME/cnnbench (~/.cache)."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("CNNBENCH_CACHE"):
        return Path(os.environ["CNNBENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnnbench"


def content_key(*parts: Any) -> str:
    """A short stable hash of JSON-serializable parts."""
    digest = hashlib.sha256()
    digest.update(str(CACHE_VERSION).encode())
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:24]


def load_entry(path: Path) -> dict[str, Any] | None:
    """A cached torch entry, or None when absent or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (a damaged cache file is just a miss)
        log.warning(f"ignoring unreadable cache file {path} ({err.__class__.__name__})")
        return None


def save_entry(path: Path, entry: dict[str, Any]) -> bool:
    """Write `entry` atomically; False (with a warning) when the cache is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(entry, f))
        return True
    except OSError as err:
        log.warning(f"could not write the cache file {path} ({err}); continuing without it")
        return False


def load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def save_json(path: Path, data: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    except OSError as err:
        log.warning(f"could not write the cache file {path} ({err}); continuing without it")
