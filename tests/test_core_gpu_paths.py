"""The lines a CUDA run takes, run on CPU (issue 12): bf16 autocast in proxy training and embedding, channels_last,
non-blocking copies, and identity-curvature influence on the resulting model, against the fp32 path.

Tolerances: bf16 keeps 8 bits of mantissa (~3 significant digits), so single activations differ by ~1e-2
relative; two optimiser steps from the same initialisation and the same batches must still give nearly the same
model. We assert agreement of what the curation uses (embedding directions, influence ranks), not of raw weights.
"""

import numpy as np
import pytest
import torch

from fo_plugin.core.augment import AugmentConfig
from fo_plugin.core.device import autocast, memory_format, resolve_precision
from fo_plugin.core.embed import embed_array
from fo_plugin.core.images import iter_decoded, to_float
from fo_plugin.core.influence import InfluenceConfig, SSLOutput, per_example_grads, spearman
from fo_plugin.core.models import ProxyConfig
from fo_plugin.core.rng import sample_keys
from fo_plugin.core.train import TrainConfig, train_proxy

SIZE = 16
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images(cifar_files):
    """64 real CIFAR-10 images at 16x16, uint8 (64, 16, 16, 3)."""
    return next(iter_decoded([p for p, _, _ in cifar_files[::6]][:64], SIZE, batch_size=64))[1]


def _train(images, **kw):
    cfg = TrainConfig(epochs=1, batch_size=32, seed=3, augment=AugmentConfig(size=SIZE), **kw)
    model, hist = train_proxy(images, sample_keys(range(len(images))), cfg, CPU, ProxyConfig(width=8, image_size=SIZE))
    return model, hist


@pytest.fixture(scope="module")
def trained(images):
    """The same 2 SimCLR steps in fp32, in bf16 autocast (the CUDA default), and fp32 with channels_last."""
    return {"fp32": _train(images), "bf16": _train(images, precision="bf16"),
            "nhwc": _train(images, channels_last=True)}


def _cos_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _self_influence(model, images) -> np.ndarray:
    """Identity-curvature self-influence ||g(x)||^2 of each image, (N,)."""
    cfg = InfluenceConfig(num_augs=2, output="backbone", curvature="identity", augment=AugmentConfig(size=SIZE))
    g = per_example_grads(SSLOutput(model, "backbone"), to_float(images, CPU), cfg)
    return g.pow(2).sum(1).numpy()


def test_precision_resolution_keeps_cpu_default_fp32_and_cuda_default_bf16():
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", CPU)
    x = torch.randn(4, 4)
    with autocast(CPU):  # the CPU default: fp32, untouched
        assert (x @ x).dtype == torch.float32
    with autocast(CPU, "bf16"):  # the CUDA branch, on CPU
        assert (x @ x).dtype == torch.bfloat16
    assert to_float(np.zeros((1, 2, 2, 3), np.uint8), CPU).contiguous(
        memory_format=memory_format(True)).is_contiguous(memory_format=torch.channels_last)


def test_bf16_training_follows_fp32_training(trained):
    (m32, h32), (m16, h16) = trained["fp32"], trained["bf16"]
    l32, l16 = np.array([r["loss"] for r in h32]), np.array([r["loss"] for r in h16])
    assert np.abs(l32 - l16).max() < 0.02 * l32.max()  # same batches, same augmentations: losses agree to ~1%
    w32 = torch.cat([p.detach().flatten() for p in m32.parameters()])
    w16 = torch.cat([p.detach().flatten() for p in m16.parameters()])
    assert all(p.dtype == torch.float32 for p in m16.parameters())  # autocast keeps fp32 master weights
    assert torch.nn.functional.cosine_similarity(w32, w16, dim=0) > 0.999
    assert not torch.equal(w32, w16)  # the bf16 branch really ran


def test_channels_last_training_matches_fp32(trained):
    (m32, h32), (mcl, hcl) = trained["fp32"], trained["nhwc"]
    assert np.allclose([r["loss"] for r in h32], [r["loss"] for r in hcl], atol=1e-4)
    for a, b in zip(m32.parameters(), mcl.parameters()):
        assert torch.allclose(a, b, atol=1e-4)


def test_bf16_embeddings_agree_with_fp32(trained, images):
    m32 = trained["fp32"][0]
    e32 = embed_array(m32.features, images, SIZE, CPU, batch_size=50)
    e16 = embed_array(m32.features, images, SIZE, CPU, batch_size=50, precision="bf16", channels_last=True)
    assert e16.dtype == np.float32 and not np.array_equal(e32, e16)
    assert _cos_rows(e32, e16).min() > 0.999  # embedding precision alone
    e_tr = embed_array(trained["bf16"][0].features, images, SIZE, CPU, batch_size=50, precision="bf16")
    assert np.median(_cos_rows(e32, e_tr)) > 0.99  # the whole CUDA path: bf16 training and bf16 embedding


def test_influence_on_bf16_trained_model_ranks_like_fp32(trained, images):
    si32 = _self_influence(trained["fp32"][0], images[:40])
    si16 = _self_influence(trained["bf16"][0], images[:40])
    assert spearman(si32, si16) > 0.95
