"""Outlier scores from an embedding: the distance to the k-th nearest neighbour at several scales.

kNN distance at one small k finds isolated outliers but misses a group of similar ones: they are each other's
neighbours. At a scale larger than the group, the k-th neighbour lies outside it and is far. The combined score is
the maximum over scales of the percentile rank of the k-th-neighbour distance, in [0, 1]: high when a sample is
far from the data at any scale.
"""

from __future__ import annotations

import numpy as np
import torch

from .knn import knn

SCALES = (10, 30, 100, 300)


def percentile_rank(x: np.ndarray) -> np.ndarray:
    """Rank of each value scaled to [0, 1] (ties share their mean rank)."""
    from scipy.stats import rankdata

    return (rankdata(x) - 1) / max(len(x) - 1, 1)


def outlier_scores(emb: torch.Tensor, scales: tuple[int, ...] = SCALES, extra: dict[str, np.ndarray] | None = None
                   ) -> dict[str, np.ndarray]:
    """Per-sample outlier scores for (N, D) embeddings (centred before cosines).

    Args:
        scales: the neighbour ranks k at which the cosine distance to the k-th neighbour is measured (clamped to
            N - 1; duplicates dropped).
        extra: further per-sample scores (higher = more unusual, e.g. self-influence) to combine by percentile rank.

    Returns:
        ``knn`` (mean cosine distance to the first-scale neighbours, the classic score), ``kth_<k>`` per scale,
        ``score`` (max of the percentile ranks of every component), ``scale`` (the k that gave the maximum).
    """
    n = len(emb)
    z = emb.float() - emb.float().mean(0, keepdim=True)
    ks = sorted({max(1, min(k, n - 1)) for k in scales})
    _, sim = knn(z, ks[-1])
    dist = 1 - sim
    out = {"knn": dist[:, : ks[0]].mean(1)}
    ranks = []
    for k in ks:
        out[f"kth_{k}"] = dist[:, k - 1]
        ranks.append(percentile_rank(dist[:, k - 1]))
    for name, v in (extra or {}).items():
        out[name] = np.asarray(v, dtype=float)
        ranks.append(percentile_rank(out[name]))
    ranks = np.stack(ranks)
    out["score"] = ranks.max(0)
    labels = ks + list(extra or {})
    out["scale"] = np.array([str(labels[i]) for i in ranks.argmax(0)])
    return out


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    from scipy.stats import rankdata

    positive = np.asarray(positive, bool)
    r = rankdata(scores)
    n1, n0 = positive.sum(), (~positive).sum()
    return float((r[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
