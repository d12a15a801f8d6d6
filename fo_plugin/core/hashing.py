"""Exact duplicates, cheaply: a hash of each file's bytes (byte-identical copies), a hash of the decoded pixels
(the same image saved in another lossless format or with other metadata) and groups of equal hashes."""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image, ImageOps


def file_hash(path: str, block: int = 1 << 20) -> str:
    """SHA-256 hex digest of the file's content, read in ``block``-byte pieces (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def pixel_hash(path: str) -> str | None:
    """BLAKE2 hex digest of the fully decoded pixels in their native mode (16-bit, alpha and palette kept, so no
    conversion can make two different images equal), with size and mode, EXIF orientation applied; None when the
    file cannot be decoded. Equal digests: identical images whatever the file format or metadata."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            h = hashlib.blake2b(f"{im.size}{im.mode}".encode(), digest_size=20)
            h.update(im.tobytes())
            return h.hexdigest()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def array_hash(x: np.ndarray) -> str:
    """BLAKE2 hex digest of an array's bytes and shape (e.g. a thumbnail: equal thumbnails are candidates for
    identical pixels, confirmed with :func:`pixel_hash`)."""
    h = hashlib.blake2b(str(x.shape).encode(), digest_size=20)
    h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()


def hash_groups(hashes: list[str | None]) -> np.ndarray:
    """Group ids (N,) of items sharing a hash with at least one other item, numbered by first occurrence;
    -1 for unique items and for None (no hash)."""
    first: dict[str, int] = {}
    counts: dict[str, int] = {}
    for h in hashes:
        if h is not None:
            counts[h] = counts.get(h, 0) + 1
    out = np.full(len(hashes), -1, dtype=np.int64)
    for i, h in enumerate(hashes):
        if h is not None and counts[h] > 1:
            out[i] = first.setdefault(h, len(first))
    return out
