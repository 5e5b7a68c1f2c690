"""Decoding one image file into a uint8 tensor: the one decode for training and for predict.

`decode_file` is the only place cnnbench turns an image file into pixels. The folder scan,
the streamed loader and `cnnbench predict` all call it, so a model is served exactly the
pixels it was trained on:

- the EXIF orientation is applied (a phone photo stored sideways comes out upright);
- 16-bit and float grayscale are rescaled to 8 bits (not clipped at 255);
- transparency (RGBA, LA, PA, or a palette/gray/RGB image with a transparent color) is
  composited onto white;
- the result is 8-bit RGB (3 channels) or L (1 channel, the model's grayscale), resized with
  bilinear filtering when a size is given (large JPEGs are decoded at a reduced scale first).

Every file of a folder dataset goes through it once before training (the scan), so a broken
file is found and skipped up front instead of killing an epoch.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# 16-bit and 32-bit integer grayscale modes (16-bit PNGs open as one of these).
_WIDE_GRAY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIDEWAYS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_ORIENTATION = 0x0112
MODES = {3: "RGB", 1: "L"}  # channels -> PIL mode


class BadImage(Exception):
    """A file that cannot be used as an image; the message is the reason shown to the user."""


def printable(text: str) -> str:
    """`text` (a path from the file system) with undecodable bytes as \\xNN escapes.

    os.fsdecode keeps a non-UTF-8 byte of a file name as a lone surrogate, which cannot be
    written as UTF-8 or printed to a strict stdout; b'\\xff.jpg' becomes the text '\\xff.jpg'.
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _gray8(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit or float grayscale as 8-bit L, rescaled instead of clipped at 255."""
    arr = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
    else:
        top = 255.0 if im.mode == "I" and arr.max(initial=0) <= 255 else 65535.0
    return Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8))


def to_mode(im: Image.Image, mode: str = "RGB") -> Image.Image:
    """Any PIL image (L, LA, P, RGBA, CMYK, 16-bit gray, ...) as 8-bit `mode` ('RGB' or 'L')."""
    if im.mode in _WIDE_GRAY_MODES or im.mode == "F":
        im = _gray8(im)
    elif im.mode in _ALPHA_MODES or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im.convert("RGBA"))
    return im if im.mode == mode else im.convert(mode)


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 (unreadable EXIF is metadata only: no rotation)
        return 1


def _upright(im: Image.Image) -> None:
    """Turn `im` (loaded) in place as its EXIF orientation says."""
    with contextlib.suppress(Exception):  # unreadable EXIF is metadata only: no rotation
        ImageOps.exif_transpose(im, in_place=True)


def _decode(im: Image.Image, size: tuple[int, int] | None, mode: str) -> np.ndarray:
    """The opened image `im` decoded, upright, in `mode`, resized to `size` (H, W) if given."""
    if size is not None and im.format == "JPEG":
        # Let libjpeg decode at a reduced scale when the image is much larger than needed
        # (still at least `size`, in the orientation the file is stored in): 2.6x faster.
        h, w = size[::-1] if _orientation(im) in _SIDEWAYS else size
        im.draft("RGB", (w, h))
    im.load()
    _upright(im)
    im = to_mode(im, mode)
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


def decode_file(path: str, size: tuple[int, int] | None, channels: int = 3) -> torch.Tensor:
    """Fully decode `path` to a `channels` x H x W uint8 tensor (RGB for 3, L for 1).

    Upright, resized to `size` (H, W) when given. Raises BadImage with a short reason for
    empty, unreadable, truncated or non-image files.
    """
    if channels not in MODES:
        raise ValueError(f"channels must be 1 or 3 (got {channels})")
    try:
        if os.path.getsize(path) == 0:
            raise BadImage("empty file (0 bytes)")
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF/ICC chatter, DecompressionBombWarning
            arr = _decode(Image.open(f), size, MODES[channels])
    except BadImage:
        raise
    except PermissionError:
        raise BadImage("unreadable (permission denied)") from None
    except FileNotFoundError:
        raise BadImage("unreadable (missing, or a broken link)") from None
    except UnidentifiedImageError:
        raise BadImage("not an image file") from None
    except Image.DecompressionBombError as err:
        raise BadImage(f"too large to decode safely ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        text = str(err).split("\n")[0] or err.__class__.__name__
        raise BadImage(f"truncated or corrupt image ({text})") from None
    x = torch.from_numpy(arr.copy())
    return (x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)).contiguous()


def image_size_of(path: str) -> tuple[int, int] | None:
    """(H, W) from the header only, or None when the header cannot be read."""
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:  # noqa: BLE001 (any failure means "unknown"; the scan reports it)
        return None
