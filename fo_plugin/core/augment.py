"""Batched SimCLR augmentation on the device (Chen et al. 2020; the SAS recipe: crop, flip, colour distortion s=0.5).

All ops act on a whole batch at once (one ``grid_sample`` for crop+flip+resize, tensor arithmetic for colour),
so augmentation runs where the model runs. Parameters come from :mod:`rng`, keyed by sample and view, so a view
is the same whatever batch it lands in.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from . import rng

_GRAY = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """SimCLR-style augmentation.

    Args:
        size (32): output side in pixels.
        scale ((0.2, 1.0)): area fraction range of the random resized crop.
        ratio ((3/4, 4/3)): aspect-ratio range of the crop.
        flip_p (0.5): probability of a horizontal flip.
        jitter_p (0.8): probability of colour jitter.
        strength (0.5): SimCLR colour-distortion strength s (brightness/contrast/saturation 0.8 s, hue 0.2 s).
        gray_p (0.2): probability of converting to grayscale.
    """

    size: int = 32
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_p: float = 0.8
    strength: float = 0.5
    gray_p: float = 0.2

    @classmethod
    def identity(cls, size: int = 32) -> AugmentConfig:
        """No augmentation: every view is the resized image itself."""
        return cls(size=size, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, gray_p=0.0)

    @property
    def is_identity(self) -> bool:
        return (self.scale == (1.0, 1.0) and self.ratio == (1.0, 1.0) and self.flip_p == 0
                and self.jitter_p == 0 and self.gray_p == 0)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> AugmentConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a float batch (B, 3, H, W) to (B, 3, size, size) (antialiased when shrinking)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _gray(x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 1, H, W)
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _hue_shift(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate chroma in YIQ space by ``turns`` of a full turn (a linear stand-in for an HSV hue shift)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=x.device, dtype=x.dtype)
    from_yiq = torch.linalg.inv(to_yiq)
    theta = 2 * math.pi * turns  # (B,)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.zeros(x.shape[0], 3, 3, device=x.device, dtype=x.dtype)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = from_yiq @ rot @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", m, x)


def augment(images: torch.Tensor, keys: torch.Tensor, cfg: AugmentConfig, seed: int, view: int) -> torch.Tensor:
    """One augmented view of each image.

    Args:
        images: float (B, 3, H, W) in [0, 1], on the device.
        keys: int64 (B,) per-sample keys (see :func:`rng.sample_keys`).
        cfg: the augmentation recipe.
        seed, view: with the key, they fix every random choice.

    Returns:
        float (B, 3, cfg.size, cfg.size) in [0, 1].
    """
    if cfg.is_identity:
        return resize(images, cfg.size)
    b, dev = images.shape[0], images.device
    u = rng.uniform(keys, seed, view, 12).to(dev)  # (B, 12)

    # Random resized crop + flip + resize: one affine grid per sample.
    area = cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * u[:, 0]
    log_r = math.log(cfg.ratio[0]) + (math.log(cfg.ratio[1]) - math.log(cfg.ratio[0])) * u[:, 1]
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (1 - w) * (2 * u[:, 2] - 1)
    cy = (1 - h) * (2 * u[:, 3] - 1)
    flip = torch.where(u[:, 4] < cfg.flip_p, -1.0, 1.0).to(dev)
    theta = torch.zeros(b, 2, 3, device=dev, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, [b, 3, cfg.size, cfg.size], align_corners=False)
    src = resize(images, max(cfg.size, min(images.shape[-2:]))) if images.shape[-1] > 2 * cfg.size else images
    x = F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # Colour jitter (brightness, contrast, saturation, hue), applied with probability jitter_p.
    s = cfg.strength
    jit = (u[:, 5] < cfg.jitter_p).view(b, 1, 1, 1)
    bri = (1 + 0.8 * s * (2 * u[:, 6] - 1)).view(b, 1, 1, 1)
    con = (1 + 0.8 * s * (2 * u[:, 7] - 1)).view(b, 1, 1, 1)
    sat = (1 + 0.8 * s * (2 * u[:, 8] - 1)).view(b, 1, 1, 1)
    hue = 0.2 * s * (2 * u[:, 9] - 1)
    y = (x * bri).clamp(0, 1)
    m = _gray(y).mean(dim=(2, 3), keepdim=True)
    y = ((y - m) * con + m).clamp(0, 1)
    g = _gray(y)
    y = ((y - g) * sat + g).clamp(0, 1)
    y = _hue_shift(y, hue).clamp(0, 1)
    x = torch.where(jit, y, x)

    # Random grayscale.
    gray = (u[:, 10] < cfg.gray_p).view(b, 1, 1, 1)
    x = torch.where(gray, _gray(x).expand_as(x), x)
    return x
