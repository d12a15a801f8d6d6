"""Content hashes that key cached artifacts (fitted factors, decoded images) to the exact model and data they came
from, so a cache is never reused for different weights or images."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

_CHUNK = 1 << 24  # rows of a large array are hashed in ~16 MB pieces (memmaps are never loaded whole)


def _update_tensor(h, t: torch.Tensor) -> None:
    import torch

    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def model_fingerprint(module: nn.Module) -> str:
    """sha256 (hex) of a module's state dict: names, dtypes, shapes and bytes of every tensor, in name order."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            _update_tensor(h, t)
        else:  # extra state
            h.update(repr(t).encode())
    return h.hexdigest()


def array_fingerprint(a: np.ndarray) -> str:
    """sha256 (hex) of an array's dtype, shape and bytes (an (N, ...) memmap is read in pieces)."""
    h = hashlib.sha256(f"{a.dtype}{a.shape}".encode())
    if a.ndim == 0:
        h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()
    rows = max(1, _CHUNK // max(1, a[:1].nbytes))
    for s in range(0, len(a), rows):
        h.update(np.ascontiguousarray(a[s:s + rows]).tobytes())
    return h.hexdigest()


def fingerprint(*parts, length: int = 20) -> str:
    """A stable hash (hex, ``length`` characters) of JSON-serialisable ``parts`` (settings, ids, model hashes;
    dict keys sorted, other values by ``str``); long lists of ids are hashed one by one."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, (list, tuple)) and p and all(isinstance(x, str) for x in p):
            for x in p:
                h.update(x.encode())
                h.update(b"\0")
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"|")
    return h.hexdigest()[:length]


def dict_fingerprint(d: dict) -> str:
    """sha256 (hex) of a JSON-serialisable dict (keys sorted; other values by ``str``)."""
    return fingerprint(d, length=64)
