"""CL-Core / SAS (Joshi & Mirzasoleiman, ICML 2023, arXiv 2302.09195): the examples that matter most for
contrastive learning have the highest expected augmentation similarity to the rest of their latent class.

Within a latent class V_k, with f the proxy's projection and a, a' independent augmentations:

    s_ij = E_{a, a'} [ cos(f(a(x_i)), f(a'(x_j))) ]        (one view = unaugmented images, the authors' default)
    r_i  = sum_{j in V_k} max(s_ij, 0)                     (self-pair included, as in the released code)

Selection modes:
    ``released``: the authors' released code. Its lazy greedy zeroes the row of each selected example and then
        reads those zeroed rows for the redundancy penalty, so the penalty is always 0 and the result is the
        class's examples sorted by r_i.
    ``greedy``: the paper's objective with the redundancy penalty, per class,
        F(S) = sum_{i in S} r_i - sum_{i < j in S} max(s_ij, 0),  gain(i | S) = r_i - sum_{s in S} max(s_si, 0),
        maximised greedily with every gain kept current by one row of s per choice (the same choices as the
        authors' lazy greedy would make with a working penalty, without its heap). The paper's double-greedy
        refinement is not reproduced (the authors' code has none either).

Both keep a class-stratified budget. Similarities are computed in (tile x tile) blocks: no N x N matrix.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed

MODES = ("released", "greedy")


class ViewSet:
    """Normalised projections of V views per example, (V, n, D), with the two matmul operands of s_ij.

    For V > 1 the mean over ordered pairs of different views is
        s_ij = (zsum_i . zsum_j - sum_p z_p,i . z_p,j) / (V (V - 1)),
    i.e. two matmuls per block: ``zsum`` (n, D) and the views side by side ``zcat`` (n, V D).
    """

    def __init__(self, z: torch.Tensor):
        z = F.normalize(z.float(), dim=-1)
        self.v, self.n, _ = z.shape
        self.zsum = z.sum(0)
        self.zcat = z.permute(1, 0, 2).reshape(self.n, -1) if self.v > 1 else None

    def block(self, rows, cols) -> torch.Tensor:
        """s for ``rows`` x ``cols`` (index tensors or slices): (len(rows), len(cols))."""
        s = self.zsum[rows] @ self.zsum[cols].T
        if self.v > 1:
            s = (s - self.zcat[rows] @ self.zcat[cols].T) / (self.v * (self.v - 1))
        return s


def class_scores(views: ViewSet, tile: int = 2048) -> torch.Tensor:
    """r_i = sum_j max(s_ij, 0) over all examples of one class, accumulated in (tile x tile) blocks. (n,) float64.

    In a torchrun job each rank sums its contiguous rows and every rank gets all of r (:mod:`distributed`)."""
    mine = distributed.shard(views.n)
    r = torch.zeros(len(mine), dtype=torch.float64, device=views.zsum.device)
    for a in range(mine.start, mine.stop, tile):
        end = min(a + tile, mine.stop)
        for b in range(0, views.n, tile):
            r[a - mine.start:end - mine.start] += views.block(slice(a, end), slice(b, b + tile)).clamp_min(0).sum(1).double()
    return distributed.gather_rows(r)


def released_order(r: np.ndarray) -> np.ndarray:
    """The released code's order: by r descending (ties by index). Returns positions within the class."""
    return np.lexsort((np.arange(len(r)), -r))


def greedy_order(views: ViewSet, r: np.ndarray, budget: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy on F(S) = sum_{i in S} r_i - sum_{i<j in S} max(s_ij, 0), all gains kept current.

    Choosing i lowers every other gain by max(s_i., 0): one row of s (a (1, D) x (D, n) product) per step, so
    each step is one vectorised update and one argmax instead of the heap re-evaluations of a lazy greedy. The
    choices are the same (gains only fall, ties go to the lower position; tested against a brute-force greedy).

    Returns:
        (order, gains): positions in choice order (length ``budget``, default all) and each one's gain when chosen.
    """
    n = len(r)
    budget = n if budget is None else min(budget, n)
    dev = views.zsum.device
    gain = torch.as_tensor(np.asarray(r, dtype=np.float64), device=dev).clone()
    taken = torch.zeros(n, dtype=torch.bool, device=dev)
    order = torch.empty(budget, dtype=torch.int64, device=dev)
    gains = torch.empty(budget, dtype=torch.float64, device=dev)
    for step in range(budget):
        i = int(torch.argmax(gain.masked_fill(taken, float("-inf"))))  # first maximum: ties to the lower position
        order[step], gains[step] = i, gain[i]
        taken[i] = True
        gain -= views.block(slice(i, i + 1), slice(None))[0].clamp_min(0).double()
    return order.cpu().numpy(), gains.cpu().numpy()


def quotas(sizes: np.ndarray, budget: int) -> np.ndarray:
    """Class-stratified budget: floor(f * n_k) per class, the remainder to the largest fractional parts
    (ties to the larger class), so the total is exactly ``budget``."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = int(sizes.sum())
    budget = max(0, min(int(budget), total))
    exact = sizes * budget / max(total, 1)
    q = np.floor(exact).astype(np.int64)
    rest = budget - int(q.sum())
    if rest > 0:
        order = np.lexsort((-sizes, -(exact - q)))
        q[order[:rest]] += 1
    return q


def select(z: torch.Tensor, labels: np.ndarray, budget: int, mode: str = "released", tile: int = 2048,
           progress: Callable[[float, str], None] | None = None) -> dict[str, np.ndarray]:
    """Score, rank and select per latent class.

    Args:
        z: (V, N, D) projections of V views of N examples (V = 1: unaugmented).
        labels: (N,) latent class of each example.
        budget: number of examples to keep in all.
        mode: ``"released"`` or ``"greedy"`` (see module docstring).

    Returns:
        dict of (N,) arrays: ``score`` (r_i), ``rank`` (within class, 0 = best), ``rank_overall`` (by within-class
        percentile, 0 = best), ``selected`` (bool), ``gain`` (greedy: gain when chosen; released: r_i).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    labels = np.asarray(labels)
    n = len(labels)
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    quota = quotas(sizes, budget)
    out = {"score": np.zeros(n), "rank": np.zeros(n, dtype=np.int64), "gain": np.zeros(n),
           "selected": np.zeros(n, dtype=bool)}
    for c in range(len(classes)):
        idx = np.flatnonzero(inverse == c)
        views = ViewSet(z[:, torch.as_tensor(idx, device=z.device)])
        r = class_scores(views, tile).cpu().numpy()
        if mode == "released":
            order, gains = released_order(r), r[released_order(r)]
        else:
            order, gains = greedy_order(views, r)
        out["score"][idx] = r
        out["rank"][idx[order]] = np.arange(len(idx))
        out["gain"][idx[order]] = gains
        out["selected"][idx[order[: quota[c]]]] = True
        if progress:
            progress((c + 1) / len(classes), f"CL-Core class {c + 1}/{len(classes)} ({len(idx)} examples)")
    pct = out["rank"] / sizes[inverse]
    out["rank_overall"] = np.empty(n, dtype=np.int64)
    out["rank_overall"][np.lexsort((np.arange(n), -out["score"] / sizes[inverse], pct))] = np.arange(n)
    return out
