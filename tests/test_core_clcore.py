"""CL-Core / SAS numeric core against references (no FiftyOne): the authors' released greedy, a brute-force
greedy of the paper objective, blockwise tiling, the multi-view estimator, stratified budgets."""

import heapq
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fo_plugin.core.clcore import ViewSet, class_scores, greedy_order, quotas, released_order, select
from fo_plugin.core.kmeans import estimate_k, kmeans


def _dense(z):  # (V, n, D) -> the full s matrix by its definition (mean over ordered pairs of different views)
    z = F.normalize(z.double(), dim=-1)
    v = z.shape[0]
    if v == 1:
        return z[0] @ z[0].T
    pairs = [(p, q) for p in range(v) for q in range(v) if p != q]
    return sum(z[p] @ z[q].T for p, q in pairs) / len(pairs)


def _authors_released_greedy(s):
    """A port of the SAS pip package's SubsetSelectionObjective + lazy_greedy (threshold 0, row-zeroing add)."""
    d = (s * (s >= 0)).copy()
    selected = []

    def inc(i):
        return d[i].sum() - sum(d[j][i] for j in selected)

    heap = [(-inc(i), i) for i in range(len(d))]
    heapq.heapify(heap)
    order = []
    while heap:
        _, i = heapq.heappop(heap)
        g = inc(i)
        if heap and g < -heap[0][0]:
            heapq.heappush(heap, (-g, i))
            continue
        order.append(i)
        selected.append(i)
        d[:][i] = 0  # the released code's `self.distance[:][i] = 0` zeroes ROW i
    return np.array(order)


def _brute_greedy(s):
    """Greedy on F(S) = sum_{i in S} r_i - sum_{i<j in S} s+_ij, evaluating F from its definition."""
    sp = np.clip(s, 0, None)
    r = sp.sum(1)

    def f(S):
        return sum(r[i] for i in S) - sum(sp[i, j] for i, j in itertools.combinations(S, 2))

    S = []
    while len(S) < len(s):
        rest = [i for i in range(len(s)) if i not in S]
        gains = [f(S + [i]) - f(S) for i in rest]
        S.append(rest[int(np.argmax(gains))])
    return np.array(S)


@pytest.mark.parametrize("seed", range(5))
def test_released_mode_equals_sorting_and_the_authors_greedy(seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 30, 8, generator=g)
    s = _dense(z).numpy()
    r = class_scores(ViewSet(z)).numpy()
    assert np.allclose(r, np.clip(s, 0, None).sum(1), atol=1e-5)
    assert np.array_equal(released_order(r), np.argsort(-np.clip(s, 0, None).sum(1), kind="stable"))
    assert np.array_equal(released_order(r), _authors_released_greedy(s))


@pytest.mark.parametrize("seed", range(5))
def test_greedy_mode_equals_brute_force_greedy_of_the_paper_objective(seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, 9, 4, generator=g)
    z = base + 0.3 * torch.randn(2, 9, 4, generator=g)  # two views per example: the multi-view estimate of s
    views = ViewSet(z)
    r = class_scores(views).numpy()
    order, gains = greedy_order(views, r)
    assert np.array_equal(order, _brute_greedy(_dense(z).numpy()))
    assert np.all(np.diff(gains) <= 1e-9)  # submodular: gains never rise


def test_exact_duplicate_gain_drops_once_its_twin_is_chosen():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(20, 6, generator=g) + 2.0  # mostly positive similarities
    z = torch.cat([base, base[:1]])[None]  # example 20 duplicates example 0
    views = ViewSet(z)
    r = class_scores(views).numpy()
    rel = released_order(r)
    assert abs(list(rel).index(0) - list(rel).index(20)) == 1  # released: twins side by side
    order, gains = greedy_order(views, r)
    first, second = sorted([list(order).index(0), list(order).index(20)])
    assert second - first > 1  # greedy: the twin is pushed back
    assert gains[second] < r[order[second]] - 0.99  # its gain fell by s = 1 to the chosen twin


def test_tiling_and_scale_do_not_change_scores():
    z = torch.randn(3, 50, 16)
    full = class_scores(ViewSet(z), tile=4096)
    assert torch.allclose(class_scores(ViewSet(z), tile=7), full, atol=1e-6)
    assert torch.allclose(class_scores(ViewSet(z * 3.7), tile=7), full, atol=1e-6)
    assert torch.allclose(full, torch.as_tensor(np.clip(_dense(z).numpy(), 0, None).sum(1)), atol=1e-4)


def test_identical_views_give_the_single_view_matrix():
    z = torch.randn(1, 25, 8)
    assert torch.allclose(ViewSet(z.repeat(4, 1, 1)).block(slice(None), slice(None)),
                          ViewSet(z).block(slice(None), slice(None)), atol=1e-5)


def test_negative_similarities_are_ignored():
    z = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]]])  # the third is opposite to the first
    r = class_scores(ViewSet(z))
    assert abs(r[2].item() - 1.0) < 1e-6  # only its self-similarity counts


@pytest.mark.parametrize("budget", [0, 7, 33, 100])
def test_quotas_are_stratified_and_exact(budget):
    sizes = np.array([50, 30, 15, 5])
    q = quotas(sizes, budget)
    assert q.sum() == budget
    exact = sizes * budget / sizes.sum()
    assert np.all(q >= np.floor(exact)) and np.all(q <= np.ceil(exact))


def test_select_keeps_typical_points_and_drops_planted_outliers():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(3, 16, generator=g) * 4
    cores = [c + 0.3 * torch.randn(40, 16, generator=g) for c in centres]
    outliers = [c + 3.0 * torch.randn(3, 16, generator=g) for c in centres]
    x = torch.cat(cores + outliers)
    labels = np.array([i for i in range(3) for _ in range(40)] + [i for i in range(3) for _ in range(3)])
    out = select(x[None], labels, budget=90, mode="released")
    assert out["selected"].sum() == 90
    assert not out["selected"][120:].any()  # every planted outlier is left out
    assert set(out["rank"][120:]) <= set(range(40, 43))  # and ranked last in its class
    for c in range(3):
        assert out["selected"][labels == c].sum() == quotas(np.bincount(labels), 90)[c]


def test_kmeans_recovers_separated_clusters_and_estimates_k():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=g) * 10
    x = torch.cat([c + torch.randn(60, 8, generator=g) for c in centres])
    labels, _ = kmeans(x, 4, seed=0)
    truth = np.repeat(np.arange(4), 60)
    pairs_same = (labels.numpy()[:, None] == labels.numpy()[None]) == (truth[:, None] == truth[None])
    assert pairs_same.mean() > 0.99
    assert estimate_k(x, seed=0) == 4
