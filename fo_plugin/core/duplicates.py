"""Near-duplicate groups: SSL-embedding candidates (k nearest neighbours) united with pixel-window candidates
(:mod:`.verify`), confirmed by an aligned pixel comparison (:mod:`.verify`), grouped by union-find, one representative
kept per group.

A briefly trained proxy is a weak near-duplicate detector on its own, and raw pixels at fixed positions miss crops,
flips and zooms; requiring both to agree keeps the recall of the embedding's top-k candidates and the precision of
pixels. Everything here is numpy (and faiss through :mod:`.knn`): a search from an embedding alone never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .knn import knn, to_numpy, unit_rows

if TYPE_CHECKING:
    import torch

PIXEL_K = 5  # pixel-window candidates per sample (:func:`.verify.pixel_candidates`)
DUPLICATE_THRESHOLD = 0.7  # default on :func:`.verify.aligned_pair_scores`' score: the highest (in steps of 0.05) that keeps
# every planted kind of bench_duplicates.py (SSL + pixel candidates, 11,800 CIFAR-10 images) at recall >= 0.9, on both
# --seed 0 and 1 (0.75 on seed 0 alone; at 0.7 the weakest kind is 0.93-0.94)


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
    out[in_pair] = np.unique(roots[in_pair], return_inverse=True)[1]  # every member of a group is in a pair: O(N log N)
    return out


def representatives(group: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """``keep`` mask: every item outside a group, and in each group the item of highest ``priority`` (ties: the
    lower index)."""
    keep = group < 0
    members = np.flatnonzero(group >= 0)
    if len(members) == 0:
        return keep
    order = members[np.lexsort((members, -priority[members], group[members]))]  # by group, best first: O(N log N)
    first = np.r_[True, group[order][1:] != group[order][:-1]]
    keep[order[first]] = True
    return keep


def embedding_candidates(emb: np.ndarray | torch.Tensor, k: int = 10, threshold: float = 0.8, mutual: bool = False,
                         extra: np.ndarray | None = None, in_place: bool = False) -> np.ndarray:
    """Candidate pairs (i, j, cosine) float64 (M, 3) from the (centred) embedding's kNN graph: among each other's
    ``k`` nearest neighbours with cosine >= ``threshold`` (:func:`candidate_pairs`), united with the ``extra``
    (M', >=2) pairs of another source (e.g. :func:`.verify.pixel_candidates`; their cosine is computed here whatever
    it is); confirm them with :func:`.verify.aligned_pair_scores`. ``in_place``: centre and normalise a float32 ``emb`` in place
    (for a caller that no longer needs it: at 1M x 128 that is 0.5 GB less at the peak)."""
    emb = unit_rows(emb, centre=True, in_place=in_place)  # centred: post-ReLU features all point one way
    idx, sim = knn(emb, k)
    cand = candidate_pairs(idx, sim, threshold, mutual)
    if extra is None or len(extra) == 0:
        return cand
    ij = np.sort(np.asarray(extra)[:, :2].astype(np.int64), 1)
    ij = ij[ij[:, 0] != ij[:, 1]]
    ij = np.unique(np.concatenate([cand[:, :2].astype(np.int64), ij]), axis=0)  # sorted by (i, j), as candidate_pairs
    z = to_numpy(emb)  # the unit rows on the host (emb itself on CPU)
    cos = np.concatenate([np.einsum("ij,ij->i", z[ij[s:s + 65536, 0]], z[ij[s:s + 65536, 1]]).astype(np.float64)
                          for s in range(0, len(ij), 65536)]) if len(ij) else np.zeros(0)
    return np.column_stack([ij.astype(np.float64), cos]).reshape(-1, 3)
