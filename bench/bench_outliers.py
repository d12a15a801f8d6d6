"""Outlier detection of planted out-of-domain images among real CIFAR-10 photos, per kind and per score family.

Population: ``--n`` (5,000) random CIFAR-10 train images (32x32 JPEG). Planted, each kind in its own run: 20
scattered images of one kind (``core.ood_images``: documents, textures, line drawings, microscopy, screenshots,
flat colour, MNIST digits), or one tight group of 40 (jittered crops of one image of the kind). Every planted image is
drawn at 128 px, downsampled to 32 and JPEG-encoded at quality 75 like the CIFAR files, so neither resolution nor
compression gives it away.

Stand-in for the SSL embedding (no trained proxy here): a randomly initialised 4-layer CNN (seeded), global-average
pooled 128-d features of ImageNet-normalised 32x32 inputs. Families: ``ssl`` (that embedding), ``stats``
(kNN among ``core.image_stats``), ``tails`` (two-sided tails of those statistics), ``pixels`` (16x16 grayscale);
``combined`` = ``outlier_scores`` at its defaults with ``ssl`` and the image statistics (``stats`` and ``tails``;
pixels off, the recommended use); ``no_group``: the same without the group term (``outlier_scores(group=False)``);
``no_tails``: the same without the tails family (the default before that); ``+pixels`` with all three (max rule) and ``mean2(+px)`` (mean
of the top two); ``ssl_old``: the previous score (embedding only, no tightness components); baseline: kNN@10 distance on raw 32x32 grayscale pixels. Table: AUROC per kind.

``--mixed``: every kind planted at once, as the held-out check and the operator test do (they are then partly each
other's neighbours): ``--scattered`` of each kind, ``--scattered`` grayscale scenes (documents, textures and
microscopy converted to gray), 40 scattered digits, and groups of ``--scattered`` digits and micrographs; AUROC of
each kind against the photos.

    python bench/bench_outliers.py [--n 5000] [--seed 0] [--mixed]
"""

from __future__ import annotations

import argparse
import io
import os
import time
import zipfile

import common  # noqa: F401  (environment, sys.path)
import numpy as np
import torch
from PIL import Image

from fo_plugin.core.image_stats import image_stats
from fo_plugin.core.ood_images import KINDS, ood_group, ood_images
from fo_plugin.core.outliers import auroc, gray_pixels, outlier_scores
from fo_plugin.planted import random_cnn_embedding

DATA = os.environ.get("FO_SSL_SHARED_DATA", os.path.join(os.path.dirname(common.ROOT), "shared", "data"))


def cifar(n: int, split: str = "train", seed: int = 0) -> np.ndarray:
    """``n`` random CIFAR-10 images of ``split`` -> uint8 (n, 32, 32, 3), straight from the bundled zip."""
    with zipfile.ZipFile(os.path.join(DATA, "cifar10", "cifar10-jpeg.zip")) as z:
        names = sorted(m for m in z.namelist() if m.startswith(f"cifar10/{split}/") and m.endswith(".jpg"))
        pick = np.random.default_rng(seed).choice(len(names), n, replace=False)
        return np.stack([np.asarray(Image.open(io.BytesIO(z.read(names[i]))).convert("RGB")) for i in pick])


def jpeg(images: np.ndarray, quality: int = 75) -> np.ndarray:
    """JPEG round trip of uint8 (N, S, S, 3), as the CIFAR files were encoded."""
    out = []
    for im in images:
        b = io.BytesIO()
        Image.fromarray(im).save(b, "JPEG", quality=quality)
        out.append(np.asarray(Image.open(b).convert("RGB")))
    return np.stack(out)


def features(images: np.ndarray) -> dict:
    return {"emb": random_cnn_embedding(images), "stats": image_stats(images), "pixels": gray_pixels(images),
            "raw": gray_pixels(images, images.shape[1])}


def cat(a: dict, b: dict) -> dict:
    out = {}
    for k in a:
        if isinstance(a[k], dict):
            out[k] = {s: np.concatenate([a[k][s], b[k][s]]) for s in a[k]}
        elif isinstance(a[k], torch.Tensor):
            out[k] = torch.cat([a[k], b[k]])
        else:
            out[k] = np.concatenate([a[k], b[k]])
    return out


def evaluate(f: dict, positive: np.ndarray) -> dict[str, float]:
    """AUROC of each family and of the combined scores on one planted set."""
    full = outlier_scores(f["emb"], stats=f["stats"], pixels=f["pixels"])
    two = outlier_scores(f["emb"], stats=f["stats"])
    no_tails = outlier_scores(f["emb"], stats=f["stats"], tails=False)
    no_group = outlier_scores(f["emb"], stats=f["stats"], group=False)
    mean2 = outlier_scores(f["emb"], stats=f["stats"], pixels=f["pixels"], combine="mean2")
    old = outlier_scores(f["emb"], tightness=False)
    raw = outlier_scores(None, scales=(10,), pixels=f["raw"], tightness=False)
    return {"ssl_old": auroc(old["score"], positive), "ssl": auroc(full["ssl_score"], positive),
            "stats": auroc(full["stats_score"], positive), "tails": auroc(full["tails_score"], positive),
            "pixels": auroc(full["pixels_score"], positive), "combined": auroc(two["score"], positive),
            "no_group": auroc(no_group["score"], positive), "no_tails": auroc(no_tails["score"], positive),
            "+pixels": auroc(full["score"], positive),
            "mean2(+px)": auroc(mean2["score"], positive), "raw_px_knn10": auroc(raw["pixels_knn"], positive)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--scattered", type=int, default=20)
    ap.add_argument("--group", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mixed", action="store_true")
    a = ap.parse_args()
    t0 = time.perf_counter()
    if a.mixed:
        return mixed(a, t0)
    pop = features(cifar(a.n, seed=a.seed))
    rows = []
    for kind in KINDS + ("digits",):
        for mode, imgs in (("scattered", ood_images(kind, a.scattered, 32, a.seed + 1)),
                           ("group", ood_group(kind, a.group, 32, a.seed + 1))):
            f = cat(pop, features(jpeg(imgs)))
            positive = np.r_[np.zeros(a.n, bool), np.ones(len(imgs), bool)]
            rows.append({"kind": kind, "planted": f"{mode} {len(imgs)}", **evaluate(f, positive)})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("kind", "planted")}
    worst = {k: float(np.min([r[k] for r in rows])) for k in mean}
    rows += [{"kind": "MEAN", "planted": "", **mean}, {"kind": "MIN", "planted": "", **worst}]
    common.table(rows, f"Outlier AUROC among {a.n} CIFAR-10 train images (stand-in SSL: random CNN), "
                       f"{time.perf_counter() - t0:.0f} s")


def gray(images: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S, 3) -> the same, each pixel its Rec. 601 luminance in all three channels."""
    y = np.rint(images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).clip(0, 255).astype(np.uint8)
    return np.repeat(y[..., None], 3, -1)


def mixed(a, t0: float) -> None:
    s, k = a.seed + 1, a.scattered
    parts = [(kind, ood_images(kind, k, 32, s)) for kind in KINDS]
    scenes = np.concatenate([ood_images(kind, k // 3 + 1, 32, s + 1) for kind in ("documents", "textures", "microscopy")])
    parts += [("gray_scenes", gray(scenes)[:k]), ("digits", ood_images("digits", 40, 32, s)),
              ("group_digits", ood_group("digits", k, 32, s)), ("group_microscopy", ood_group("microscopy", k, 32, s))]
    imgs = np.concatenate([cifar(a.n, seed=a.seed)] + [jpeg(v) for _, v in parts])
    kinds = np.array(["none"] * a.n + [name for name, v in parts for _ in v])
    f = features(imgs)
    out = outlier_scores(f["emb"], stats=f["stats"])
    before = outlier_scores(f["emb"], stats=f["stats"], tails=False)
    no_group = outlier_scores(f["emb"], stats=f["stats"], group=False)
    rows = []
    for name, _ in parts:
        m = (kinds == "none") | (kinds == name)
        pos = kinds[m] == name
        rows.append({"kind": name, "planted": int(pos.sum()), **{c: auroc(out[f"{c}_score"][m], pos) for c in
                                                                  ("ssl", "stats", "tails")},
                     "combined": auroc(out["score"][m], pos), "no_group": auroc(no_group["score"][m], pos),
                     "no_tails": auroc(before["score"][m], pos)})
    rows.append({"kind": "MIN", "planted": "", **{c: float(min(r[c] for r in rows)) for c in list(rows[0])[2:]}})
    common.table(rows, f"Outlier AUROC, all kinds planted at once among {a.n} CIFAR-10 train images (stand-in SSL: "
                       f"random CNN), {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
