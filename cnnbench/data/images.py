"""Decoding one image file into an RGB uint8 tensor, with a reason when it cannot be used.

Every file of a folder dataset goes through `decode_file` once before training (the scan), so
a broken file is found and skipped up front instead of killing an epoch.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# 16-bit and 32-bit integer grayscale modes (16-bit PNGs open as one of these).
_WIDE_GRAY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class BadImage(Exception):
    """A file that cannot be used as an image; the message is the reason shown to the user."""


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, RGBA, CMYK, 16-bit gray, ...) as 8-bit RGB."""
    if im.mode == "RGB":
        return im
    if im.mode in _WIDE_GRAY_MODES:
        arr = np.asarray(im, dtype=np.float64)
        # 16-bit data spans 0..65535: rescale instead of clipping at 255 like convert() does.
        top = 255.0 if im.mode == "I" and arr.max(initial=0) <= 255 else 65535.0
        gray = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L").convert(
            "RGB"
        )
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # what PIL recommends for palette images with transparency
    return im.convert("RGB")


def decode_file(path: str, size: tuple[int, int] | None) -> torch.Tensor:
    """Fully decode `path` to a 3 x H x W uint8 tensor, resized to `size` (H, W) when given.

    Raises BadImage with a short reason for empty, unreadable, truncated or non-image files.
    """
    try:
        if os.path.getsize(path) == 0:
            raise BadImage("empty file (0 bytes)")
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF/ICC chatter, DecompressionBombWarning
            im = Image.open(f)
            if size is not None and im.format == "JPEG":
                # Let libjpeg decode at a reduced scale when the image is much larger than
                # needed (still at least `size`): the whole stream is decoded either way.
                im.draft("RGB", (size[1], size[0]))
            im.load()
            im = to_rgb(im)
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
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
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def image_size_of(path: str) -> tuple[int, int] | None:
    """(H, W) from the header only, or None when the header cannot be read."""
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:  # noqa: BLE001 (any failure means "unknown"; the scan reports it)
        return None
