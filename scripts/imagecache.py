"""Decode an image folder (root/<class>/*.jpg) once into uint8 tensors, cached as a .pt file.

Used by the scripts in this directory (bench.py, time_to_accuracy.py) to feed cnnbench's
in-memory engine the same images the seed-style loop reads through torchvision's ImageFolder.
The cache key is the folder's path plus every file's name, size and mtime, so a changed
folder is decoded again. Images of one folder must share a size (CIFAR: 32x32).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python scripts/x.py` from a checkout imports this cnnbench
    sys.path.insert(0, str(REPO))

from cnnbench.data import ImageTensors  # noqa: E402
from cnnbench.data.cache import cache_root  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp"}


def list_folder(root: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """(path, label) pairs in ImageFolder's order (sorted classes, sorted files) and the classes."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise SystemExit(f"error: {root} has no class folders (expected root/<class>/*.jpg)")
    samples = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                samples.append((path, label))
    return samples, classes


def _key(root: Path, samples: list[tuple[Path, int]]) -> str:
    h = hashlib.sha256(str(root.resolve()).encode())
    for path, label in samples:
        st = path.stat()
        h.update(f"{path.relative_to(root)}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_image_folder(root: str | Path, *, verbose: bool = True) -> tuple[ImageTensors, list[str]]:
    """All images of `root` as uint8 N x 3 x H x W tensors (RGB), decoded once and cached."""
    root = Path(root).expanduser()
    samples, classes = list_folder(root)
    name = f"{root.parent.name}-{root.name}-{_key(root, samples)}.pt"
    path = cache_root(None) / "imagefolders" / name
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        return ImageTensors(blob["images"], blob["labels"]), blob["classes"]
    start = time.perf_counter()
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p, _ in samples]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"images": images, "labels": labels, "classes": classes}, tmp)
    os.replace(tmp, path)
    if verbose:
        print(
            f"decoded {len(samples)} images of {root} in {time.perf_counter() - start:.1f} s "
            f"(cached: {path})",
            file=sys.stderr,
        )
    return ImageTensors(images, labels), classes


def find_split(root: str | Path, split: str) -> Path:
    """`root/split` when it exists (cifar/{train,test}), else `root` itself for train."""
    root = Path(root).expanduser()
    if (root / split).is_dir():
        return root / split
    if split == "train":
        return root
    raise SystemExit(f"error: {root} has no {split}/ folder")
