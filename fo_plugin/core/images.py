"""Robust image decoding: every file yields either a fixed-size RGB array or an error message.

Grayscale, palette, RGBA and CMYK images are converted to RGB; tiny images are upsampled; huge JPEGs are
decoded at reduced resolution (``draft``). Missing, truncated and non-image files produce an error string
instead of an exception, so one bad file never stops a run.
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


def load_rgb(path: str, size: int) -> tuple[np.ndarray | None, str | None]:
    """Decode ``path`` to uint8 (size, size, 3): shorter side resized to ``size``, centre crop.

    Returns:
        ``(array, None)`` on success, ``(None, message)`` when the file cannot be used.
    """
    if not os.path.exists(path):
        return None, f"missing file: {path}"
    try:
        with Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (size * 2, size * 2))  # decode huge JPEGs at a fraction of full size
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert("RGB")  # L, I, F, CMYK, YCbCr -> RGB
            im = ImageOps.fit(im, (size, size), method=Image.Resampling.BICUBIC)
            return np.asarray(im, dtype=np.uint8), None
    except Image.DecompressionBombError as e:
        return None, f"image too large: {e}"
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
