"""Leaky splits: duplicate groups whose members lie in different splits (a test image with a copy in train), and the
fraction of each split's samples that have a duplicate in another split."""

from __future__ import annotations

import numpy as np


def leaky_groups(group: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Mask of the samples in a group that spans two or more splits.

    Args:
        group: (N,) int group id, -1 for a sample in no group.
        split: (N,) split labels (str or None: a sample without a split never makes a group leaky).
    """
    group, split = np.asarray(group), np.asarray(split, dtype=object)
    member = (group >= 0) & np.array([s is not None for s in split], dtype=bool)
    leaky = np.zeros(len(group), dtype=bool)
    if not member.any():
        return leaky
    codes = {s: c for c, s in enumerate(sorted({str(s) for s in split[member]}))}
    g = group[member]
    c = np.array([codes[str(s)] for s in split[member]])
    order = np.lexsort((c, g))  # by group, then split
    g, c = g[order], c[order]
    first = np.r_[True, g[1:] != g[:-1]]
    start = np.flatnonzero(first)
    n_splits = np.add.reduceat(np.r_[True, (g[1:] != g[:-1]) | (c[1:] != c[:-1])].astype(int), start)
    spans = dict(zip(g[start].tolist(), (n_splits > 1).tolist()))
    leaky[member] = [spans[int(x)] for x in group[member]]
    return leaky


def leaky_fractions(leaky: np.ndarray, split: np.ndarray) -> dict[str, float]:
    """For each split, the fraction of its samples that have a duplicate in another split."""
    split = np.asarray(split, dtype=object)
    out = {}
    for s in sorted({str(x) for x in split if x is not None}):
        mine = np.array([x is not None and str(x) == s for x in split], dtype=bool)
        out[s] = float(leaky[mine].mean())
    return out
