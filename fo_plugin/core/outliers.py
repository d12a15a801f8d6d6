"""Outlier scores: multi-scale kNN distance in an embedding, in an image-statistics space and in raw pixels, and
two-sided tails of the image statistics.

kNN distance at one small k finds isolated outliers but misses a group of similar ones: they are each other's
neighbours. At a scale larger than the group, the k-th neighbour lies outside it and is far. A family's score is the
maximum over scales of the percentile rank of the k-th-neighbour distance.

One embedding is not enough: an SSL embedding trained on photos can place a grayscale document or a texture among
the photos (it never learned what separates them), while a handful of image statistics (no colour, a white
background, few colours, axis-aligned edges; ``image_stats``) tell them apart at once. So the combined score has
families, each kept in the result: ``ssl`` (the embedding), ``stats`` (kNN among robust-standardised image
statistics), ``tails`` (how far each statistic lies in its own tail, either side, summed over the most extreme few:
unlike kNN it is not fooled when the out-of-domain images are many and alike, e.g. 80 grayscale images among 300
photos are each other's neighbours but all sit in the tail of ``exact_gray``) and optionally ``pixels``
(downsampled grayscale pixels). Each family score is re-ranked (the max over scales is not uniform) and the combined
``score`` is the percentile rank of Fisher's combination sum_f w_f * -log(1 - r_f + 1/N) of the family ranks r_f
(``combine="fisher"``, the default: one extreme family suffices, two high ones add up). Chosen on planted data for
all kinds at once over "max" and "mean2" (the best worst-kind AUROC; see bench/bench_outliers.py). Each family's term
is weighted (``WEIGHTS``: the embedding 0.3, tails 1.5, others 1).

A rank caps what a tight group can earn: its m members share the top m / N ranks of a tightness component, so its
Fisher term is at most -log(m / N), and photos with one extreme statistic (high in ``tails`` and ``stats`` at once)
outrank it. But the group's tightness is not merely the highest, it lies far beyond the bulk: robust z 13-35 for
planted groups of near-copies (3.5-10 for a looser one) vs <= 7 for any photo. The group term adds, per kNN family,
w_f * max(0, z - ``GROUP_Z``) to the Fisher sum, z the largest robust z of its tightness components: zero for
95-99% of ordinary samples and small for the rest (scattered kinds move by <= 0.01), large for a tight group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .knn import kth_neighbour_distances, unit_rows

if TYPE_CHECKING:
    import torch

SCALES = (10, 30, 100, 300)
# Statistics of image_stats.STATS used for the outlier space (geometry is left to the quality flags: a dataset of
# mixed sizes would otherwise be ranked by size). dark_fraction and bright_fraction (a black fluorescence
# background, a white page or UI) lift the worst kind when all kinds are planted at once among 300 photos (5 seeds,
# random-CNN stand-in: 0.848 -> 0.876; 3 seeds, 6-epoch proxy: 0.851 -> 0.873) at a cost of <= 0.03 to cases that
# were >= 0.99 (42 single-kind cases: worst 0.938 -> 0.942).
# dark_spots and bright_spots (small blobs: nuclei, cells, granules, speckle) are for stained-tissue crops, the one
# microscopy-like material whose colour and exposure statistics are photo-like (a brown and lavender crop of
# skimage's immunohistochemistry slide ranked 0.09 among the photos in the operator test); with them, microscopy-like
# AUROC in a replica of that test (6-epoch proxy, 300 photos + 10 of each kind, plant seeds 0-5) 0.918 -> 0.937 on
# average (worst seed 0.842 -> 0.886, seed 0 0.888 -> 0.944); other kinds' means within +-0.002, single cases
# -0.005 to +0.009.
OUTLIER_STATS = ("brightness", "lum_p01", "lum_p99", "contrast", "dark_fraction", "bright_fraction", "colourfulness",
                 "saturation", "chroma", "gray_fraction", "mean_rg", "mean_yb", "log_sharpness", "rel_sharpness",
                 "entropy", "edge_density", "hf_energy", "dominant_colour", "colour_count", "axis_alignment",
                 "coherence", "border_std", "spectral_slope", "saturation_spread", "dark_spots", "bright_spots")
# Statistics of the ``tails`` family: the above and ``exact_gray`` (a grayscale scan, render or micrograph has equal
# channels; alone it lifts the worst planted kind by ~0.01-0.05 over the other statistics' tails).
TAIL_STATS = OUTLIER_STATS + ("exact_gray",)
TAIL_TOP = 3  # the tails score sums the squares of this many largest tail distances
COMBINE = "fisher"
# Fisher weight per family (others 1): the SSL family is down-weighted because an embedding trained on photos can
# rank a document or a texture as typical, and a full-weight typical rank drags a clear image-statistics outlier
# down (worst planted kind 0.88 -> 0.92 at N = 1,000 with the random-CNN stand-in; bench/bench_outliers.py). The
# tails weight used to trade scattered kinds (which the tails find) against tight groups of photo-like images (which
# only the kNN tightness components saw; 1.5 sank a group of stained-tissue crops to 0.82). With the group term
# (``GROUP_Z``) such a group no longer depends on it, so it is set for scattered kinds: 1.5. Worst kind, random-CNN
# stand-in unless said, previous defaults (tails 1, no group term, 22 statistics) -> now: 0.881 -> 0.935 over 42
# single-kind cases (bench_outliers.py, seeds 0-2: 7 kinds x scattered 20 / group 40 among 1,000 photos); 0.837 ->
# 0.876 over 40 all-at-once cases (5 seeds, 300 photos + 10 of each kind + groups of 20 digits and 20 micrographs),
# 0.834 -> 0.873 on 24 of them with a 6-epoch proxy; 0.892 -> 0.919 over 30 of ``bench_outliers.py --mixed``
# (N = 1,000, seeds 0-2).
WEIGHTS = {"ssl": 0.3, "tails": 1.5}
# Robust z (``robust_z``) of a tightness component beyond which a sample counts as a member of a tight group:
# ordinary photos reach at most ~7 (21 planted materials, N = 1,000), planted groups of near-copies 13-35 (median),
# but a looser group of 20 stained-tissue crops among 1,000 photos and 180 other out-of-domain images only 3.5-10
# (``bench_outliers.py --mixed --seed 1``: 0.85 at 6, 0.89 at 5, 0.92 at 4, 0.93 at 3). Worst kind over four
# materials (42 single-kind, 40 + 24 all-at-once with the stand-in / a proxy, 30 of --mixed) at 3 / 4 / 5 / 6:
# 0.874 / 0.873 / 0.873 / 0.854; 4 leaves the most photos untouched of the best three.
GROUP_Z = 4.0


def percentile_rank(x: np.ndarray) -> np.ndarray:
    """Rank of each value scaled to [0, 1] (ties share their mean rank)."""
    from scipy.stats import rankdata

    return (rankdata(x) - 1) / max(len(x) - 1, 1)


def kth_distances(x: np.ndarray | torch.Tensor, scales: tuple[int, ...] = SCALES) -> dict[int, np.ndarray]:
    """Cosine distance of each row of (N, D) ``x`` to its k-th nearest other row, per k in ``scales`` (clamped to
    N - 1, duplicates dropped) -> {k: (N,)}; also {0: mean distance to the first-scale neighbours}."""
    n = len(x)
    ks = sorted({max(1, min(k, n - 1)) for k in scales})
    d = kth_neighbour_distances(x, sorted(set(ks) | set(range(1, ks[0] + 1))))  # no (N, max k) table
    out = {k: d[k] for k in ks}
    out[0] = np.mean([d[j] for j in range(1, ks[0] + 1)], axis=0)
    return out


def robust_standardise(stats: dict[str, np.ndarray], names: tuple[str, ...] = OUTLIER_STATS,
                       clip: float = 20.0) -> np.ndarray:
    """(N, D) matrix of (x - median) / scale per statistic, scale = IQR / 1.349 (floored at a tenth of the standard
    deviation and 1e-6, so a mostly constant statistic does not explode), clipped to +-``clip``."""
    return np.stack([np.clip(robust_z(np.asarray(stats[n], dtype=np.float64), floor=1e-6), -clip, clip)
                     for n in names], 1)


def robust_z(v: np.ndarray, floor: float = 1e-12) -> np.ndarray:
    """(N,) -> (N,): (v - median) / (IQR / 1.349), the scale floored at a tenth of the standard deviation and
    ``floor``: how far a value lies beyond the bulk, in units that do not saturate as ranks do."""
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return (v - med) / max((q3 - q1) / 1.349, 0.1 * float(np.std(v)), floor)


def tail_distances(stats: dict[str, np.ndarray], names: tuple[str, ...] = TAIL_STATS, clip: float = 20.0
                   ) -> np.ndarray:
    """(N, D) how far each statistic lies in its own tail, either side: (x - median) / s_hi above the median,
    (median - x) / s_lo below, s_hi = (q75 - median) / 0.674, s_lo = (median - q25) / 0.674 (one scale per side:
    most statistics are skewed; each floored at a tenth of the standard deviation and 1e-6), clipped to
    [0, ``clip``]. No direction is assumed: a document is too bright, a micrograph too dark."""
    cols = []
    for n in names:
        v = np.asarray(stats[n], dtype=np.float64)
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        floor = max(0.1 * v.std(), 1e-6)
        s_hi, s_lo = max((q3 - med) / 0.6745, floor), max((med - q1) / 0.6745, floor)
        cols.append(np.clip(np.where(v > med, (v - med) / s_hi, (med - v) / s_lo), 0, clip))
    return np.stack(cols, 1)


def tail_scores(stats: dict[str, np.ndarray], names: tuple[str, ...] = TAIL_STATS, top: int = TAIL_TOP
                ) -> tuple[np.ndarray, np.ndarray]:
    """Tails family: sum of the squares of the ``top`` largest ``tail_distances`` of each sample (N,), and the name
    of its most extreme statistic (N,) (the reason a sample is flagged)."""
    z = tail_distances(stats, names)  # (N, D)
    zs = -np.sort(-z, 1)[:, :top]
    return (zs ** 2).sum(1), np.array(names)[z.argmax(1)]


def lift(z: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, D + 1): append the constant sqrt(D), so cosine distance between lifted rows grows with the
    Euclidean distance of the originals (the gnomonic projection onto the sphere) and saturates for extreme rows,
    instead of ignoring magnitude as a plain cosine does. Lets ``knn`` (cosine) serve a Euclidean-like space."""
    z = np.asarray(z, dtype=np.float32)
    return np.concatenate([z, np.full((len(z), 1), float(z.shape[1]) ** 0.5, np.float32)], 1)


def family_scores(x: np.ndarray | torch.Tensor, scales: tuple[int, ...] = SCALES, prefix: str = "", tightness: bool = True
                  ) -> dict[str, np.ndarray]:
    """Multi-scale kNN scores of (N, D) ``x`` under cosine distance.

    Returns ``<prefix>kth_<k>`` distances, ``<prefix>knn`` (mean first-scale distance), with ``tightness``
    ``<prefix>tight_<k>_<K>`` = log(d_K / d_k) for scales two apart (k=10, K=100; k=30, K=300 by default): high for
    a member of a tight group (near neighbours very close, the rest of the data far), which plain distance misses
    when the group sits in a populated region; ``<prefix>score``: max of the percentile ranks of all of these;
    ``<prefix>scale``: the component that gave it.
    """
    d = kth_distances(x, scales)
    out = {f"{prefix}knn": d.pop(0)}
    names, ranks = [], []
    for k, v in d.items():
        out[f"{prefix}kth_{k}"] = v
        names.append(str(k))
        ranks.append(percentile_rank(v))
    ks = list(d)
    if tightness:
        for k, big in zip(ks, ks[2:]):
            v = np.log(d[big] + 1e-6) - np.log(d[k] + 1e-6)
            out[f"{prefix}tight_{k}_{big}"] = v
            names.append(f"tight_{k}_{big}")
            ranks.append(percentile_rank(v))
    if tightness and len(ks) > 2:
        out[f"{prefix}group_z"] = np.max([robust_z(out[f"{prefix}tight_{k}_{big}"]) for k, big in zip(ks, ks[2:])], 0)
    ranks = np.stack(ranks)  # (components, N)
    out[f"{prefix}score"] = ranks.max(0)
    out[f"{prefix}scale"] = np.array(names)[ranks.argmax(0)]
    return out


def gray_pixels(images: np.ndarray, side: int = 16) -> np.ndarray:
    """uint8 (N, S, S, 3) -> float32 (N, side * side): area-downsampled luminance, each image centred on its
    mean (so the pixel family sees structure, not exposure)."""
    import torch

    x = torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    y = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)  # (N, 1, S, S)
    y = torch.nn.functional.adaptive_avg_pool2d(y, side).flatten(1)  # (N, side^2)
    return (y - y.mean(1, keepdim=True)).numpy()


def outlier_scores(emb: np.ndarray | torch.Tensor | None, scales: tuple[int, ...] = SCALES,
                   extra: dict[str, np.ndarray] | None = None, stats: dict[str, np.ndarray] | None = None,
                   pixels: np.ndarray | None = None, combine: str = COMBINE, tightness: bool = True,
                   weights: dict[str, float] | None = None, tails: bool = True, group: bool = True,
                   in_place: bool = False
                   ) -> dict[str, np.ndarray]:
    """Per-sample outlier scores from one or more families.

    Args:
        emb: (N, D) SSL embeddings (centred before cosines), or None to score from the other families only.
        scales: neighbour ranks k at which the distance to the k-th neighbour is measured (clamped to N - 1).
        extra: further per-sample scores (higher = more unusual, e.g. self-influence), each its own family.
        stats: ``image_stats`` output; adds the ``stats`` family: multi-scale kNN among the robust-standardised
            ``OUTLIER_STATS``, lifted (``lift``) so that distance counts, not only direction; and (``tails``) the
            ``tails`` family (``tail_scores`` over ``TAIL_STATS``).
        pixels: (N, P) raw-pixel features (e.g. ``gray_pixels``); adds the ``pixels`` family.
        tightness (True): add the group-tightness components (``family_scores``) to every kNN family: they find
            tight groups of near-copies (20 crops of one micrograph: AUROC 0.29 without them, 0.9+ with) at some
            cost to scattered kinds in small sets (worst kind 0.80 with vs 0.88 without at N = 380; 0.87 vs 0.86 at
            N = 2,000, a 6-epoch proxy).
        combine: "fisher" (default): sum over families of w_f * -log(1 - rank + 1/N); "max": the largest re-ranked
            family score; "mean2": the mean of the two largest.
        weights: Fisher weight per family name, for ``combine="fisher"`` (None: ``WEIGHTS``: ``ssl`` 0.3, ``tails`` 1.5;
            a family not named weighs 1; ``{}``: all 1).
        tails (True): with ``stats``, add the ``tails`` family (False: the previous score).
        in_place (False): centre and normalise a float32 ``emb`` in place (for a caller that no longer needs it: one
            (N, D) copy less at the peak).
        group (True): with ``tightness`` and ``combine="fisher"``, add the group term: for each kNN family f,
            w_f * max(0, ``<f>group_z`` - ``GROUP_Z``) (a tight group's tightness lies far beyond the bulk, which a
            rank cannot express). A group of 40 crops of one stained-tissue micrograph among 600 photos: 0.98 with
            it, 0.76 without; scattered kinds move by <= 0.01.

    Returns:
        For the embedding (unprefixed, as before): ``knn`` (mean cosine distance to the first-scale neighbours),
        ``kth_<k>``; ``stats_knn``, ``stats_kth_<k>``, ``pixels_...`` likewise; ``tails`` (``tail_scores``);
        ``<family>_score`` per family (max over scales of percentile ranks; for ``tails`` the rank of ``tails``;
        family names ``ssl``, ``stats``, ``tails``, ``pixels`` and the keys of ``extra``);
        ``score`` (combined, in [0, 1]); ``scale`` (the family, and k or for ``tails`` the most extreme statistic,
        that gave the largest rank); ``group_z`` (with tightness: ``group_z`` of the embedding, ``stats_group_z``
        and ``pixels_group_z`` likewise) and ``group`` (the group term added to the Fisher sum, 0 for most).
        With ``emb`` alone (one family: no re-ranking) and ``tightness=False`` the ``score`` is exactly the previous one (max over scales of the
        percentile ranks).
    """
    out: dict[str, np.ndarray] = {}
    fams: dict[str, np.ndarray] = {}
    where: dict[str, np.ndarray] = {}
    gz: dict[str, np.ndarray | None] = {}  # family -> group_z (None without tightness)
    if emb is not None:
        z = unit_rows(emb, centre=True, in_place=in_place)  # centred unit rows (one copy, or none): the kNN makes none
        f = family_scores(z, scales, tightness=tightness)
        gz["ssl"] = f.get("group_z")
        where["ssl"] = f.pop("scale")
        fams["ssl"] = f.pop("score")
        out.update(f)
    if stats is not None:
        f = family_scores(lift(robust_standardise(stats)), scales, "stats_", tightness)
        gz["stats"] = f.get("stats_group_z")
        where["stats"] = f.pop("stats_scale")
        fams["stats"] = f.pop("stats_score")
        out.update(f)
        if tails:
            out["tails"], where["tails"] = tail_scores(stats)
            fams["tails"] = percentile_rank(out["tails"])
    if pixels is not None:
        p = np.asarray(pixels, np.float32)
        f = family_scores(p - p.mean(0, keepdims=True), scales, "pixels_", tightness)
        gz["pixels"] = f.get("pixels_group_z")
        where["pixels"] = f.pop("pixels_scale")
        fams["pixels"] = f.pop("pixels_score")
        out.update(f)
    for name, v in (extra or {}).items():
        out[name] = np.asarray(v, dtype=float)
        fams[name] = percentile_rank(out[name])
        where[name] = np.full(len(v), "", dtype=object)
    if not fams:
        raise ValueError("outlier_scores needs an embedding, stats, pixels or extra scores")
    names = list(fams)
    ranked = np.stack([percentile_rank(fams[n]) for n in names])  # (families, N)
    for n in names:
        out[f"{n}_score"] = fams[n]
    if combine == "max":
        raw = ranked.max(0)
    elif combine == "fisher":
        w = WEIGHTS if weights is None else weights
        wv = np.array([float(w.get(n, 1.0)) for n in names])[:, None]  # (families, 1)
        raw = (wv * -np.log1p(-ranked + 1.0 / len(ranked[0]))).sum(0)
        if group:
            out["group"] = sum((float(w.get(n, 1.0)) * np.maximum(z - GROUP_Z, 0) for n, z in gz.items()
                                if z is not None), np.zeros(len(raw)))
            raw = raw + out["group"]
    elif combine == "mean2":
        raw = np.sort(ranked, 0)[-2:].mean(0)
    else:
        raise ValueError(f"unknown combine rule {combine!r}")
    grouped = combine == "fisher" and group and bool(np.any(out.get("group", 0)))
    out["score"] = percentile_rank(raw) if len(names) > 1 or grouped else fams[names[0]]
    best = ranked.argmax(0)
    out["scale"] = np.array([f"{names[b]}:{where[names[b]][i]}".rstrip(":") for i, b in enumerate(best)])
    return out


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    from scipy.stats import rankdata

    positive = np.asarray(positive, bool)
    r = rankdata(scores)
    n1, n0 = positive.sum(), (~positive).sum()
    return float((r[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
