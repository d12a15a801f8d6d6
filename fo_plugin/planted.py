"""Planted near-duplicates and outliers for measuring curation quality on real images (tests and benchmarks)."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageEnhance

DUPLICATE_KINDS = ("exact", "resized", "reencoded", "cropped", "colour_shifted")


def variant(path: str, kind: str, out_path: str) -> str:
    """Write a near-duplicate of the image at ``path``: an exact byte copy, a 2x upscale, a JPEG re-encode at
    quality 40, a 28/32 centre crop resized back, or a colour shift (saturation x1.3, brightness x1.1)."""
    if kind == "exact":
        with open(path, "rb") as src, open(out_path, "wb") as dst:
            dst.write(src.read())
        return out_path
    im = Image.open(path).convert("RGB")
    w, h = im.size
    if kind == "resized":
        im = im.resize((2 * w, 2 * h), Image.Resampling.BICUBIC)
    elif kind == "reencoded":
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=40)
        im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    elif kind == "cropped":
        c = max(1, w // 16)
        im = im.crop((c, c, w - c, h - c)).resize((w, h), Image.Resampling.BICUBIC)
    elif kind == "colour_shifted":
        im = ImageEnhance.Brightness(ImageEnhance.Color(im).enhance(1.3)).enhance(1.1)
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {DUPLICATE_KINDS}")
    im.save(out_path, quality=95)
    return out_path


def plant_duplicates(paths: list[str], folder: str, per_kind: int = 5, seed: int = 0) -> list[dict]:
    """For each kind, ``per_kind`` variants of randomly chosen distinct sources. Returns rows
    ``{"filepath", "source", "kind"}`` (``source`` is the index into ``paths``)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    sources = rng.choice(len(paths), size=per_kind * len(DUPLICATE_KINDS), replace=False)
    rows = []
    for n, src in enumerate(sources):
        kind = DUPLICATE_KINDS[n // per_kind]
        out = os.path.join(folder, f"dup_{kind}_{n:04d}.png" if kind != "exact" else f"dup_exact_{n:04d}.jpg")
        rows.append({"filepath": variant(paths[src], kind, out), "source": int(src), "kind": kind})
    return rows


def plant_outliers(folder: str, scattered: int = 20, grouped: int = 20, seed: int = 0) -> list[dict]:
    """Out-of-domain images: ``scattered`` MNIST digits (different digits, drawn far apart) and a ``grouped``
    cluster of near-identical ones (the same digit, lightly jittered), as 32x32 RGB PNGs. Rows
    ``{"filepath", "kind"}`` with kind ``"scattered"`` or ``"grouped"``."""
    from .data import mnist_images

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    digits = mnist_images(2000)
    rows = []
    for n, i in enumerate(rng.choice(len(digits), scattered, replace=False)):
        p = os.path.join(folder, f"ood_scattered_{n:03d}.png")
        Image.fromarray(digits[i]).save(p)
        rows.append({"filepath": p, "kind": "scattered"})
    base = digits[0].astype(np.int16)
    for n in range(grouped):
        shifted = np.roll(base, shift=(int(rng.integers(-1, 2)), int(rng.integers(-1, 2))), axis=(0, 1))
        noisy = np.clip(shifted + rng.integers(-8, 9, base.shape), 0, 255).astype(np.uint8)
        p = os.path.join(folder, f"ood_grouped_{n:03d}.png")
        Image.fromarray(noisy).save(p)
        rows.append({"filepath": p, "kind": "grouped"})
    return rows


def plant_ood_kinds(folder: str, per_kind: int = 10, group: int = 20, seed: int = 0) -> list[dict]:
    """Out-of-domain images of every kind of :mod:`fo_plugin.core.ood_images` (``per_kind`` scattered images each),
    plus one tight group of ``group`` MNIST digits, saved as 32 x 32 JPEG (quality 75, like the CIFAR files, so the
    file format gives nothing away). Returns rows ``{"filepath", "kind"}`` (kind ``"group"`` for the digits)."""
    from .core.ood_images import KINDS, ood_group, ood_images

    os.makedirs(folder, exist_ok=True)
    rows = []
    batches = [(kind, ood_images(kind, per_kind, 32, seed)) for kind in KINDS]
    batches.append(("group", ood_group("digits", group, 32, seed)))
    for kind, images in batches:
        for n, arr in enumerate(images):
            path = os.path.join(folder, f"ood_{kind}_{n:03d}.jpg")
            Image.fromarray(arr).save(path, quality=75)
            rows.append({"filepath": path, "kind": kind})
    return rows


def random_cnn_embedding(images: np.ndarray, seed: int = 0):
    """Stand-in SSL embedding for benchmarks and tests that train no proxy: a seeded, randomly initialised CNN's
    pooled features, uint8 (N, S, S, 3) -> (N, 128)."""
    import torch

    torch.manual_seed(seed)
    c = torch.nn
    net = c.Sequential(c.Conv2d(3, 32, 3, padding=1), c.ReLU(), c.Conv2d(32, 32, 3, padding=1), c.ReLU(),
                       c.MaxPool2d(2), c.Conv2d(32, 64, 3, padding=1), c.ReLU(), c.MaxPool2d(2),
                       c.Conv2d(64, 128, 3, padding=1), c.ReLU(), c.AdaptiveAvgPool2d(1), c.Flatten()).eval()
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.cat([net(x[s:s + 1024]) for s in range(0, len(x), 1024)])
