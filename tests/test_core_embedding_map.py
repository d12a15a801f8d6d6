"""core.embedding_map: PCA in the cosine geometry, fitted on a sample for large N; UMAP's fit/transform split."""

import importlib.machinery
import sys
import types

import numpy as np
import pytest
import torch

from fo_plugin.core import embedding_map as em


def _data(n=600, d=16, seed=0):
    g = np.random.default_rng(seed)
    return (g.normal(size=(n, d)) * np.geomspace(4, 0.05, d)).astype(np.float32)  # (N, D), decaying variances


def test_pca_matches_the_top_two_principal_components_of_the_unit_rows():
    x = _data()
    pts = em.embedding_map(x, "pca")
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    zc = z - z.mean(0)
    _, _, vt = np.linalg.svd(zc, full_matrices=False)
    ref = zc @ vt[:2].T  # (N, 2), up to each axis's sign
    for a in range(2):
        assert np.allclose(np.abs(pts[:, a]), np.abs(ref[:, a]), atol=1e-4)
    assert pts[:, 0].var() > pts[:, 1].var() > 0
    assert np.array_equal(pts, em.embedding_map(x, "pca"))  # deterministic, signs fixed
    assert np.allclose(pts, em.embedding_map(x * 7.0, "pca"), atol=1e-5)  # scale-free (unit rows)


def test_large_n_is_fitted_on_a_seeded_sample_and_projects_every_row():
    x = _data(n=900)
    rows = em.fit_rows(900, fit_max=300, seed=3)
    assert len(rows) == 300 and np.array_equal(rows, em.fit_rows(900, fit_max=300, seed=3))
    pts = em.embedding_map(x, "pca", fit_max=300, seed=3)
    z = torch.nn.functional.normalize(torch.as_tensor(x), dim=1)
    assert pts.shape == (900, 2)
    assert np.allclose(pts[rows], em.pca_2d(z[torch.as_tensor(rows)]), atol=1e-5)  # the fit sample's own PCA
    assert abs(np.corrcoef(pts[:, 0], em.embedding_map(x, "pca")[:, 0])[0, 1]) > 0.99  # ~ the full fit


class _FakeUMAP:
    fitted = []

    def __init__(self, n_components, metric, random_state):
        assert n_components == 2 and metric == "cosine"

    def fit_transform(self, z):
        _FakeUMAP.fitted.append(len(z))
        return z[:, :2] + 100

    def transform(self, z):
        return z[:, :2]


def test_umap_when_importable_fits_on_the_sample_and_transforms_the_rest(monkeypatch):
    fake = types.ModuleType("umap")
    fake.__spec__ = importlib.machinery.ModuleSpec("umap", None)
    fake.UMAP = _FakeUMAP
    monkeypatch.setitem(sys.modules, "umap", fake)
    assert em.resolve_method("auto") == "umap"
    x = _data(n=500)
    pts = em.embedding_map(x, "auto", fit_max=200)
    rows = em.fit_rows(500, fit_max=200)
    assert _FakeUMAP.fitted == [200]
    assert np.all(pts[rows] >= 99) and np.all(np.abs(np.delete(pts, rows, axis=0)) <= 1)


def test_auto_is_pca_without_umap_and_umap_asked_for_without_it_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)  # find_spec of a None entry raises; model "not importable"
    monkeypatch.setattr(em.importlib.util, "find_spec", lambda name: None)
    assert em.resolve_method("auto") == "pca"
    with pytest.raises(ValueError, match="umap-learn"):
        em.resolve_method("umap")
    with pytest.raises(ValueError, match="method must be"):
        em.resolve_method("tsne")
