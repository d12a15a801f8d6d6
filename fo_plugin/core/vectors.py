"""Checks on embedding matrices before they are stored or used: a NaN, inf or all-zero row (a failed decode, a
model that overflowed in half precision) would otherwise poison every distance and nearest-neighbour result."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def valid_rows(z: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Bool mask (N,) of the rows of an (N, D) embedding matrix that are all finite and not all zero
    (a torch tensor in, a tensor out on the same device; a numpy array in, an array out)."""
    if isinstance(z, np.ndarray):
        if z.ndim != 2:
            raise ValueError(f"expected an (N, D) matrix, got shape {z.shape}")
        return np.isfinite(z).all(axis=1) & (z != 0).any(axis=1)
    if z.ndim != 2:
        raise ValueError(f"expected an (N, D) matrix, got shape {tuple(z.shape)}")
    import torch

    return torch.isfinite(z).all(dim=1) & (z != 0).any(dim=1)
