"""Exact cosine k-nearest neighbours in (chunk x N) blocks on the device; faiss (exact inner product) when it is
installed and N is large. Built once per embedding and shared by the duplicate and outlier scores."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FAISS_MIN_N = 200_000


def knn(x: torch.Tensor, k: int, chunk: int = 4096, use_faiss: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most cosine-similar other rows of each row.

    Args:
        x: (N, D) embeddings (any scale; rows are normalised here).
        k: neighbours per row (clamped to N - 1).
        use_faiss (None): None = when faiss is importable and N >= 200,000.

    Returns:
        ``(idx, sim)``: int64 (N, k) neighbour indices and float32 (N, k) cosine similarities, most similar first.
    """
    n = len(x)
    k = max(0, min(k, n - 1))
    z = F.normalize(x.float(), dim=1)
    if k == 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
    if use_faiss is None:
        use_faiss = n >= FAISS_MIN_N and _has_faiss()
    if use_faiss:
        import faiss

        zc = np.ascontiguousarray(z.cpu().numpy())
        index = faiss.IndexFlatIP(zc.shape[1])
        index.add(zc)
        sim, idx = index.search(zc, k + 1)
        return _drop_self(idx, sim, k)
    idx, sim = [], []
    for s in range(0, n, chunk):
        c = z[s:s + chunk] @ z.T  # (chunk, N)
        c[torch.arange(len(c)), torch.arange(s, s + len(c))] = -float("inf")
        top = c.topk(k, dim=1)
        idx.append(top.indices.cpu())
        sim.append(top.values.cpu())
    return torch.cat(idx).numpy(), torch.cat(sim).float().numpy()


def _drop_self(idx: np.ndarray, sim: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    out_i, out_s = np.zeros((len(idx), k), np.int64), np.zeros((len(idx), k), np.float32)
    for r in range(len(idx)):
        keep = idx[r] != r
        out_i[r], out_s[r] = idx[r][keep][:k], sim[r][keep][:k]
    return out_i, out_s


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True
