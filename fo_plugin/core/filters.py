"""Separable image filters as matrices: ``M @ x @ M.T`` filters the last two dims of a batch of square images in two
matrix products (no padding per call; the borders are built into the matrix)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def blur_matrix(n: int, sigma: float) -> torch.Tensor:
    """(n, n) float32 matrix of a 1-D Gaussian blur (radius round(3 sigma), reflected borders)."""
    r = min(n - 1, max(1, int(round(3 * sigma))))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    eye = F.pad(torch.eye(n, dtype=torch.float64)[:, None], (r, r), mode="reflect")  # (n, 1, n + 2r)
    return F.conv1d(eye, (k / k.sum()).view(1, 1, -1))[:, 0].T.float().contiguous()


def box_matrix(n: int, w: int) -> torch.Tensor:
    """(n - w + 1, n) matrix summing every length-``w`` window: ``A @ x @ A.T`` = all w x w window sums."""
    c, r = torch.arange(n)[None], torch.arange(n - w + 1)[:, None]
    return ((c >= r) & (c < r + w)).float()


def separable(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``m @ x @ m.T`` over the last two dims of ``x`` (..., n, n)."""
    return m @ x @ m.T
