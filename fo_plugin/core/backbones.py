"""One factory for every embedding model: ``load_backbone(spec)``.

Kinds:
    ``proxy``: our SimCLR proxy from a checkpoint written by :func:`models.save_proxy` (the offline default).
    ``open_clip``: an open_clip architecture by name with a pretrained tag, or a local checkpoint file.
    ``torchvision``: a torchvision architecture by name with a local weights file (classifier removed).
    ``torchscript``: a TorchScript file taking ImageNet-normalised (B, 3, S, S) images and returning (B, D).

Every backbone takes float images in [0, 1] at ``image_size`` and returns (B, D) features. Nothing is downloaded
unless the user names a pretrained tag, and then a failure says what is missing and how to supply it.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .models import ProxyModel, load_proxy

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINDS = ("proxy", "open_clip", "torchvision", "torchscript")


@dataclass
class BackboneSpec:
    """What to load.

    Args:
        kind ("proxy"): one of ``KINDS``.
        name (None): architecture name (open_clip / torchvision).
        checkpoint (None): local weights / checkpoint / TorchScript file.
        pretrained (None): open_clip pretrained tag (needs the weights in the local cache when offline).
        image_size (None): input side; defaults to the model's own.
    """

    kind: str = "proxy"
    name: str | None = None
    checkpoint: str | None = None
    pretrained: str | None = None
    image_size: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Backbone(nn.Module):
    """Images in [0, 1] -> features, with the model's own resizing and normalisation."""

    def __init__(self, net: nn.Module, image_size: int, mean, std, spec: BackboneSpec, proxy: ProxyModel | None = None):
        super().__init__()
        self.net, self.image_size, self.spec, self.proxy = net, image_size, spec, proxy
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.proxy is not None:
            return self.proxy.features(x)
        x = (x - self.mean) / self.std
        if self.spec.kind == "torchscript":
            x = x.contiguous()  # NCHW: a scripted model may reshape its input with .view (embed_array gives NHWC)
        return self.net(x)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The SSL projection output (proxy only); other backbones return their features."""
        return self.proxy(x) if self.proxy is not None else self(x)


class BackboneUnavailable(RuntimeError):
    """The weights a backbone needs are not on this machine."""


def _need_file(path: str | None, what: str) -> str:
    if not path:
        raise BackboneUnavailable(f"{what} needs a local weights file: pass checkpoint=<path>")
    if not os.path.isfile(path):
        raise BackboneUnavailable(f"{what}: checkpoint file not found: {path}")
    return path


def load_backbone(spec: BackboneSpec | dict) -> Backbone:
    """Build the backbone described by ``spec`` (on CPU, eval mode)."""
    spec = BackboneSpec(**spec) if isinstance(spec, dict) else spec
    if spec.kind == "proxy":
        model, _ = load_proxy(_need_file(spec.checkpoint, "the proxy backbone"))
        c = model.cfg
        return Backbone(nn.Identity(), spec.image_size or c.image_size, c.mean, c.std, spec, proxy=model).eval()
    if spec.kind == "open_clip":
        return _open_clip(spec).eval()
    if spec.kind == "torchvision":
        return _torchvision(spec).eval()
    if spec.kind == "torchscript":
        net = torch.jit.load(_need_file(spec.checkpoint, "the torchscript backbone"), map_location="cpu")
        return Backbone(net, spec.image_size or 224, IMAGENET_MEAN, IMAGENET_STD, spec).eval()
    raise ValueError(f"unknown backbone kind {spec.kind!r}; expected one of {KINDS}")


class _ClipImage(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.encode_image(x)


def _open_clip(spec: BackboneSpec) -> Backbone:
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - open-clip-torch is a dependency
        raise BackboneUnavailable("open_clip backbones need `pip install open-clip-torch`") from e
    if not spec.name:
        raise ValueError("an open_clip backbone needs name=<architecture>, e.g. 'ViT-B-32'")
    if spec.name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {spec.name!r}")
    source = spec.checkpoint or spec.pretrained
    if spec.checkpoint:
        _need_file(spec.checkpoint, f"open_clip {spec.name}")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(spec.name, pretrained=source)
    except RuntimeError as e:
        raise BackboneUnavailable(
            f"open_clip weights {spec.name}/{spec.pretrained} are not available on this machine ({e}). "
            "Download them where there is network access and pass the file as checkpoint=<path>."
        ) from e
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", model.visual.image_size)
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    return Backbone(_ClipImage(model), spec.image_size or int(size), tuple(mean), tuple(std), spec)


def _torchvision(spec: BackboneSpec) -> Backbone:
    import torchvision

    if not spec.name:
        raise ValueError("a torchvision backbone needs name=<architecture>, e.g. 'resnet18'")
    if spec.name not in torchvision.models.list_models():
        raise ValueError(f"unknown torchvision architecture {spec.name!r}")
    path = _need_file(spec.checkpoint, f"torchvision {spec.name}")
    net = torchvision.models.get_model(spec.name, weights=None)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    net.load_state_dict(state)
    for head in ("fc", "classifier", "heads", "head"):
        if hasattr(net, head):
            setattr(net, head, nn.Identity())
            break
    return Backbone(net, spec.image_size or 224, IMAGENET_MEAN, IMAGENET_STD, spec)
