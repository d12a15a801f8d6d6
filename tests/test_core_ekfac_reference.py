"""The native EK-FAC fit (fo_plugin.core.ekfac) against kronfluence 1.0.1's own fit and scoring, on real CIFAR-10
images (no FiftyOne): self-influence and train-to-sample scores, Linear layers with biases and the proxy's bias-free
strided convs with eval BatchNorm, the heuristic damping and a given one, a capped fit; pairwise streaming against
a dense computation.

kronfluence is the reference only (the plugin does not call it). Each example is one row and its K + 1 views are
separate calls with shared parameters, so kronfluence sums the views' gradients into the example's, as ours does.
Tolerance: the covariances agree to ~1e-7 (float32 sums in another order); where A or G has near-degenerate small
eigenvalues their eigenvectors turn with that rounding and Lambda with them. On these models (the proxy at its
initial BatchNorm statistics) a 1e-7 relative perturbation of the covariances moves self-influence by < 1e-5, and
ours differs from kronfluence's by <= 3e-5 relative (self-influence) and <= 2e-6 of the largest |I| (pairwise);
asserted 1e-3 (margin for other BLAS builds). (A random-init proxy with random BatchNorm statistics
is ill-conditioned: there the same perturbation moves kronfluence's own scores by 1-30%, so no implementation can
match it closer than that.)
"""

import gc

import numpy as np
import pytest
import torch
from test_core_ekfac_fixes import Tiny  # the MLP encoder + projection head both files test on
from torch import nn
from torch.utils import data

from fo_plugin.core.augment import AugmentConfig
from fo_plugin.core.ekfac import EKFAC
from fo_plugin.core.images import iter_decoded, to_float
from fo_plugin.core.influence import (
    InfluenceConfig,
    SSLOutput,
    loss_from_outputs,
    make_views,
    per_example_grads,
    tracked_modules,
)

CPU = torch.device("cpu")


class UInt8Images(data.Dataset):
    """uint8 (3, S, S) images over an (N, S, S, 3) array, for kronfluence's data loader."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)


def kronfluence_scores(f: SSLOutput, cfg: InfluenceConfig, images: np.ndarray, query: np.ndarray, out_dir: str,
                       max_examples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """kronfluence's own EK-FAC fit (empirical Fisher, shared parameters) and scoring: (self-influence (N,),
    I(z, x) (Q, N)) with our sign convention."""
    import copy
    import logging

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.task import Task
    from kronfluence.utils.dataset import DataLoaderKwargs
    from kronfluence.utils.state import State

    tracked = tracked_modules(f, cfg)

    class AugmentationTask(Task):
        # an identity post-process routes kronfluence 1.0.1's pairwise scores through its accumulating path (its
        # default one keeps only the last call's contribution when parameters are shared)
        enable_post_process_per_sample_gradient = True

        def get_influence_tracked_modules(self):
            return list(tracked)

        def post_process_per_sample_gradient(self, module_name, gradient):
            return gradient

        def compute_train_loss(self, batch, model, sample=False):
            x = batch.float().div_(255)
            return loss_from_outputs([model(v) for v in make_views(x, cfg)]).sum()  # K + 1 calls of B rows

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

    logging.getLogger("kronfluence").setLevel(logging.WARNING)
    task = AugmentationTask()
    model = prepare_model(copy.deepcopy(f).eval(), task)
    State._reset_state()
    an = Analyzer("ref", model, task, cpu=True, disable_tqdm=True, output_dir=out_dir, disable_model_save=True)
    an.set_dataloader_kwargs(DataLoaderKwargs(num_workers=0))
    an.fit_all_factors("ekfac", UInt8Images(images), per_device_batch_size=8,
                       factor_args=FactorArguments(strategy="ekfac", use_empirical_fisher=True,
                                                   has_shared_parameters=True, covariance_max_examples=max_examples,
                                                   lambda_max_examples=max_examples))
    sargs = ScoreArguments(damping_factor=cfg.damping)
    an.compute_self_scores("self", "ekfac", UInt8Images(images), per_device_train_batch_size=8, score_args=sargs)
    an.compute_pairwise_scores("pair", "ekfac", UInt8Images(query), UInt8Images(images),
                               per_device_query_batch_size=len(query), per_device_train_batch_size=8,
                               score_args=sargs)
    si = an.load_self_scores("self")["all_modules"].double().numpy()
    pair = -an.load_pairwise_scores("pair")["all_modules"].double().numpy()
    return si, pair


@pytest.fixture(scope="module", autouse=True)
def _fast_gc():
    """kronfluence calls gc.collect() ~9 times per fit, each walking every object of the test process: freeze the
    objects alive now so those calls only scan new ones (test speed only)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def images(cifar_files):
    """24 real CIFAR-10 images at 32x32 and at 8x8, uint8 (24, S, S, 3)."""
    paths = [p for p, _, _ in cifar_files[::16]][:24]
    return {s: next(iter_decoded(paths, s, batch_size=24))[1] for s in (8, 32)}


def _proxy():
    from fo_plugin.core.backbones import Backbone, BackboneSpec
    from fo_plugin.core.models import ProxyConfig, ProxyModel

    torch.manual_seed(0)
    proxy = ProxyModel(ProxyConfig(width=4)).eval()
    return SSLOutput(Backbone(nn.Identity(), 32, proxy.cfg.mean, proxy.cfg.std, BackboneSpec(), proxy=proxy))


@pytest.mark.parametrize("model,damping,max_examples", [("tiny", None, None), ("tiny", 1e-3, 12),
                                                        ("proxy", None, None), ("proxy", 1e-3, 16)])
def test_native_fit_scores_as_kronfluence(images, model, damping, max_examples, tmp_path):
    f, imgs = (SSLOutput(Tiny()), images[8]) if model == "tiny" else (_proxy(), images[32])
    f = f.eval()
    cfg = InfluenceConfig(num_augs=2, augment=AugmentConfig(size=imgs.shape[1]), damping=damping)
    ek = EKFAC(f, cfg, str(tmp_path / "ours"), CPU, batch_size=8)  # 24 images: batches of 8, 8, 8
    ek.fit(imgs, max_examples)
    si, pair = ek.self_influence(imgs), ek.pairwise(imgs[:3], imgs)
    ref_si, ref_pair = kronfluence_scores(f, cfg, imgs, imgs[:3], str(tmp_path / "kron"), max_examples)
    assert ref_si.min() > 0 and ref_si.std() > 0.1 * ref_si.mean()
    assert np.allclose(si, ref_si, rtol=1e-3), np.abs(si / ref_si - 1).max()
    scale = np.abs(ref_pair).max()
    assert np.abs(pair - ref_pair).max() <= 1e-3 * scale, np.abs(pair - ref_pair).max() / scale
    assert np.allclose(np.diag(pair[:, :3]), -si[:3], rtol=1e-3)  # I(x, x) = -SI(x)


def test_pairwise_streaming_equals_a_dense_computation(images, tmp_path):
    """I(z, x) from the streamed batches (batch 5: a ragged last batch) equals -G_x P G_z^T formed densely from
    all gradients at once, with P = (H + lambda I)^-1 built as an explicit (P, P) matrix from the factors."""
    f = SSLOutput(Tiny()).eval()
    cfg = InfluenceConfig(num_augs=2, augment=AugmentConfig(size=8))
    ek = EKFAC(f, cfg, str(tmp_path / "ek"), CPU, batch_size=5)
    ek.fit(images[8])
    pair = ek.pairwise(images[8][:4], images[8])
    g = per_example_grads(f, to_float(images[8], "cpu"), cfg).double()  # (24, P)
    blocks, s = [], 0
    for n, cout, bias, qg, qa, inv in ek.preconditioner():
        q = torch.kron(qg.double(), qa.double())  # (out * in', out * in'): rows (o, i) as the gradient matrix
        h = q @ torch.diag(inv.double().reshape(-1)) @ q.t()
        idx = torch.arange(n).reshape(cout, -1) if not bias else torch.cat(  # matrix (o, i) -> column of g
            [torch.arange(n - cout).reshape(cout, -1), torch.arange(n - cout, n)[:, None]], 1)
        perm = idx.reshape(-1)
        dense = torch.empty(n, n, dtype=torch.float64)
        dense[perm[:, None], perm[None, :]] = h
        blocks.append(dense)
        s += n
    assert s == g.shape[1]
    ref = -(g[:4] @ torch.block_diag(*blocks) @ g.t()).numpy()
    assert np.abs(pair - ref).max() <= 1e-4 * np.abs(ref).max()
    assert np.abs(ref).max() > 0 and np.allclose(np.diag(ref[:, :4]), -ek.self_influence(images[8][:4]), rtol=1e-4)
