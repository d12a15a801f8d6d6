"""Synthetic and real out-of-domain images for planting among ordinary photos (benchmarks and tests).

Each kind is drawn at 2x, 4x or 8x the target side (at random) and downsampled with an antialiasing filter (as photo
datasets are made), from a seeded generator, so a call is reproducible. Real material is mixed in where it is
available offline: ``skimage.data`` crops (text pages, brick / grass / gravel / lunar-surface textures, bright-field
cells, stained tissue, a retinal fundus) at random positions and scales, and MNIST digits (``mnist_digits``).
Everything is uint8 (n, size, size, 3).

Kinds (``KINDS``): documents (text lines or tables on white), textures (periodic / noise patterns, two-colour mapped
or grayscale), line_drawings (dark strokes on white), microscopy (blobs / cells on a dark background, or dark cells
on a bright field, grayscale or one hue; stained-tissue crops), screenshots (UI-like panels, bars, buttons, text),
flat (one colour, faint gradient).
``ood_group`` makes a tight group: jittered crops of ONE image of a kind.
"""

from __future__ import annotations

import gzip
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont

KINDS = ("documents", "textures", "line_drawings", "microscopy", "screenshots", "flat")
_WORDS = "the of and to in is was for on that with as by at from this data image model sample result table figure " \
         "page section total value 2024 10.5 %"


def ood_images(kind: str, n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` distinct images of ``kind`` (see ``KINDS``, or ``"digits"`` for MNIST) -> uint8 (n, size, size, 3)."""
    rng = np.random.default_rng([seed, KINDS.index(kind) if kind in KINDS else 99])
    if kind == "digits":
        return mnist_digits(n, size, seed)
    return np.stack([_downsample(_render(kind, rng, int(rng.choice([2, 4, 8])) * size), size) for _ in range(n)])


def ood_group(kind: str, n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """A tight group: ``n`` jittered crops (shift, 0.85-1 scale, +-8% brightness, noise) of one image of ``kind``
    -> uint8 (n, size, size, 3)."""
    rng = np.random.default_rng([seed, 1000 + (KINDS.index(kind) if kind in KINDS else 99)])
    big = 5 * size
    if kind == "digits":
        base = mnist_digits(1, big, seed)[0]
    else:
        base = _render(kind, rng, big)
    out = []
    for _ in range(n):
        side = int(big * rng.uniform(0.85, 1.0))
        x0, y0 = rng.integers(0, big - side + 1, 2)
        crop = _downsample(base[y0:y0 + side, x0:x0 + side], size).astype(np.float32)
        crop = crop * rng.uniform(0.92, 1.08) + rng.normal(0, 2, crop.shape)
        out.append(np.clip(crop, 0, 255).astype(np.uint8))
    return np.stack(out)


def mnist_digits(n: int, size: int = 32, seed: int = 0, path: str | None = None) -> np.ndarray:
    """``n`` random MNIST test digits (white on black), padded 28 -> 32 and resized to ``size`` -> (n, size, size, 3).

    ``path``: the idx file (default: ``$FO_SSL_SHARED_DATA`` or ``../shared/data`` beside the repository).
    """
    if path is None:
        root = os.environ.get("FO_SSL_SHARED_DATA") or os.path.join(
            os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))),
            "shared", "data")
        path = os.path.join(root, "mnist-test", "t10k-images-idx3-ubyte.gz")
    with gzip.open(path) as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    idx = np.random.default_rng(seed).choice(len(x), n, replace=False)
    x = np.pad(x[idx], ((0, 0), (2, 2), (2, 2)))
    return np.stack([_downsample(np.repeat(d[..., None], 3, -1), size) for d in x])


def _downsample(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (size, size, 3), antialiased."""
    return np.asarray(Image.fromarray(img).resize((size, size), Image.LANCZOS if img.shape[0] > size else
                                                   Image.BICUBIC))


def _render(kind: str, rng: np.random.Generator, r: int) -> np.ndarray:
    """One image of ``kind`` -> uint8 (r, r, 3)."""
    real = _skimage_crop(kind, rng, r) if rng.random() < 0.4 else None
    if real is not None:
        return real
    return {"documents": _document, "textures": _texture, "line_drawings": _line_drawing,
            "microscopy": _microscopy, "screenshots": _screenshot, "flat": _flat}[kind](rng, r)


def _font(px: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _text_line(rng: np.random.Generator, n_words: int) -> str:
    words = _WORDS.split()
    return " ".join(words[i] for i in rng.integers(0, len(words), n_words))


def _document(rng: np.random.Generator, r: int) -> np.ndarray:
    if rng.random() < 0.3:
        return _table(rng, r)
    bg = int(rng.integers(235, 256))
    im = Image.new("L", (r, r), bg)
    d = ImageDraw.Draw(im)
    px = int(r * rng.uniform(0.06, 0.14))
    y = int(rng.integers(0, px))
    ink = int(rng.integers(0, 80))
    while y < r:
        if rng.random() < 0.15:  # paragraph gap
            y += px
            continue
        d.text((int(rng.integers(-px, px)), y), _text_line(rng, 8), fill=ink, font=_font(px))
        y += int(px * rng.uniform(1.2, 1.6))
    return np.repeat(np.asarray(im)[..., None], 3, -1)


def _table(rng: np.random.Generator, r: int) -> np.ndarray:
    """A ruled table of numbers on white."""
    im = Image.new("L", (r, r), int(rng.integers(230, 256)))
    d = ImageDraw.Draw(im)
    rows, cols = int(rng.integers(4, 12)), int(rng.integers(2, 6))
    for i in range(rows + 1):
        d.line((0, i * r / rows, r, i * r / rows), fill=int(rng.integers(0, 120)), width=1)
    for j in range(cols + 1):
        d.line((j * r / cols, 0, j * r / cols, r), fill=int(rng.integers(0, 120)), width=1)
    px = max(6, int(r / rows * 0.6))
    for i in range(rows):
        for j in range(cols):
            d.text((j * r / cols + 2, i * r / rows + 1), str(int(rng.integers(0, 9999))), fill=int(rng.integers(0, 60)),
                   font=_font(px))
    return np.repeat(np.asarray(im)[..., None], 3, -1)


def _two_colour(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Map float (r, r) in [0, 1] to RGB between two random colours (grayscale a third of the time)."""
    if rng.random() < 0.33:
        a, b = np.zeros(3), np.full(3, 255.0)
    else:
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    return np.clip(a + v[..., None] * (b - a), 0, 255).astype(np.uint8)


def _value_noise(rng: np.random.Generator, r: int, octaves: int = 4) -> np.ndarray:
    """Perlin-like fractal value noise in [0, 1]: bicubic-upsampled random grids summed over octaves."""
    out = np.zeros((r, r))
    for o in range(octaves):
        g = 2 ** (o + 2)
        grid = Image.fromarray(rng.random((g, g)).astype(np.float32), mode="F").resize((r, r), Image.BICUBIC)
        out += np.asarray(grid) / 2 ** o
    out -= out.min()
    return out / max(out.max(), 1e-6)


def _texture(rng: np.random.Generator, r: int) -> np.ndarray:
    yy, xx = np.mgrid[0:r, 0:r] / r
    kind = rng.integers(0, 4)
    if kind == 0:  # sum of sinusoids
        v = sum(np.sin(2 * np.pi * (rng.uniform(2, 12) * (np.cos(t) * xx + np.sin(t) * yy)) + rng.uniform(0, 6))
                for t in rng.uniform(0, np.pi, int(rng.integers(1, 4))))
    elif kind == 1:
        v = _value_noise(rng, r)
    elif kind == 2:  # checkerboard
        f = rng.integers(3, 12)
        v = ((np.floor(xx * f) + np.floor(yy * f)) % 2).astype(float)
    else:  # stripes
        t, f = rng.uniform(0, np.pi), rng.uniform(3, 15)
        v = (np.sin(2 * np.pi * f * (np.cos(t) * xx + np.sin(t) * yy)) > rng.uniform(-0.5, 0.5)).astype(float)
    v = np.asarray(v, float)
    v = (v - v.min()) / max(np.ptp(v), 1e-6)
    return _two_colour(v, rng)


def _line_drawing(rng: np.random.Generator, r: int) -> np.ndarray:
    im = Image.new("L", (r, r), int(rng.integers(230, 256)))
    d = ImageDraw.Draw(im)
    w = max(1, int(r * rng.uniform(0.01, 0.04)))
    for _ in range(int(rng.integers(3, 10))):
        k = rng.integers(0, 3)
        pts = rng.uniform(0, r, (int(rng.integers(2, 6)), 2))
        if k == 0:
            d.line([tuple(p) for p in pts], fill=int(rng.integers(0, 60)), width=w)
        elif k == 1:
            x0, y0 = rng.uniform(0, r * 0.7, 2)
            x1, y1 = x0 + rng.uniform(r * 0.1, r * 0.5), y0 + rng.uniform(r * 0.1, r * 0.5)
            d.ellipse((x0, y0, x1, y1), outline=int(rng.integers(0, 60)), width=w)
        else:
            x0, y0 = rng.uniform(0, r * 0.7, 2)
            x1, y1 = x0 + rng.uniform(r * 0.1, r * 0.5), y0 + rng.uniform(r * 0.1, r * 0.5)
            d.rectangle((x0, y0, x1, y1), outline=int(rng.integers(0, 60)), width=w)
    return np.repeat(np.asarray(im)[..., None], 3, -1)


def _microscopy(rng: np.random.Generator, r: int) -> np.ndarray:
    yy, xx = np.mgrid[0:r, 0:r].astype(float)
    v = np.zeros((r, r))
    for _ in range(int(rng.integers(5, 40))):
        cy, cx = rng.uniform(0, r, 2)
        s = r * rng.uniform(0.02, 0.08)
        e = rng.uniform(0.6, 1.6)
        v += rng.uniform(0.4, 1.0) * np.exp(-(((xx - cx) / s) ** 2 * e + ((yy - cy) / s) ** 2 / e) / 2)
    v = np.clip(v + rng.normal(0, 0.03, v.shape), 0, 1)
    if rng.random() < 0.25:  # bright field: dark cells on a light background
        return np.repeat(((1 - 0.8 * v) * 255).astype(np.uint8)[..., None], 3, -1)
    hue = np.eye(3)[rng.integers(0, 3)] if rng.random() < 0.6 else np.ones(3)
    if rng.random() < 0.3:  # two-channel stain: a second hue on part of the blobs
        hue = np.clip(hue + 0.6 * np.eye(3)[rng.integers(0, 3)], 0, 1)
    return np.clip(v[..., None] * hue * 255, 0, 255).astype(np.uint8)


def _screenshot(rng: np.random.Generator, r: int) -> np.ndarray:
    dark = rng.random() < 0.3
    bg = tuple(int(c) for c in (rng.integers(20, 50, 3) if dark else rng.integers(225, 256, 3)))
    im = Image.new("RGB", (r, r), bg)
    d = ImageDraw.Draw(im)
    accent = tuple(int(c) for c in rng.integers(0, 256, 3))
    d.rectangle((0, 0, r, int(r * rng.uniform(0.06, 0.14))), fill=accent)  # title bar
    if rng.random() < 0.6:  # side bar
        d.rectangle((0, 0, int(r * rng.uniform(0.15, 0.3)), r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    px = int(r * rng.uniform(0.05, 0.09))
    ink = (220, 220, 220) if dark else (30, 30, 30)
    for _ in range(int(rng.integers(3, 9))):
        x, y = rng.integers(0, r, 2)
        if rng.random() < 0.4:  # button / panel
            w, h = rng.integers(r // 8, r // 2), rng.integers(r // 16, r // 5)
            d.rounded_rectangle((int(x), int(y), int(x + w), int(y + h)), radius=3,
                                fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        else:
            d.text((int(x), int(y)), _text_line(rng, 4), fill=ink, font=_font(px))
    return np.asarray(im)


def _flat(rng: np.random.Generator, r: int) -> np.ndarray:
    c = rng.uniform(0, 255, 3)
    g = np.linspace(-1, 1, r)[None, :, None] * rng.uniform(0, 12, 3)  # faint horizontal gradient
    return np.clip(c + g + np.zeros((r, 1, 1)), 0, 255).astype(np.uint8)


_SKIMAGE = {"documents": ("page", "text"), "textures": ("brick", "grass", "gravel", "moon"),
            "microscopy": ("cell", "immunohistochemistry", "microaneurysms", "retina")}
_SKIMAGE_CACHE: dict[str, np.ndarray | None] = {}


def _skimage_crop(kind: str, rng: np.random.Generator, r: int) -> np.ndarray | None:
    """A random crop (a fifth to all of the shorter side) of a ``skimage.data`` image of ``kind``, or None when
    there is none for the kind or scikit-image / the file is not available offline."""
    names = _SKIMAGE.get(kind)
    if not names:
        return None
    name = names[int(rng.integers(0, len(names)))]
    if name not in _SKIMAGE_CACHE:
        try:
            import skimage.data

            _SKIMAGE_CACHE[name] = np.asarray(getattr(skimage.data, name)())
        except Exception:  # not installed, or the file needs a download
            _SKIMAGE_CACHE[name] = None
    src = _SKIMAGE_CACHE[name]
    if src is None:
        return None
    if src.ndim == 2:
        src = np.repeat(src[..., None], 3, -1)
    src = src[..., :3].astype(np.uint8)
    h, w = src.shape[:2]
    side = int(min(h, w) * rng.uniform(0.2, 1.0))
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = src[y0:y0 + side, x0:x0 + side]
    return np.asarray(Image.fromarray(crop).resize((r, r), Image.BICUBIC))
