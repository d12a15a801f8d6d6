"""kNN at scale: the exact search (faiss's brute force on CPU, the torch tiles on a GPU or without faiss) equals brute
force, the tiles at any memory budget, the faiss indexes reach the
recall targets on clustered data with planted near-copies, auto picks what its doc says, and the k-th-neighbour
distances track exact ones."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from fo_plugin.core import knn as knn_module
from fo_plugin.core.knn import choose_method, exact_search, knn, kth_neighbour_distances

faiss = pytest.importorskip("faiss")


def clustered(n: int, d: int = 64, clusters: int = 50, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Clusters with a low-rank spread, 1% planted near-copies (row + small noise); returns x and copy_of (-1)."""
    g = torch.Generator().manual_seed(seed)
    centres, bases = torch.randn(clusters, d, generator=g), 0.35 * torch.randn(clusters, 16, d, generator=g)
    lab = torch.randint(0, clusters, (n,), generator=g)
    x = centres[lab] + torch.einsum("ns,nsd->nd", torch.randn(n, 16, generator=g), bases[lab])
    x += 0.15 * torch.randn(n, d, generator=g)
    perm = torch.randperm(n, generator=g).numpy()
    dst, src = perm[: n // 100], perm[n // 100: n // 50]
    x[dst] = x[src] + 0.01 * torch.randn(len(dst), d, generator=g)
    copy_of = np.full(n, -1)
    copy_of[dst] = src
    return x, copy_of


def brute(x: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    z = F.normalize(x, dim=1)
    s = z @ z.T
    s.fill_diagonal_(-float("inf"))
    top = s.topk(k, dim=1)
    return top.indices.numpy(), top.values.numpy()


@pytest.fixture(params=["faiss", "tiles"])
def backend(request, monkeypatch):
    """Exact search by faiss (the CPU default) or by the torch tiles (what a GPU runs; here on CPU)."""
    if request.param == "tiles":
        monkeypatch.setattr(knn_module, "_has_faiss", lambda: False)
    return request.param


@pytest.mark.parametrize("budget", [256 * 2**20, 4 * 40 * 50])  # one full-width block; ~44 x 45 tiles in both dims
def test_exact_search_equals_brute_force(budget, backend):
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(1))
    x[7] = 2 * x[3]  # an exact (cosine 1) duplicate: each must find the other, never itself
    i, s = knn(x, 7, method="exact", max_block_bytes=budget)
    bi, bs = brute(x, 7)
    assert i.shape == (300, 7) and i.dtype == np.int64 and s.dtype == np.float32
    np.testing.assert_allclose(s, bs, atol=1e-5)
    assert (i == bi).mean() > 0.99  # identical up to float ties
    assert i[3, 0] == 7 and i[7, 0] == 3 and not (i == np.arange(300)[:, None]).any()


def test_exact_search_against_a_subset_excludes_only_self(backend):
    x = F.normalize(torch.randn(200, 8, generator=torch.Generator().manual_seed(2)), dim=1)
    ref = np.arange(0, 200, 3)  # database = every third row; those rows must not find themselves
    i, s = exact_search(x, x[ref], 5, db_ids=ref, max_block_bytes=4 * 17 * 13)
    full = x @ x[ref].T
    full[torch.as_tensor(ref), torch.arange(len(ref))] = -float("inf")
    np.testing.assert_allclose(s, full.topk(5, dim=1).values.numpy(), atol=1e-5)
    assert not (ref[i] == np.arange(200)[:, None]).any()


def test_exact_search_excludes_every_database_row_of_a_query(backend):
    g = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(60, 8, generator=g), dim=1)
    db = F.normalize(torch.cat([x, x + 0.05 * torch.randn(60, 8, generator=g), -x]), dim=1)  # 3 rows per query
    db_ids = np.tile(np.arange(60), 3)  # (the warps of a window search: each query's own rows rank first)
    i, s = exact_search(x, db, 5, db_ids=db_ids)
    assert not (db_ids[i] == np.arange(60)[:, None]).any()
    full = x @ db.T
    full[torch.as_tensor(db_ids) == torch.arange(60)[:, None]] = -float("inf")
    np.testing.assert_allclose(s, full.topk(5, dim=1).values.numpy(), atol=1e-5)
    i, s = exact_search(x[:3], db[np.r_[0:3, 60:63]], 9, db_ids=np.r_[0:3, 0:3])  # k above what is not own
    assert i.shape == (3, 4) and not (np.r_[0:3, 0:3][i] == np.arange(3)[:, None]).any() and np.isfinite(s).all()


@pytest.fixture(scope="module")
def data():
    """20k centred clustered rows (as the duplicate and outlier scores call knn) and their exact top-300."""
    x, copy_of = clustered(20_000)
    x = x - x.mean(0)
    ei, es = knn(x, 300, method="exact")
    return x, copy_of, ei, es


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_approximate_recall_and_planted_copies(data, method):
    x, copy_of, ei, _ = data
    ai, asim = knn(x, 10, method=method)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ai, ei[:, :10])])
    assert recall >= 0.95, recall
    copies = np.flatnonzero(copy_of >= 0)
    assert all(copy_of[c] == ai[c, 0] for c in copies)  # each copy's original is its nearest neighbour
    assert (np.diff(asim, axis=1) <= 1e-6).all()  # most similar first


def test_auto_selection_follows_the_doc():
    assert choose_method(1_000, "cpu") == "exact"
    assert choose_method(20_000, "cpu") == "exact"
    assert choose_method(20_001, "cpu") == "ivf"
    assert choose_method(10**7, "cuda") == "exact"
    assert choose_method(10**7, "cpu", "hnsw") == "hnsw"
    with pytest.raises(ValueError):
        choose_method(10, "cpu", "annoy")


def test_auto_without_faiss_falls_back_to_exact_with_a_warning(monkeypatch):
    monkeypatch.setattr(knn_module, "_has_faiss", lambda: False)
    with pytest.warns(RuntimeWarning, match="faiss is not installed"):
        assert choose_method(20_001, "cpu") == "exact"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # small: exact anyway, and no warning
        assert choose_method(20_000, "cpu") == "exact"


def test_kth_neighbour_distances_track_exact(data):
    x, _, _, es = data
    est = kth_neighbour_distances(x, (10, 100, 300), method="ivf")
    for k in (10, 100, 300):
        assert spearmanr(1 - es[:, k - 1], est[k]).statistic >= 0.95, k
    exact = kth_neighbour_distances(x[:500], (3, 30), method="exact", chunk=128)  # chunked exact = plain exact
    _, s = knn(x[:500], 30, method="exact")
    np.testing.assert_allclose(exact[30], 1 - s[:, 29], atol=1e-5)
    np.testing.assert_allclose(exact[3], 1 - s[:, 2], atol=1e-5)


def test_drop_self_keeps_rank_order_wherever_self_is():
    from fo_plugin.core.knn import _drop_self

    idx = np.array([[0, 5, 6, 7], [4, 1, 8, 9], [3, 2, 4, 5], [7, 8, 3, 9]])  # self (row id) first, second, absent
    sim = -np.arange(16, dtype=np.float32).reshape(4, 4)
    i, s = _drop_self(idx, sim, np.array([0, 1, 2, 3]), 3)
    assert i.tolist() == [[5, 6, 7], [4, 8, 9], [3, 4, 5], [7, 8, 9]]
    assert s.tolist() == [[-1, -2, -3], [-4, -6, -7], [-8, -10, -11], [-12, -13, -15]]
