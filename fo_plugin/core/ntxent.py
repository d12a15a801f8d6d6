"""NT-Xent / InfoNCE loss of SimCLR (Chen et al. 2020), temperature 0.5 as in the SAS code."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Symmetric InfoNCE over 2B views: each view's positive is its twin, the other 2B - 2 views are negatives.

    Args:
        z1, z2: (B, D) projections of two views of the same B images.
    """
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2B, D)
    logits = z @ z.T / temperature  # (2B, 2B)
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, target)
