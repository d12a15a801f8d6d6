"""Planted near-duplicate transforms: what real duplicates look like (re-framed, re-scaled, flipped, slightly rotated,
recoloured, re-compressed copies), as pure functions on uint8 (H, W, 3) arrays driven by a numpy Generator.

Used to plant duplicates for benchmarks and tests of the near-duplicate verifier. Parameter ranges:
shift up to 15% of the side; crops keeping 60-90% of the area (aspect 3/4-4/3) resized back; rescale 0.7-1.4x about
the centre (borders reflected); horizontal flip; rotation 3-10 degrees; brightness / contrast 0.6-1.4x, saturation
0.3-1.7x, hue +-0.15 turn; grayscale; JPEG quality 20-40; ``combo``: two different kinds above, one after the other.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance

KINDS = ("shift", "crop", "rescale", "flip", "rotate", "color", "grayscale", "jpeg", "combo")


def _pil(x: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(x, dtype=np.uint8))


def _reflect_pad(x: np.ndarray, p: int) -> np.ndarray:
    return np.pad(x, ((p, p), (p, p), (0, 0)), mode="reflect") if p > 0 else x


def shift(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Translate by 5-15% of the side in each axis (random signs; one axis may stay), borders reflected."""
    h, w = x.shape[:2]
    d = [int(round(rng.uniform(0.05, 0.15) * s * rng.choice([-1, 1]))) for s in (h, w)]
    if rng.random() < 0.3:
        d[int(rng.integers(2))] = 0
    p = max(abs(d[0]), abs(d[1]))
    big = _reflect_pad(x, p)
    return big[p - d[0]:p - d[0] + h, p - d[1]:p - d[1] + w].copy()


def crop(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop keeping 60-90% of the area (aspect 3/4-4/3, anywhere in the image), resized back."""
    h, w = x.shape[:2]
    area, aspect = rng.uniform(0.6, 0.9), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch = int(round(min(h, np.sqrt(area * h * w / aspect))))
    cw = int(round(min(w, area * h * w / ch)))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return np.asarray(_pil(x).crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BICUBIC))


def rescale(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Zoom about the centre by 0.7-0.9x or 1.1-1.4x (log-uniform), same output size; zooming out reflects the
    borders."""
    h, w = x.shape[:2]
    s = float(np.exp(rng.uniform(np.log(1.1), np.log(1.4))))
    s = s if rng.random() < 0.5 else float(np.exp(rng.uniform(np.log(0.7), np.log(0.9))))
    nh, nw = max(2, int(round(h * s))), max(2, int(round(w * s)))
    im = np.asarray(_pil(x).resize((nw, nh), Image.Resampling.BICUBIC))
    if s < 1:
        p = max(h - nh, w - nw)
        im = _reflect_pad(im, min(p, nh - 1, nw - 1))
        while im.shape[0] < h or im.shape[1] < w:  # reflect padding is limited to the image size
            im = _reflect_pad(im, min(im.shape[0], im.shape[1]) - 1)
    top, left = (im.shape[0] - h) // 2, (im.shape[1] - w) // 2
    return im[top:top + h, left:left + w].copy()


def flip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal mirror image."""
    return x[:, ::-1].copy()


def rotate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate by 3-10 degrees either way about the centre, borders reflected (no black corners)."""
    h, w = x.shape[:2]
    angle = rng.uniform(3, 10) * rng.choice([-1, 1])
    p = max(h, w) // 4
    big = _pil(_reflect_pad(x, p)).rotate(angle, resample=Image.Resampling.BICUBIC)
    return np.asarray(big)[p:p + h, p:p + w].copy()


def _hue(x: np.ndarray, turn: float) -> np.ndarray:
    hsv = np.asarray(_pil(x).convert("HSV")).copy()
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + int(round(turn * 256))) % 256).astype(np.uint8)
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def color(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness and contrast 0.6-1.4x, saturation 0.3-1.7x, hue rotated by up to 0.15 turn, in random order."""
    ops = [lambda im: ImageEnhance.Brightness(im).enhance(rng.uniform(0.6, 1.4)),
           lambda im: ImageEnhance.Contrast(im).enhance(rng.uniform(0.6, 1.4)),
           lambda im: ImageEnhance.Color(im).enhance(rng.uniform(0.3, 1.7)),
           lambda im: _pil(_hue(np.asarray(im), rng.uniform(-0.15, 0.15)))]
    im = _pil(x)
    for k in rng.permutation(len(ops)):
        im = ops[k](im)
    return np.asarray(im.convert("RGB"))


def grayscale(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Luma (ITU-R 601) replicated to three channels."""
    return np.asarray(_pil(x).convert("L").convert("RGB"))


def jpeg(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Re-encoded as JPEG at quality 20-40 (4:2:0 chroma) and decoded."""
    buf = io.BytesIO()
    _pil(x).save(buf, format="JPEG", quality=int(rng.integers(20, 41)))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


_SINGLE = {"shift": shift, "crop": crop, "rescale": rescale, "flip": flip, "rotate": rotate, "color": color,
           "grayscale": grayscale, "jpeg": jpeg}


def combo(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two different single kinds, applied one after the other."""
    a, b = rng.choice(list(_SINGLE), size=2, replace=False)
    return _SINGLE[b](_SINGLE[a](x, rng), rng)


def apply(x: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The near-duplicate of uint8 ``x`` (H, W, 3) of the given kind (one of :data:`KINDS`), uint8 (H, W, 3)."""
    if kind == "combo":
        return combo(x, rng)
    if kind not in _SINGLE:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return _SINGLE[kind](x, rng)
