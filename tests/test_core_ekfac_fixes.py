"""EK-FAC on real CIFAR-10 images (no FiftyOne): only layers that run are tracked (backbone output, an open_clip
image tower), runs with other settings leave nothing behind, and cached factors are reused for the same model,
settings and images and refitted when any of them changes (an interrupted fit never pairs new factors with an old
fingerprint)."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from fo_plugin.core.augment import AugmentConfig
from fo_plugin.core.ekfac import EKFAC, FACTORS_FILE
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


def test_a_run_with_other_settings_leaves_nothing_behind(images, reference, tmp_path):
    other = EKFAC(SSLOutput(Tiny()).eval(), _cfg(num_augs=3, seed=1), str(tmp_path / "other"), CPU, batch_size=8)
    other.fit(images[8])
    si_other = other.self_influence(images[8])
    again = EKFAC(SSLOutput(Tiny()).eval(), _cfg(), str(tmp_path / "again"), CPU, batch_size=8)
    again.fit(images[8])
    si = again.self_influence(images[8])
    assert np.allclose(si, reference[1], rtol=1e-5)  # the K = 3 run left nothing behind
    assert not np.allclose(si_other, si, rtol=1e-2)


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
    assert sorted(os.listdir(out)) == [FACTORS_FILE, "keep.txt"]  # one file, no temporary left
    # same model, settings and images: the factors on disk are reused, not refitted
    stamp = os.stat(os.path.join(out, FACTORS_FILE)).st_mtime_ns
    again = EKFAC(f, _cfg(), out, CPU, batch_size=8)
    again.fit(images[8])
    assert os.stat(os.path.join(out, FACTORS_FILE)).st_mtime_ns == stamp
    assert np.array_equal(again.self_influence(images[8]), si)
    # other images or another example cap: refitted (and different)
    for imgs, cap in ((images[8][::-1].copy(), None), (images[8], 12)):
        other = EKFAC(f, _cfg(), out, CPU, batch_size=8)
        other.fit(imgs, cap)
        assert os.stat(os.path.join(out, FACTORS_FILE)).st_mtime_ns != stamp
        stamp = os.stat(os.path.join(out, FACTORS_FILE)).st_mtime_ns
        if cap is None:  # the same images in another order: the same factors to rounding
            assert np.allclose(other.self_influence(images[8]), si, rtol=1e-4)
        else:
            assert not np.allclose(other.self_influence(images[8]), si, rtol=1e-3)
    # scoring without a fit (a later query) refuses factors fitted for other weights, and needs factors
    with pytest.raises(ValueError, match="another model"):
        EKFAC(SSLOutput(Tiny()).eval(), _cfg(), out, CPU, batch_size=8).pairwise(images[8][:2], images[8])
    with pytest.raises(FileNotFoundError, match="no EK-FAC factors"):
        EKFAC(f, _cfg(), str(tmp_path / "empty"), CPU, batch_size=8).self_influence(images[8])


def test_an_interrupted_fit_keeps_the_old_factors_with_their_own_fingerprint(images, reference, tmp_path,
                                                                             monkeypatch):
    import shutil

    import fo_plugin.core.ekfac as ekfac

    out = str(tmp_path / "cache")
    shutil.copytree(reference[0], out)
    model = Tiny()
    with torch.no_grad():
        model.l1.weight.mul_(1.5)
    f = SSLOutput(model).eval()

    def killed(obj, fh):  # the process dies while writing the new factors
        fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ekfac.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        EKFAC(f, _cfg(), out, CPU, batch_size=8).fit(images[8])
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == [FACTORS_FILE]  # the partial file is removed, the old one intact
    old = EKFAC(SSLOutput(Tiny()).eval(), _cfg(), out, CPU, batch_size=8)
    assert np.array_equal(old.self_influence(images[8]), reference[1])  # still usable for the model it fits
    with pytest.raises(ValueError, match="another model"):
        EKFAC(f, _cfg(), out, CPU, batch_size=8).self_influence(images[8])


def test_model_fingerprint_follows_the_weights():
    a, b = Tiny(), Tiny()
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.l2.bias[0] += 1e-6
    assert model_fingerprint(a) != model_fingerprint(b)
    assert len(model_fingerprint(a)) == 64
