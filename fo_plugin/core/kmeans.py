"""k-means on the device (k-means++ init, Lloyd iterations, chunked distances), plus a silhouette-based estimate
of the number of clusters. Used to approximate SAS latent classes without labels (the authors' ``kmeans_approx``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _sqdist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # (N, D), (K, D) -> (N, K)
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)).clamp_min_(0)


def _assign(x: torch.Tensor, c: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    labels, dists = [], []
    for s in range(0, len(x), chunk):
        d = _sqdist(x[s:s + chunk], c)
        m = d.min(1)
        labels.append(m.indices)
        dists.append(m.values)
    return torch.cat(labels), torch.cat(dists)


def kmeans(x: torch.Tensor, k: int, seed: int = 0, iters: int = 100, tol: float = 1e-6, n_init: int = 3
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean k-means, best of ``n_init`` k-means++ starts.

    Args:
        x: (N, D) float points (on the device to run on).
        k: number of clusters (clamped to N).

    Returns:
        labels (N,) int64 in [0, k), relabelled so cluster 0 is the largest; centres (k, D).
    """
    best = None
    for r in range(n_init):
        labels, c, inertia = _kmeans_once(x.float(), max(1, min(k, len(x))), seed * 1000 + r, iters, tol)
        if best is None or inertia < best[2]:
            best = (labels, c, inertia)
    labels, c, _ = best
    k = len(c)
    order = torch.argsort(-torch.bincount(labels, minlength=k).float(), stable=True)
    remap = torch.empty_like(order)
    remap[order] = torch.arange(k, device=order.device)
    return remap[labels], c[order]


def _kmeans_once(x: torch.Tensor, k: int, seed: int, iters: int, tol: float):
    n = len(x)
    g = torch.Generator(device="cpu").manual_seed(seed)
    # k-means++ initialisation
    centres = [x[torch.randint(n, (1,), generator=g).item()]]
    d2 = _sqdist(x, centres[0][None]).squeeze(1)
    for _ in range(1, k):
        probs = (d2 / d2.sum()).cpu() if d2.sum() > 0 else torch.full((n,), 1.0 / n)
        i = torch.multinomial(probs, 1, generator=g).item()
        centres.append(x[i])
        d2 = torch.minimum(d2, _sqdist(x, x[i][None]).squeeze(1))
    c = torch.stack(centres)
    prev = float("inf")
    for _ in range(iters):
        labels, dist = _assign(x, c)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).float()
        empty = counts == 0
        c = torch.where(empty[:, None], c, sums / counts.clamp_min(1)[:, None])
        inertia = dist.sum().item()
        if prev - inertia <= tol * max(prev, 1e-12):
            break
        prev = inertia
    labels, dist = _assign(x, c)
    return labels, c, dist.sum().item()


def silhouette(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean silhouette coefficient, Euclidean distance (x small enough for an (N, N) matrix: a subsample)."""
    x = x.float()
    d = _sqdist(x, x).sqrt()
    k = int(labels.max()) + 1
    onehot = F.one_hot(labels, k).float()
    sums = d @ onehot  # (N, K) total distance to each cluster
    counts = onehot.sum(0)
    own = labels
    a = sums.gather(1, own[:, None]).squeeze(1) / (counts[own] - 1).clamp_min(1)
    other = sums / counts.clamp_min(1)
    other.scatter_(1, own[:, None], float("inf"))
    b = other.min(1).values
    s = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
    s[counts[own] <= 1] = 0
    return s.mean().item()


def estimate_k(x: torch.Tensor, seed: int = 0, max_k: int = 100, sample: int = 2000) -> int:
    """Pick k among 2, 3, 4, 6, 8, 12, ... <= max_k by the best silhouette on a random subsample."""
    n = len(x)
    g = torch.Generator().manual_seed(seed)
    sub = x[torch.randperm(n, generator=g)[: min(n, sample)].to(x.device)]
    cands, k = [], 2
    while k <= min(max_k, len(sub) // 5):
        cands.append(k)
        k = k + 1 if k < 4 else int(round(k * 1.5))
    if not cands:
        return 1
    scores = {k: silhouette(sub, kmeans(sub, k, seed)[0]) for k in cands}
    return max(scores, key=scores.get)
