"""Influence core against references, on real CIFAR-10 images (no FiftyOne): autograd, an exact damped
empirical-Fisher inverse, exact duplicates, invariance to batching and order, the gradient sketch's error."""

import numpy as np
import pytest
import torch
from torch import nn

from fo_plugin.core.augment import AugmentConfig
from fo_plugin.core.ekfac import EKFAC
from fo_plugin.core.images import iter_decoded, to_float
from fo_plugin.core.influence import (
    CountSketch,
    InfluenceConfig,
    SSLOutput,
    aug_losses,
    loss_from_outputs,
    make_views,
    per_example_grads,
    spearman,
    tracked_parameters,
)


class Tiny(nn.Module):
    """A 2-layer MLP encoder on 4x4-pooled 8x8 images (~700 parameters): small enough for an exact inverse."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pool = nn.AvgPool2d(2)
        self.l1 = nn.Linear(48, 12)
        self.l2 = nn.Linear(12, 6)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(self.pool(x).flatten(1))))

    project = forward


@pytest.fixture(scope="module")
def tiny_images(cifar_files):
    """64 real CIFAR-10 images at 8x8, uint8 (64, 8, 8, 3)."""
    return next(iter_decoded([p for p, _, _ in cifar_files[::6]][:64], 8, batch_size=64))[1]


def _cfg(**kw):
    return InfluenceConfig(num_augs=3, augment=AugmentConfig(size=8), **kw)


def test_identity_augmentation_gives_zero_loss_and_zero_gradient(tiny_images):
    f = SSLOutput(Tiny())
    cfg = InfluenceConfig(num_augs=3, augment=AugmentConfig.identity(8))
    x = to_float(tiny_images[:16], "cpu")
    assert aug_losses(f, x, cfg).abs().max() < 1e-6
    assert per_example_grads(f, x, cfg).abs().max() < 1e-5


def test_identity_curvature_equals_squared_autograd_gradient_norms(tiny_images):
    f = SSLOutput(Tiny())
    cfg = _cfg()
    x = to_float(tiny_images[:6], "cpu")
    g = per_example_grads(f, x, cfg)
    names = tracked_parameters(f, cfg)
    params = dict(f.named_parameters())
    assert g.shape == (6, sum(params[n].numel() for n in names))
    for i in range(6):
        f.zero_grad()
        loss_from_outputs([f(v[i:i + 1]) for v in make_views(x, cfg)]).sum().backward()
        ref = torch.cat([params[n].grad.reshape(-1) for n in names])
        assert torch.allclose(g[i], ref, rtol=1e-4, atol=1e-7)
        assert abs(g[i].pow(2).sum() - ref.pow(2).sum()) <= 1e-5 * ref.pow(2).sum()


def test_ekfac_ranks_agree_with_the_exact_damped_inverse(tiny_images, tmp_path):
    f = SSLOutput(Tiny()).eval()
    x = to_float(tiny_images, "cpu")
    g = per_example_grads(f, x, _cfg()).double()
    fisher = g.T @ g / len(g)
    lam = 0.1 * fisher.diagonal().mean().item()  # the same damping for both
    exact = (g @ torch.linalg.solve(fisher + lam * torch.eye(len(fisher), dtype=g.dtype), g.T)).diagonal().numpy()
    ek = EKFAC(f, _cfg(damping=lam), str(tmp_path / "ek"), torch.device("cpu"), batch_size=16)
    ek.fit(tiny_images)
    approx = ek.self_influence(tiny_images)
    rho = spearman(approx, exact)
    print(f"EK-FAC vs exact damped empirical-Fisher self-influence: Spearman {rho:.3f}")
    assert rho >= 0.9


def test_exact_duplicate_is_its_twins_top_proponent_and_scores_are_batch_invariant(tiny_images, tmp_path):
    f = SSLOutput(Tiny()).eval()
    images = np.concatenate([tiny_images[:40], tiny_images[:1]])  # image 40 is an exact copy of image 0
    ek = EKFAC(f, _cfg(), str(tmp_path / "ek"), torch.device("cpu"), batch_size=16)
    ek.fit(images)
    si = ek.self_influence(images)
    pair = ek.pairwise(images[:1], images)[0]  # I(z, x_0) for every z
    assert np.isclose(si[0], si[40], rtol=1e-4)
    assert np.isclose(pair[40], -si[0], rtol=1e-3)  # I(x', x) = -SI(x) for an exact duplicate
    assert np.argmin(np.delete(pair, 0)) + 1 == 40  # the twin is the strongest proponent of x_0
    ek8 = EKFAC(f, _cfg(), str(tmp_path / "ek8"), torch.device("cpu"), batch_size=8)
    ek8.fit(images[::-1].copy())
    assert np.allclose(ek8.self_influence(images[::-1].copy())[::-1], si, rtol=1e-3)


def test_gradients_do_not_depend_on_batch_composition(tiny_images):
    f = SSLOutput(Tiny()).eval()
    x = to_float(tiny_images[:20], "cpu")
    full = per_example_grads(f, x, _cfg())
    perm = torch.randperm(20)
    assert torch.allclose(per_example_grads(f, x[perm], _cfg(), chunk=3), full[perm], atol=1e-6)


def test_gradient_sketch_error_against_exact_train_to_sample_scores(cifar_files):
    from fo_plugin.core.backbones import Backbone, BackboneSpec
    from fo_plugin.core.models import ProxyConfig, ProxyModel

    torch.manual_seed(0)
    proxy = ProxyModel(ProxyConfig(width=8)).eval()
    f = SSLOutput(Backbone(nn.Identity(), 32, proxy.cfg.mean, proxy.cfg.std, BackboneSpec(), proxy=proxy))
    imgs = next(iter_decoded([p for p, _, _ in cifar_files[:96]], 32, batch_size=96))[1]
    g = per_example_grads(f, to_float(imgs, "cpu"), InfluenceConfig(num_augs=2))
    exact = (g[:8] @ g[8:].T).numpy()
    rows = []
    for d in (256, 1024, 4096):
        sk = CountSketch(g.shape[1], d, seed=1)
        torch.testing.assert_close(sk(g[:20], rowwise=False), sk(g[:20], rowwise=True))  # the one-kernel path a GPU takes, same sums
        approx = (sk(g[:8]) @ sk(g[8:]).T).numpy()
        rho = np.mean([spearman(a, b) for a, b in zip(approx, exact)])
        rel = np.abs(approx - exact).mean() / np.abs(exact).mean()
        rows.append((d, rho, rel))
        print(f"gradient sketch d={d} (P={g.shape[1]}): mean Spearman vs exact {rho:.3f}, mean relative error {rel:.3f}")
    assert rows[-1][1] > rows[0][1] - 0.02 and rows[-1][2] < rows[0][2]  # error shrinks with d
    assert rows[1][1] >= 0.8  # d = 1024 keeps the ranking of training samples
