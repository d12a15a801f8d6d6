"""Hook-based per-example gradients (one batched backward) against the torch.func reference they replaced
(vmap of grad, one example at a time), on real CIFAR-10 images (no FiftyOne): the proxy's own architecture (eval
BatchNorm, strided convs, bias-free layers, both outputs), conv variants (groups, dilation, stride, reflect and
"same" padding, bias, an in-place ReLU right after a conv), a layer called twice, token inputs (sequence-first with as
many tokens as rows too), an open_clip tower."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fo_plugin.core.augment import AugmentConfig
from fo_plugin.core.backbones import Backbone, BackboneSpec
from fo_plugin.core.images import iter_decoded, to_float
from fo_plugin.core.influence import InfluenceConfig, SSLOutput, make_views, per_example_grads, tracked_parameters
from fo_plugin.core.models import ProxyConfig, ProxyModel


def vmap_grads(f: nn.Module, x: torch.Tensor, cfg: InfluenceConfig) -> torch.Tensor:
    """The previous implementation: torch.func vmap(grad) over examples, each with its K + 1 views, (B, P)."""
    names = tracked_parameters(f, cfg)
    params = dict(f.named_parameters())
    tracked = {n: params[n].detach() for n in names}
    fixed = {n: p.detach() for n, p in params.items() if n not in tracked}
    fixed.update(dict(f.named_buffers()))
    views = torch.stack(make_views(x, cfg), dim=1)  # (B, K+1, 3, S, S)

    def loss_one(tr, v):  # v: (K+1, 3, S, S), one example
        out = functional_call(f, {**tr, **fixed}, (v,))  # (K+1, D)
        return (1 - F.cosine_similarity(out[:1].float(), out[1:].float(), dim=-1)).mean()

    g = vmap(grad(loss_one), in_dims=(None, 0))(tracked, views)
    return torch.cat([g[n].reshape(len(x), -1) for n in names], dim=1)


def assert_same(got: torch.Tensor, ref: torch.Tensor):
    assert got.shape == ref.shape
    assert ref.norm() > 0
    per_example = (got - ref).norm(dim=1) / ref.norm(dim=1)  # every example's gradient, not only the total
    assert per_example.max() < 1e-4, per_example.max()


@pytest.fixture(scope="module")
def images(cifar_files):
    """12 real CIFAR-10 images, float (12, 3, 32, 32) in [0, 1]."""
    return to_float(next(iter_decoded([p for p, _, _ in cifar_files[::33]][:12], 32, batch_size=12))[1], "cpu")


@pytest.mark.parametrize("output", ["projection", "backbone"])
def test_proxy_architecture_matches_vmap(images, output):
    torch.manual_seed(0)
    proxy = ProxyModel(ProxyConfig(width=8)).eval()
    for m in proxy.modules():  # BatchNorm statistics that are not the identity, as after training
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    f = SSLOutput(Backbone(nn.Identity(), 32, proxy.cfg.mean, proxy.cfg.std, BackboneSpec(), proxy=proxy), output)
    cfg = InfluenceConfig(num_augs=3)
    g = per_example_grads(f.eval(), images, cfg, chunk=5)  # chunks of 5, 5, 2 examples
    assert_same(g, vmap_grads(f, images, cfg))


class Odd(nn.Module):
    """Conv variants and a shared layer: grouped + dilated, strided with reflect padding, 'same' padding with bias,
    an in-place ReLU applied to a conv's own output, a Linear over tokens and a Linear called twice."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.c1 = nn.Conv2d(3, 8, 3, padding=2, dilation=2, bias=False)
        self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4, padding_mode="reflect")
        self.c3 = nn.Conv2d(8, 6, (3, 2), padding="same")
        self.relu = nn.ReLU(inplace=True)
        self.tok = nn.Linear(6, 6)
        self.shared = nn.Linear(6, 6)
        self.unused = nn.Linear(6, 6)

    def forward(self, x):
        h = self.relu(self.c3(torch.tanh(self.c2(torch.tanh(self.c1(x))))))  # in-place on c3's output
        t = self.tok(h.flatten(2).transpose(1, 2))  # (N, T, 6) tokens
        return self.shared(torch.tanh(self.shared(t.mean(1))))

    project = forward


def test_conv_variants_token_inputs_and_a_shared_layer_match_vmap(images):
    f = SSLOutput(Odd()).eval()
    cfg = InfluenceConfig(num_augs=2, augment=AugmentConfig(size=16))
    assert "unused.weight" not in tracked_parameters(f, cfg)
    x = images[:, :, :16, :16].contiguous()
    assert_same(per_example_grads(f, x, cfg, chunk=4), vmap_grads(f, x, cfg))


def _gram64(rows: torch.Tensor, bias: bool) -> torch.Tensor:
    rows = rows.double()
    if bias:
        rows = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], 1)
    return rows.t() @ rows


def test_covariances_sum_patches_and_output_gradients_over_every_row(images):
    """EK-FAC's Kronecker factors (per_example.covariances through influence.covariance_sums, in chunks of 2
    examples) against sums formed here from every row of every view in view-major order: A from each call's unfolded
    patches (dilated / grouped, strided with reflect padding, asymmetric 'same' padding with a bias, tokens, a layer
    called twice), G from its output gradients. The stride-1 convs go through the shift-and-window path."""
    from fo_plugin.core.influence import covariance_sums, loss_from_outputs, tracked_modules

    f = SSLOutput(Odd()).eval()
    cfg = InfluenceConfig(num_augs=2, augment=AugmentConfig(size=16))
    x = images[:5, :, :16, :16].contiguous()
    sums = {}
    covariance_sums(f, x, cfg, sums, chunk=2)
    modules = dict(f.named_modules())
    names = tracked_modules(f, cfg)
    rec = {n: [] for n in names}

    def keep(n):
        def hook(_m, inputs, out):
            pair = [inputs[0].detach(), None]
            rec[n].append(pair)
            out.register_hook(lambda g: pair.__setitem__(1, g))
        return hook

    hooks = [modules[n].register_forward_hook(keep(n)) for n in names]
    views = make_views(x, cfg)
    out = f(torch.cat(views))  # view-major rows: (K + 1) * B
    loss_from_outputs(list(out.reshape(len(views), len(x), -1).unbind(0))).sum().backward()
    for h in hooks:
        h.remove()
    for n in names:
        m, bias = modules[n], modules[n].bias is not None
        ref_a = ref_g = 0
        for a, d in rec[n]:
            if isinstance(m, nn.Conv2d):
                mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
                a = F.pad(a, m._reversed_padding_repeated_twice, mode=mode)
                a = a.unflatten(1, (m.groups, -1)).mean(1)  # kronfluence averages channel groups
                cols = F.unfold(a, m.kernel_size, m.dilation, 0, m.stride)  # (N, D, L)
                ref_a = ref_a + _gram64(cols.transpose(1, 2).reshape(-1, cols.shape[1]), bias)
                ref_g = ref_g + _gram64(d.permute(0, 2, 3, 1).reshape(-1, d.shape[1]), False)
            else:
                ref_a = ref_a + _gram64(a.reshape(-1, a.shape[-1]), bias)
                ref_g = ref_g + _gram64(d.reshape(-1, d.shape[-1]), False)
        got_a, got_g = sums[n]
        assert got_a.shape == ref_a.shape and got_g.shape == ref_g.shape, n
        assert (got_a - ref_a).abs().max() <= 1e-5 * ref_a.abs().max(), n
        assert (got_g - ref_g).abs().max() <= 1e-5 * ref_g.abs().max(), n
    assert len(rec["net.shared"]) == 2 and sums["net.shared"][0][-1, -1] == 2 * 3 * 5  # 2 calls x 15 rows
    assert sums["net.c3"][0][-1, -1] == 3 * 5 * 8 * 8  # every output position of every row


class Wide(nn.Module):
    """A strided conv with few output positions and many channels (an example's 3 x 4 patch rows are cheaper to
    rotate than its gradient) before a grouped conv and a Linear called twice (also rotated inputs)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.c1 = nn.Conv2d(3, 96, 8, stride=8)
        self.c2 = nn.Conv2d(96, 8, 1, groups=4, bias=False)
        self.shared = nn.Linear(8, 8)

    def forward(self, x):
        return self.shared(torch.tanh(self.shared(torch.tanh(self.c2(torch.tanh(self.c1(x)))).mean((2, 3)))))

    project = forward


@pytest.mark.parametrize("model", [Odd, Wide])
def test_gradients_in_a_kronecker_basis_equal_the_rotated_gradients(images, model):
    """per_example_grads with bases (EK-FAC's rotated gradients: from rotated patches and output gradients where an
    example has few rows, else formed and rotated) equals Q_G^T G Q_A of the plain gradients, every layer."""
    from fo_plugin.core.influence import tracked_modules

    f = SSLOutput(model()).eval()
    cfg = InfluenceConfig(num_augs=2, augment=AugmentConfig(size=16))
    x = images[:5, :, :16, :16].contiguous()
    modules = dict(f.named_modules())
    gen = torch.Generator().manual_seed(0)
    bases, shapes = {}, []
    for n in tracked_modules(f, cfg):
        m = modules[n]
        cout, din = m.weight.shape[0], m.weight[0].numel() + (m.bias is not None)
        bases[n] = tuple(torch.linalg.qr(torch.randn(k, k, generator=gen))[0] for k in (cout, din))
        shapes.append((cout, din, m.bias is not None))
    raw = per_example_grads(f, x, cfg, chunk=2)
    rot = per_example_grads(f, x, cfg, chunk=2, bases=bases)
    s = 0
    for (qg, qa), (cout, din, bias) in zip(bases.values(), shapes):
        n = cout * din
        w = raw[:, s:s + n - cout * bias].reshape(len(x), cout, -1)
        mat = torch.cat([w, raw[:, s + n - cout:s + n, None]], 2) if bias else w  # (B, out, in')
        ref = (qg.t() @ mat @ qa).reshape(len(x), -1)
        assert ((rot[:, s:s + n] - ref).norm(dim=1) / ref.norm(dim=1)).max() < 1e-4
        s += n
    assert s == raw.shape[1]


class SeqFirst(nn.Module):
    """Patch tokens handed to a Linear sequence-first, (T, N, in), as open_clip's older transformers do."""

    def __init__(self, side: int = 8):
        super().__init__()
        torch.manual_seed(2)
        self.patch = nn.Conv2d(3, 6, side, stride=side)  # 16 x 16 -> (16 // side)^2 tokens
        self.tok = nn.Linear(6, 6)

    def forward(self, x):
        t = self.patch(x).flatten(2).permute(2, 0, 1)  # (T, N, 6)
        return torch.tanh(self.tok(t)).mean(0)

    project = forward


@pytest.mark.parametrize("side,num_augs,chunk", [(8, 1, 2), (5, 2, 3)])
def test_sequence_first_tokens_as_many_as_rows_match_vmap(images, side, num_augs, chunk):
    """T tokens = chunk examples x (K + 1) views rows (4 = 2 x 2, and an odd chunk: 9 = 3 x 3): the shape alone cannot
    tell the layout."""
    f = SSLOutput(SeqFirst(side)).eval()
    cfg = InfluenceConfig(num_augs=num_augs, augment=AugmentConfig(size=16))
    x = images[:6, :, :16, :16].contiguous()
    assert_same(per_example_grads(f, x, cfg, chunk=chunk), vmap_grads(f, x, cfg))


def test_open_clip_image_tower_matches_vmap(images):
    import open_clip

    from fo_plugin.core.backbones import _ClipImage

    torch.manual_seed(0)
    clip = open_clip.CLIP(embed_dim=16, vision_cfg={"image_size": 32, "patch_size": 8, "width": 32, "layers": 2,
                                                    "head_width": 16},
                          text_cfg={"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1})
    net = Backbone(_ClipImage(clip), 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), BackboneSpec("open_clip"))
    f = SSLOutput(net, "backbone").eval()
    cfg = InfluenceConfig(num_augs=2, output="backbone")
    assert_same(per_example_grads(f, images[:6], cfg), vmap_grads(f, images[:6], cfg))


def test_frozen_weights_still_get_their_gradients(images):
    """requires_grad=False on the model (a frozen backbone) changes nothing: g is taken w.r.t. the tracked layers."""
    proxy = ProxyModel(ProxyConfig(width=4)).eval()
    f = SSLOutput(Backbone(nn.Identity(), 32, proxy.cfg.mean, proxy.cfg.std, BackboneSpec(), proxy=proxy))
    cfg = InfluenceConfig(num_augs=2)
    ref = per_example_grads(f, images[:4], cfg)
    for p in f.parameters():
        p.requires_grad_(False)
    assert torch.equal(per_example_grads(f, images[:4], cfg), ref)
    assert all(p.grad is None for p in f.parameters())  # nothing accumulated into .grad
