"""Robust image decoding: every file yields either a fixed-size RGB array or an error message.

Grayscale (8, 16 and 32-bit integer, 32-bit float), palette, RGBA and CMYK images are converted to RGB; tiny images
are upsampled; huge JPEGs are decoded at reduced resolution (``draft``). Missing, truncated, video and other non-image
files produce an error string instead of an exception, so one bad file never stops a run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

Image.MAX_IMAGE_PIXELS = 20_000 * 20_000  # large photos are fine; decompression bombs beyond this are refused
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts")


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """A 16 / 32-bit integer or float grayscale image -> 8-bit "L" with its true content (PIL's own conversion
    clips at 255, so a 16-bit image turns white).

    Scale: ``I;16*`` by its range (/ 257). ``I`` / ``F``: the smallest standard range holding the values ([0, 1] for
    float, [0, 255], [0, 65535]), else a min-max stretch; NaN / inf become 0.
    """
    a = np.nan_to_num(np.asarray(im).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)  # (H, W)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode.startswith("I;16") and not im.mode.endswith("S"):
        a = a / 257.0
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        a = a * 255.0
    elif lo >= 0 and hi <= 255:
        pass
    elif lo >= 0 and hi <= 65535:
        a = a / 257.0
    else:
        a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def load_rgb(path: str, size: int) -> tuple[np.ndarray | None, str | None]:
    """Decode ``path`` to uint8 (size, size, 3): shorter side resized to ``size``, centre crop.

    Returns:
        ``(array, None)`` on success, ``(None, message)`` when the file cannot be used.
    """
    if not os.path.exists(path):
        return None, f"missing file: {path}"
    if path.lower().endswith(VIDEO_EXTENSIONS):
        return None, f"not an image (video file): {path}"
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (size * 2, size * 2))  # decode huge JPEGs at a fraction of full size
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I", "F") or im.mode.startswith("I;16"):
                im = _high_depth_to_l(im)
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV -> RGB
            im = ImageOps.fit(im, (size, size), method=Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8), None
    except Image.DecompressionBombError as e:
        return None, f"image too large: {e}"
    except Image.UnidentifiedImageError:
        return None, f"not an image (unrecognised file format): {path}"
    except (OSError, SyntaxError, ValueError) as e:  # truncated, corrupt, not an image
        return None, f"cannot decode image ({type(e).__name__}: {e})"


def iter_decoded(paths: Sequence[str], size: int, batch_size: int = 256, workers: int | None = None
                 ) -> Iterator[tuple[int, np.ndarray, np.ndarray, list[str | None]]]:
    """Decode ``paths`` in order, in batches, with a thread pool (PIL releases the GIL while decoding).

    Yields:
        ``(start, images, ok, errors)``: the batch's offset into ``paths``, uint8 (B, size, size, 3) with zeros where
        decoding failed, bool (B,) success mask, and the per-file error messages (None where decoding worked).
    """
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        pending = None
        for start in range(0, len(paths), batch_size):
            fut = pool.map(lambda p: load_rgb(p, size), paths[start:start + batch_size])
            if pending is not None:
                yield _collect(*pending, size)
            pending = (start, fut)
        if pending is not None:
            yield _collect(*pending, size)


def _collect(start: int, results, size: int):
    results = list(results)
    images = np.zeros((len(results), size, size, 3), dtype=np.uint8)
    ok = np.zeros(len(results), dtype=bool)
    errors: list[str | None] = []
    for i, (arr, err) in enumerate(results):
        if arr is not None:
            images[i], ok[i] = arr, True
        errors.append(err)
    return start, images, ok, errors


def to_float(batch_uint8, device) -> torch.Tensor:
    """uint8 (B, H, W, 3) numpy/tensor -> float (B, 3, H, W) in [0, 1] on ``device``."""
    import torch

    t = torch.as_tensor(np.asarray(batch_uint8)).to(device, non_blocking=True)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def image_sizes(paths: Sequence[str], workers: int | None = None) -> np.ndarray:
    """Original (H, W) of each file from its header alone (cheap: no decoding); (0, 0) where it cannot be read."""

    def size(p: str) -> tuple[int, int]:
        try:
            with Image.open(p) as im:
                w, h = im.size
                return (h, w) if im.getexif().get(0x0112, 1) < 5 else (w, h)  # EXIF 5-8: turned 90 degrees
        except Exception:  # missing, not an image: the decode step reports why
            return (0, 0)

    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        return np.array(list(pool.map(size, paths)), dtype=np.int64).reshape(-1, 2)
