"""The offline default backbone: a small SimCLR proxy (conv encoder + SAS-style projection head).

The projection head follows the SAS authors' ``LinearCritic``: Linear(d, d) -> BN -> ReLU -> Linear(d, 128) -> BN
(no affine). ``features`` is the encoder output (what gets stored as the embedding); ``forward`` is the projection
(what SimCLR's loss, CL-Core's similarity and the influence loss use).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@dataclass
class ProxyConfig:
    """Architecture of the proxy.

    Args:
        width (32): channels of the first conv; doubled at each of the three stride-2 stages.
        proj_dim (128): projection output size.
        image_size (32): input side the proxy is trained and run at.
        mean, std: input normalisation (CIFAR statistics by default).
    """

    width: int = 32
    proj_dim: int = 128
    image_size: int = 32
    mean: tuple = CIFAR_MEAN
    std: tuple = CIFAR_STD


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ConvEncoder(nn.Module):
    """Six 3x3 convs in three stride-2 stages, global average pooled: (B, 3, S, S) -> (B, 8 * width)."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            *_block(3, w, 1), *_block(w, 2 * w, 2), *_block(2 * w, 2 * w, 1),
            *_block(2 * w, 4 * w, 2), *_block(4 * w, 4 * w, 1), *_block(4 * w, 8 * w, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.out_dim = 8 * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ProjectionHead(nn.Module):
    """SAS ``LinearCritic`` projection: (B, d) -> (B, proj_dim)."""

    def __init__(self, dim: int, proj_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
            nn.Linear(dim, proj_dim, bias=False), nn.BatchNorm1d(proj_dim, affine=False),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class ProxyModel(nn.Module):
    """Encoder + projector taking images in [0, 1]; normalisation is part of the model."""

    def __init__(self, cfg: ProxyConfig | None = None):
        super().__init__()
        self.cfg = cfg or ProxyConfig()
        self.encoder = ConvEncoder(self.cfg.width)
        self.projector = ProjectionHead(self.encoder.out_dim, self.cfg.proj_dim)
        self.register_buffer("mean", torch.tensor(self.cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.cfg.std).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone embedding, (B, 3, S, S) in [0, 1] -> (B, 8 * width)."""
        return self.encoder((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projection output, (B, 3, S, S) in [0, 1] -> (B, proj_dim)."""
        return self.projector(self.features(x))


def save_proxy(model: ProxyModel, path: str, extra: dict | None = None) -> None:
    """Save weights with their architecture and any run metadata (augmentations, seed, training history)."""
    torch.save({"format": "fo_plugin.proxy/1", "config": asdict(model.cfg), "state_dict": model.state_dict(),
                "extra": extra or {}}, path)


def load_proxy(path: str, map_location="cpu") -> tuple[ProxyModel, dict]:
    """Load a checkpoint written by :func:`save_proxy`; returns ``(model in eval mode, extra)``."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != "fo_plugin.proxy/1":
        raise ValueError(f"{path} is not a proxy checkpoint written by fo_plugin (missing format tag)")
    cfg = ProxyConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["config"].items()})
    model = ProxyModel(cfg)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt.get("extra", {})
