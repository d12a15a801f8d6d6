"""2-D maps of embeddings for the App's Embeddings panel: UMAP where ``umap-learn`` is importable, PCA otherwise.

Both work in the cosine geometry our kNN and the similarity index use (rows are L2-normalised first). For large N the
map is fitted on a seeded sample of ``fit_max`` rows and every row is then projected with that fit, so memory and time
stay bounded (UMAP's fit is super-linear; a PCA fit on 50k rows already pins the two axes to sampling noise).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import torch
import torch.nn.functional as F

METHODS = ("auto", "umap", "pca")
FIT_MAX = 50_000  # rows a map is fitted on; the rest are transformed with that fit


def resolve_method(method: str = "auto") -> str:
    """``"auto"``: ``"umap"`` where ``umap-learn`` is importable, else ``"pca"``; other values are checked."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if method == "auto":
        return "umap" if importlib.util.find_spec("umap") is not None else "pca"
    if method == "umap" and importlib.util.find_spec("umap") is None:
        raise ValueError("method='umap' needs the umap-learn package (pip install umap-learn); use 'pca'")
    return method


def fit_rows(n: int, fit_max: int = FIT_MAX, seed: int = 0) -> np.ndarray:
    """Sorted indices of the rows a map is fitted on: all N when N <= ``fit_max``, else a seeded sample."""
    if n <= fit_max:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=fit_max, replace=False))


def embedding_map(x: torch.Tensor | np.ndarray, method: str = "auto", fit_max: int = FIT_MAX,
                  seed: int = 0) -> np.ndarray:
    """2-D coordinates of each row of ``x``.

    Args:
        x: (N, D) embeddings (any scale; rows are normalised here), N >= 2.
        method ("auto"): ``"umap"``, ``"pca"`` or ``"auto"`` (see :func:`resolve_method`).
        fit_max (50,000): the most rows the map is fitted on; the others are projected with that fit.
        seed (0): the fit sample and UMAP's random state.

    Returns:
        float32 (N, 2) points.
    """
    method = resolve_method(method)
    z = F.normalize(torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).float(), dim=1)  # (N, D)
    if z.ndim != 2 or len(z) < 2:
        raise ValueError(f"expected an (N, D) matrix with N >= 2, got shape {tuple(z.shape)}")
    rows = fit_rows(len(z), fit_max, seed)
    if method == "pca":
        return pca_2d(z, rows)
    import umap  # only with method "umap" (checked importable)

    reducer = umap.UMAP(n_components=2, metric="cosine", random_state=seed)
    fitted = reducer.fit_transform(z[rows].cpu().numpy())  # (F, 2)
    if len(rows) == len(z):
        return np.asarray(fitted, dtype=np.float32)
    out = np.asarray(reducer.transform(z.cpu().numpy()), dtype=np.float32)  # (N, 2)
    out[rows] = fitted  # the fitted rows keep their fitted positions
    return out


def pca_2d(z: torch.Tensor, rows: np.ndarray | None = None) -> np.ndarray:
    """Projection of (N, D) ``z`` on the top-2 principal axes of ``z[rows]`` (all rows by default), centred on
    their mean; each axis's sign is fixed (largest loading positive) so a re-run draws the same picture."""
    fit = z if rows is None else z[torch.as_tensor(rows)]
    mean = fit.mean(dim=0, keepdim=True)  # (1, D)
    fc = (fit - mean).double()  # (F, D)
    _, vecs = torch.linalg.eigh(fc.T @ fc)  # (D, D) covariance: cheaper than an SVD of (F, D) for F >> D
    axes = vecs[:, -2:].flip(1).T.contiguous()  # (2, D), largest variance first
    if len(axes) < 2:  # D == 1: a flat second axis
        axes = torch.cat([axes, torch.zeros_like(axes)])
    sign = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))  # (2, 1)
    axes = axes * torch.where(sign == 0, torch.ones_like(sign), sign)
    axes = axes.float().T  # (D, 2)
    return (z @ axes - mean @ axes).cpu().numpy()  # (N, 2), no centred copy of z
