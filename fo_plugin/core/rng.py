"""Counter-based random numbers keyed by (seed, sample key, view, slot).

Augmentation parameters drawn this way depend only on the sample and the view, never on batch size,
batch composition or sample order, which is what makes scores reproducible and order-invariant.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash (Wellons), on int64 tensors holding 32-bit values."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    x = x ^ (x >> 16)
    return x


def sample_keys(ids) -> torch.Tensor:
    """Stable 31-bit integer keys from string ids (e.g. FiftyOne sample ids), as an int64 tensor (N,)."""
    import torch

    return torch.tensor([sample_key(i) for i in ids], dtype=torch.int64)


def sample_key(sample_id) -> int:
    """The key of one id (:func:`sample_keys`; no torch needed)."""
    return zlib.crc32(str(sample_id).encode()) & 0x7FFFFFFF


def uniform(keys: torch.Tensor, seed: int, view: int, n: int) -> torch.Tensor:
    """Uniform [0, 1) floats, shape (B, n), a pure function of (key, seed, view, column)."""
    import torch

    keys = keys.to(torch.int64).reshape(-1, 1)
    slots = torch.arange(n, dtype=torch.int64, device=keys.device).reshape(1, -1)
    h = _mix32(keys ^ _mix32(torch.full_like(keys, seed * 7919 + 13)))
    h = _mix32(h + _mix32(torch.full_like(keys, view * 104729 + 7)))
    h = _mix32(h * 31 + slots)
    return (h >> 8).to(torch.float32) / float(1 << 24)
