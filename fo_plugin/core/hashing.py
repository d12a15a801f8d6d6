"""Exact duplicates, cheaply: a hash of each file's bytes (byte-identical copies) and groups of equal hashes.
(The same pixels saved in another format are not exact copies here; the near-duplicate check confirms them.)"""

from __future__ import annotations

import hashlib

import numpy as np


def file_hash(path: str, block: int = 1 << 20) -> str:
    """SHA-256 hex digest of the file's content, read in ``block``-byte pieces (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
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
