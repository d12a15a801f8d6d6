"""EK-FAC on real CIFAR-10 images (no FiftyOne): only layers that run are tracked (backbone output, an open_clip
image tower), kronfluence's process-wide state is reset per run, and cached factors are refitted when the model
or the settings change."""

import gc
import os

import numpy as np
import pytest
import torch
from torch import nn

from fo_plugin.core.augment import AugmentConfig
from fo_plugin.core.ekfac import EKFAC, FINGERPRINT_FILE, reset_kronfluence_state
from fo_plugin.core.fingerprint import model_fingerprint
from fo_plugin.core.images import iter_decoded, to_float
from fo_plugin.core.influence import InfluenceConfig, SSLOutput, per_example_grads, tracked_modules

CPU = torch.device("cpu")


class Tiny(nn.Module):
    """An MLP encoder on 2x2-pooled 8x8 images plus a projection head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pool = nn.AvgPool2d(2)
        self.l1 = nn.Linear(48, 12)
        self.l2 = nn.Linear(12, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(self.pool(x).flatten(1))))

    def project(self, x):
        return self.head(torch.relu(self(x)))


def _cfg(size=8, **kw):
    return InfluenceConfig(**{"num_augs": 2, "augment": AugmentConfig(size=size), **kw})


@pytest.fixture(scope="module", autouse=True)
def _fast_gc():
    """kronfluence calls gc.collect() ~9 times per fit, each walking every object of the test process (~0.5 s):
    freeze the objects alive now so those calls only scan new ones (test speed only)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def images(cifar_files):
    """24 real CIFAR-10 images at 32x32 and at 8x8, uint8 (24, S, S, 3)."""
    paths = [p for p, _, _ in cifar_files[::16]][:24]
    return {s: next(iter_decoded(paths, s, batch_size=24))[1] for s in (8, 32)}


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    """A first EK-FAC run (Tiny, K = 2, seed 0) in a fresh folder: (folder, self-influence)."""
    out = str(tmp_path_factory.mktemp("ref"))
    ek = EKFAC(SSLOutput(Tiny()).eval(), _cfg(), out, CPU, batch_size=8)
    ek.fit(images[8])
    return out, ek.self_influence(images[8])


def test_backbone_output_tracks_only_the_encoder_and_ekfac_scores_it(images, tmp_path):
    from fo_plugin.core.backbones import Backbone, BackboneSpec
    from fo_plugin.core.models import ProxyConfig, ProxyModel

    torch.manual_seed(0)
    proxy = ProxyModel(ProxyConfig(width=4)).eval()
    net = Backbone(nn.Identity(), 32, proxy.cfg.mean, proxy.cfg.std, BackboneSpec(), proxy=proxy)
    f, cfg = SSLOutput(net, "backbone").eval(), _cfg(32, output="backbone")
    names = tracked_modules(f, cfg)
    convs = [n for n, m in f.named_modules() if isinstance(m, nn.Conv2d)]
    assert names == convs and len(names) == 6  # the projector's two Linear layers never run
    assert len(tracked_modules(SSLOutput(net, "projection"), cfg)) == 8
    g = per_example_grads(f, to_float(images[32][:4], "cpu"), cfg)
    assert g.shape[1] == sum(p.numel() for n, p in f.named_parameters() if n.rsplit(".", 1)[0] in convs)
    ek = EKFAC(f, cfg, str(tmp_path / "ek"), CPU, batch_size=8)
    ek.fit(images[32][:16])
    si = ek.self_influence(images[32][:16])
    assert np.isfinite(si).all() and (si > 0).all()


def test_ekfac_on_an_open_clip_image_tower(images, tmp_path):
    import open_clip

    from fo_plugin.core.backbones import Backbone, BackboneSpec, _ClipImage

    torch.manual_seed(0)
    clip = open_clip.CLIP(embed_dim=16, vision_cfg={"image_size": 32, "patch_size": 8, "width": 32, "layers": 2,
                                                    "head_width": 16},
                          text_cfg={"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1})
    net = Backbone(_ClipImage(clip), 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), BackboneSpec("open_clip"))
    f, cfg = SSLOutput(net, "backbone").eval(), _cfg(32, output="backbone")
    names = tracked_modules(f, cfg)
    assert names and all(".visual." in n for n in names)  # no text tower
    assert not any(n.endswith("out_proj") for n in names)  # called inside MultiheadAttention, never as a module
    assert any(n.endswith("conv1") for n in names) and sum(n.endswith("mlp.c_fc") for n in names) == 2
    ek = EKFAC(f, cfg, str(tmp_path / "ek"), CPU, batch_size=8)
    ek.fit(images[32][:16])
    si = ek.self_influence(images[32][:16])
    assert np.isfinite(si).all() and (si > 0).all()


def test_each_run_resets_kronfluences_shared_state(images, reference, tmp_path):
    from kronfluence.utils.state import State

    State._reset_state()
    State(cpu=False).device = torch.device("meta")  # what a previous run on another device would have left
    other = EKFAC(SSLOutput(Tiny()).eval(), _cfg(num_augs=3, seed=1), str(tmp_path / "other"), CPU, batch_size=8)
    assert other.analyzer.state.cpu and other.analyzer.state.device == CPU
    other.fit(images[8])
    si_other = other.self_influence(images[8])
    again = EKFAC(SSLOutput(Tiny()).eval(), _cfg(), str(tmp_path / "again"), CPU, batch_size=8)
    again.fit(images[8])
    si = again.self_influence(images[8])
    assert np.allclose(si, reference[1], rtol=1e-5)  # the K = 3 run left nothing behind
    assert not np.allclose(si_other, si, rtol=1e-2)
    fresh = reset_kronfluence_state(cpu=False)  # a later run choosing the default device
    assert not fresh.cpu and fresh.device == fresh.default_device and not State().cpu


def test_changed_model_refits_cached_factors(images, reference, tmp_path):
    import shutil

    out = str(tmp_path / "cache")
    shutil.copytree(reference[0], out)
    open(os.path.join(out, "keep.txt"), "w").close()
    model = Tiny()
    f = SSLOutput(model).eval()
    with torch.no_grad():
        model.l1.weight.mul_(1.5)
    ek = EKFAC(f, _cfg(), out, CPU, batch_size=8)
    ek.fit(images[8])
    si = ek.self_influence(images[8])
    fresh = EKFAC(f, _cfg(), str(tmp_path / "fresh"), CPU, batch_size=8)
    fresh.fit(images[8])
    si_fresh = fresh.self_influence(images[8])
    assert np.allclose(si, si_fresh, rtol=1e-5)
    stale = reference[1]
    assert np.abs(si - stale).max() > 0.05 * np.abs(stale).max()
    assert os.path.exists(os.path.join(out, "keep.txt"))
    # same model, settings and images: the factors on disk are reused, not refitted
    stamp = os.path.getmtime(os.path.join(out, FINGERPRINT_FILE))
    factors = ek.analyzer.factors_output_dir("ekfac")
    mtimes = {p: os.path.getmtime(p) for p in factors.rglob("*")}
    again = EKFAC(f, _cfg(), out, CPU, batch_size=8)
    again.fit(images[8])
    assert os.path.getmtime(os.path.join(out, FINGERPRINT_FILE)) == stamp
    assert {p: os.path.getmtime(p) for p in factors.rglob("*")} == mtimes
    # scoring without a fit (a later query) refuses factors fitted for other weights
    with pytest.raises(ValueError, match="another model"):
        EKFAC(SSLOutput(Tiny()).eval(), _cfg(), out, CPU, batch_size=8).pairwise(images[8][:2], images[8])


def test_model_fingerprint_follows_the_weights():
    a, b = Tiny(), Tiny()
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.l2.bias[0] += 1e-6
    assert model_fingerprint(a) != model_fingerprint(b)
    assert len(model_fingerprint(a)) == 64


@pytest.mark.parametrize("model", ["tiny", "proxy"])
def test_self_influence_from_our_gradients_equals_kronfluences_scoring(images, model, tmp_path):
    """EKFAC.self_influence applies the fitted factors to our per-example gradients; kronfluence's own scoring pass
    (its per-sample gradients, its preconditioning) must give the same scores: Linear layers with biases (Tiny),
    bias-free strided convs and eval BatchNorm (the proxy), the heuristic damping and a given one."""
    from fo_plugin.core.backbones import Backbone, BackboneSpec
    from fo_plugin.core.ekfac import FACTORS, UInt8Images
    from fo_plugin.core.models import ProxyConfig, ProxyModel

    if model == "tiny":
        f, imgs = SSLOutput(Tiny()), images[8][:16]
    else:
        torch.manual_seed(0)
        proxy = ProxyModel(ProxyConfig(width=4)).eval()
        net = Backbone(nn.Identity(), 32, proxy.cfg.mean, proxy.cfg.std, BackboneSpec(), proxy=proxy)
        f, imgs = SSLOutput(net), images[32][:16]
    for damping in (None, 1e-3):
        cfg = _cfg(imgs.shape[1], damping=damping)
        ek = EKFAC(f.eval(), cfg, str(tmp_path / f"ek{damping}"), CPU, batch_size=8)
        ek.fit(imgs)
        ours = ek.self_influence(imgs)
        ek.analyzer.compute_self_scores("kron", FACTORS, UInt8Images(imgs), per_device_train_batch_size=8,
                                        score_args=ek._score_args(), overwrite_output_dir=True)
        ref = ek.analyzer.load_self_scores("kron")["all_modules"].double().numpy()
        assert ref.min() > 0 and ref.std() > 0
        assert np.allclose(ours, ref, rtol=1e-4), np.abs(ours / ref - 1).max()
