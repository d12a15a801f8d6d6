"""Near-duplicate groups: SSL-embedding candidates (k nearest neighbours), confirmed by cheap pixel similarities,
grouped by union-find, one representative kept per group.

A briefly trained proxy is a weak near-duplicate detector on its own, and raw pixels miss crops and colour shifts;
requiring both to agree keeps the precision of pixels and the recall of the embedding's top-k candidates. The pixel
check has two parts: the *structure* (a mean-removed grayscale thumbnail) says the layout matches, the *detail*
(the thumbnail minus its 5x5 blur) says the fine texture matches too; photos that merely share a composition (a
plane against the sky, a ship on the sea) agree on structure but not on detail.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .knn import knn


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.flatten(1)
    return F.normalize(x - x.mean(1, keepdim=True), dim=1)


def pixel_signatures(images: np.ndarray, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(structure, detail) signatures, each (N, size * size) and unit-norm, so a dot product is a correlation,
    insensitive to brightness and contrast shifts: the mean-removed grayscale thumbnail, and the thumbnail minus
    its 5x5 box blur (fine texture)."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255
    g = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    g = F.interpolate(g, size=(size, size), mode="area")
    blur = F.avg_pool2d(F.pad(g, (2, 2, 2, 2), mode="replicate"), 5, 1)
    return _unit(g), _unit(g - blur)


def candidate_pairs(idx: np.ndarray, sim: np.ndarray, threshold: float, mutual: bool = False) -> np.ndarray:
    """Pairs (i, j, cosine) with i < j among each row's neighbours at or above ``threshold``; with ``mutual``, only
    pairs where each is among the other's neighbours. Returns float64 (M, 3)."""
    n, k = idx.shape
    rows = np.repeat(np.arange(n), k)
    cols, sims = idx.reshape(-1), sim.reshape(-1)
    keep = sims >= threshold
    rows, cols, sims = rows[keep], cols[keep], sims[keep]
    if mutual:
        nbrs = {(int(i), int(j)) for i, j in zip(rows, cols)}
        m = np.array([(int(j), int(i)) in nbrs for i, j in zip(rows, cols)], dtype=bool)
        rows, cols, sims = rows[m], cols[m], sims[m]
    a, b = np.minimum(rows, cols), np.maximum(rows, cols)
    pairs = {}
    for i, j, s in zip(a, b, sims):
        pairs[(int(i), int(j))] = max(float(s), pairs.get((int(i), int(j)), -1.0))
    return np.array([(i, j, s) for (i, j), s in sorted(pairs.items())], dtype=np.float64).reshape(-1, 3)


def pair_similarity(sig: torch.Tensor, pairs: np.ndarray) -> np.ndarray:
    """Cosine of the given pairs' signatures (e.g. pixel correlation), (M,)."""
    if len(pairs) == 0:
        return np.zeros(0)
    i, j = torch.as_tensor(pairs[:, 0]).long(), torch.as_tensor(pairs[:, 1]).long()
    return (sig[i] * sig[j]).sum(1).double().numpy()


def groups(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of the pair graph (union-find): a group id per item, -1 for items in no pair.
    Group ids are numbered by their smallest member, so they do not depend on pair order."""
    parent = np.arange(n)

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in pairs[:, :2].astype(np.int64):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = np.array([find(a) for a in range(n)])
    in_pair = np.zeros(n, dtype=bool)
    in_pair[pairs[:, :2].astype(np.int64).reshape(-1)] = True
    out = np.full(n, -1)
    for gid, r in enumerate(np.unique(roots[in_pair])):
        out[roots == r] = gid
    return out


def representatives(group: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """``keep`` mask: every item outside a group, and in each group the item of highest ``priority`` (ties: the
    lower index)."""
    keep = group < 0
    for g in np.unique(group[group >= 0]):
        members = np.flatnonzero(group == g)
        keep[members[np.lexsort((members, -priority[members]))[0]]] = True
    return keep


def find_duplicates(emb: torch.Tensor, checks: list[tuple[torch.Tensor, float]] = (), k: int = 10,
                    threshold: float = 0.8, mutual: bool = False) -> dict[str, np.ndarray]:
    """Candidates from the (centred) embedding's kNN graph, kept when every check agrees.

    Args:
        emb: (N, D) embeddings.
        checks: ``(signature (N, d) unit-norm, threshold)`` pairs; a candidate pair is confirmed when the dot
            product of its signatures reaches the threshold for every check (e.g. :func:`pixel_signatures`).
        k (10), threshold (0.8): candidates are among each other's k nearest neighbours with cosine >= threshold.

    Returns:
        ``pairs`` (M, 3 + len(checks)): i, j, embedding cosine, then each check's similarity, confirmed only;
        ``group`` (N,): group ids (-1: no duplicate); ``score`` (N,): each item's best embedding cosine to another.
    """
    emb = emb.float() - emb.float().mean(0, keepdim=True)  # centred: post-ReLU features all point one way
    idx, sim = knn(emb, k)
    pairs = candidate_pairs(idx, sim, threshold, mutual)
    for sig, t in checks:
        s = pair_similarity(sig, pairs)
        pairs = np.column_stack([pairs, s])[s >= t]
    return {"pairs": pairs, "group": groups(len(emb), pairs),
            "score": sim[:, 0] if sim.shape[1] else np.zeros(len(emb))}
