"""Image properties a subgroup audit can bin: brightness, contrast, sharpness, background uniformity.

The influence paper reports that highly influential images often have plain backgrounds and that hard faces
over-represent poor lighting; these make such claims checkable on one's own data.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PROPERTIES = ("brightness", "contrast", "sharpness", "background_uniformity")


def image_properties(images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 (N, S, S, 3) -> per-image properties (N,) each:

    brightness: mean luminance in [0, 1]; contrast: luminance standard deviation; sharpness: variance of the
    Laplacian of the luminance; background_uniformity: 1 - 4 x the luminance standard deviation of the outer
    border (1/8 of the side), clipped to [0, 1] (1 = a flat border, as on a plain background).
    """
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255
    y = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)  # (N, 1, S, S)
    lap = F.conv2d(y, torch.tensor([[[[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]]]), padding=1)[:, :, 1:-1, 1:-1]
    s = y.shape[-1]
    b = max(1, s // 8)
    ring = torch.ones(s, s, dtype=torch.bool)
    ring[b:-b, b:-b] = False
    border = y[:, 0][:, ring]  # (N, ring pixels)
    return {
        "brightness": y.mean(dim=(1, 2, 3)).numpy(),
        "contrast": y.std(dim=(1, 2, 3)).numpy(),
        "sharpness": lap.var(dim=(1, 2, 3)).numpy(),
        "background_uniformity": (1 - 4 * border.std(1)).clamp(0, 1).numpy(),
    }


def quartile_bins(values: np.ndarray) -> np.ndarray:
    """Bin labels by quartile: "q1 (low)" ... "q4 (high)"."""
    edges = np.quantile(values, [0.25, 0.5, 0.75])
    names = np.array(["q1 (low)", "q2", "q3", "q4 (high)"])
    return names[np.searchsorted(edges, values, side="right")]
