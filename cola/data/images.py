"""Image and mask file reading shared by every DataModule (one place for PIL decoding and its errors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "load_binary_mask", "load_frame", "load_image"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the exceptions PIL raises on a file it cannot decode (plus a truncated file's EOFError)
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


def load_image(path: str | Path, *, hint: str = "") -> Image.Image:
    """Opens an image as RGB.

    Args:
        path: the image file.
        hint: appended to the not-found message (e.g. where the dataset comes from).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file exists but cannot be decoded (the error names it).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} does not exist{'; ' + hint if hint else ''}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot decode image {path}: {e}") from e


def load_frame(path: Path, size: int) -> np.ndarray:
    """(S, S, 3) uint8 RGB, resized bilinearly when needed (aspect not kept, as the official AV pipelines)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def load_binary_mask(path: Path, size: int) -> np.ndarray:
    """(S, S) bool; any non-zero pixel is foreground; resized with nearest neighbour."""
    with Image.open(path) as img:
        if img.mode == "P":  # palette indices say nothing about colour; compare the colours
            img = img.convert("RGB")
        arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., :3].any(axis=-1)  # ignore an alpha channel
    fg = Image.fromarray((arr != 0).astype(np.uint8) * 255)
    if fg.size != (size, size):
        fg = fg.resize((size, size), Image.NEAREST)
    return np.asarray(fg) > 0
