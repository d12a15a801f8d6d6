"""Label-free influence for SSL (Harilal et al., "Where Did Your Model Learn That?", arXiv 2412.17170).

The augmented view takes the place of the label. Per-example loss, with t_1..t_K the SSL method's own
augmentations drawn once from a fixed seed and applied to every image (common random numbers: l is a function of
the image alone, so scores never depend on batching or order, and an exact duplicate has exactly its twin's
gradient):

    l(x) = (1/K) sum_k [1 - cos(f(x), f(t_k(x)))]
    g(x) = d l(x) / d theta            (theta: weights and biases of the Conv2d / Linear layers that run in l and
                                        get a gradient from it; BatchNorm in eval mode)
    SI(x)   = g(x)^T (H + lambda I)^-1 g(x)              self-influence (>= 0; high = atypical / memorised)
    I(z, x) = -g(x)^T (H + lambda I)^-1 g(z)             train-to-sample influence (Koh & Liang sign: negative
                                                          = upweighting z lowers x's loss = z is a proponent)

Curvature H: ``ekfac`` (the paper; :mod:`ekfac`, fitted as the ``kronfluence`` package fits it, on the empirical
Fisher of l, damping 0.1 x mean eigenvalue unless given), ``diagonal`` (diagonal empirical Fisher) and ``identity``
(H + lambda I = I: SI = ||g||^2, TracIn at one checkpoint). The authors released no code: K, the output used (projection or
backbone), the tracked layers and the damping are our choices, exposed as parameters and recorded with each run.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from . import distributed
from .augment import AugmentConfig, augment
from .per_example import covariances
from .per_example import per_example_grads as example_grads

CURVATURES = ("ekfac", "diagonal", "identity")
OUTPUTS = ("projection", "backbone")


@dataclass
class InfluenceConfig:
    """Choices that define the scores (all recorded with the run).

    Args:
        num_augs (4): K augmented views per image in l(x).
        output ("projection"): which output f is: the SSL projection head or the backbone features.
        curvature ("ekfac"): ``"ekfac"``, ``"diagonal"`` or ``"identity"``.
        damping (None): lambda; None = 0.1 x the mean eigenvalue (EK-FAC) / mean diagonal (diagonal).
        seed (0): fixes the augmentations t_k.
        augment: the augmentation recipe (the SSL model's own).
    """

    num_augs: int = 4
    output: str = "projection"
    curvature: str = "ekfac"
    damping: float | None = None
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.to_dict()
        return d


class SSLOutput(nn.Module):
    """f: images in [0, 1] -> the chosen SSL output of a backbone (see :mod:`backbones`)."""

    def __init__(self, net: nn.Module, output: str = "projection"):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.net, self.output = net, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.project(x) if self.output == "projection" else self.net(x)


def make_views(x: torch.Tensor, cfg: InfluenceConfig) -> list[torch.Tensor]:
    """[x, t_1(x), ..., t_K(x)], each (B, 3, S, S): the same K draws (seed, view k) for every image."""
    same = torch.zeros(len(x), dtype=torch.int64, device=x.device)
    return [x] + [augment(x, same, cfg.augment, cfg.seed, k) for k in range(1, cfg.num_augs + 1)]


def loss_from_outputs(outs: list[torch.Tensor]) -> torch.Tensor:
    """Per-example l = mean_k (1 - cos(f(x), f(t_k x))): outs = [f(x), f(t_1 x), ...], each (B, D) -> (B,)."""
    ref = outs[0].float()
    return torch.stack([1 - F.cosine_similarity(ref, o.float(), dim=-1) for o in outs[1:]]).mean(0)


# The layer types kronfluence 1.0.1 wraps (TrackedLinear / TrackedConv2d), matched by exact type as it does: a
# subclass such as MultiheadAttention's out_proj (NonDynamicallyQuantizableLinear) is neither called nor tracked.
TRACKABLE = (nn.Linear, nn.Conv2d)
_TRACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # f -> {input side: module names}


def tracked_modules(f: nn.Module, cfg: InfluenceConfig) -> list[str]:
    """Names of the Linear / Conv2d layers of ``f`` whose forward runs in l(x) and whose weight gets a gradient
    from it (in ``named_modules`` order).

    Why: a backbone's unused parts (the proxy's projection head when ``output="backbone"``, an open_clip text
    tower) hold layers that never run; kronfluence cannot fit factors for them and they add nothing to g. Found by
    one probe forward + backward on 2 synthetic images at ``cfg.augment.size`` (buffers are cloned, so a model in
    train mode keeps its BatchNorm statistics); cached per model and input side.
    """
    size = cfg.augment.size
    cache = _TRACKED.setdefault(f, {})
    if size in cache:
        return list(cache[size])
    cands = {n: m for n, m in f.named_modules() if type(m) in TRACKABLE and n}
    params = {n: p.detach().requires_grad_(True) for n, p in f.named_parameters(remove_duplicate=False)}
    buffers = {n: b.clone() for n, b in f.named_buffers()}
    ran: set[str] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, _o, n=n: ran.add(n)) for n, m in cands.items()]
    ref = next(iter(params.values()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)  # (2, 3, S, S)
    try:
        with torch.enable_grad():
            outs = [functional_call(f, {**params, **buffers}, (v,)) for v in make_views(x, cfg)]
            loss = loss_from_outputs(outs).sum()
            weights = [params[f"{n}.weight"] for n in cands]
            grads = torch.autograd.grad(loss, weights, allow_unused=True) if weights else []
    finally:
        for h in hooks:
            h.remove()
    names = [n for n, g in zip(cands, grads) if n in ran and g is not None]
    if not names:
        raise ValueError("no Linear / Conv2d layer of the model gets a gradient from the augmentation loss")
    cache[size] = names
    return list(names)


def tracked_parameters(f: nn.Module, cfg: InfluenceConfig) -> list[str]:
    """Names of the weights and biases of :func:`tracked_modules`: exactly what kronfluence's EK-FAC covers
    (normalisation layers excluded), so every curvature mode scores the same parameters."""
    modules = dict(f.named_modules())
    return [f"{n}.{p}" for n in tracked_modules(f, cfg) for p in ("weight", "bias") if getattr(modules[n], p) is not None]


@torch.no_grad()
def aug_losses(f: SSLOutput, x: torch.Tensor, cfg: InfluenceConfig) -> torch.Tensor:
    """l(x) for a batch, (B,)."""
    return loss_from_outputs([f(v) for v in make_views(x, cfg)])


def _views_loss(f: SSLOutput, cfg: InfluenceConfig) -> tuple[list[tuple[str, nn.Module]], int, Callable]:
    """(tracked (name, module) pairs, K + 1, the summed loss of example-major view rows (b * (K+1), 3, S, S))."""
    modules = dict(f.named_modules())
    tracked = [(n, modules[n]) for n in tracked_modules(f, cfg)]
    group = cfg.num_augs + 1

    def loss(v: torch.Tensor) -> torch.Tensor:  # v: (b * (K+1), 3, S, S), example-major -> scalar
        out = f(v)  # (b * (K+1), D)
        return loss_from_outputs(list(out.reshape(-1, group, out.shape[-1]).unbind(1))).sum()

    return tracked, group, loss


def per_example_grads(f: SSLOutput, x: torch.Tensor, cfg: InfluenceConfig,
                      chunk: int = 32, bases: dict | None = None) -> torch.Tensor:
    """g(x) for a batch as (B, P) float32, P = number of tracked weights, in :func:`tracked_parameters` order
    (``bases``: layers whose columns come in a Kronecker eigenbasis, see :func:`per_example.per_example_grads`).

    The K + 1 views of ``chunk`` examples go through ``f`` as one batch of (K + 1) * chunk rows and one backward
    pass; each tracked layer's per-example gradient is then formed from its activations and output gradients
    (:mod:`per_example`), summed over the example's views: about the cost of K + 1 plain forward + backward passes.
    """
    tracked, group, loss = _views_loss(f, cfg)
    params = dict(f.named_parameters())
    g = torch.empty(len(x), sum(params[n].numel() for n in tracked_parameters(f, cfg)), device=x.device)  # (B, P)
    for s in range(0, len(x), chunk):
        views = torch.stack(make_views(x[s:s + chunk], cfg), dim=1)  # (b, K+1, 3, S, S)
        example_grads(loss, views.flatten(0, 1), tracked, group, g[s:s + chunk], bases)
    return g


def covariance_sums(f: SSLOutput, x: torch.Tensor, cfg: InfluenceConfig, sums: dict[str, list[torch.Tensor]],
                    chunk: int = 32) -> None:
    """Adds the EK-FAC Kronecker-factor sums of a batch (every row of every one of the K + 1 views, every position)
    to ``sums``: per tracked layer [A (in', in'), G (out, out)] float64 (:func:`per_example.covariances`)."""
    tracked, _, loss = _views_loss(f, cfg)
    for s in range(0, len(x), chunk):
        views = torch.stack(make_views(x[s:s + chunk], cfg), dim=1)  # (b, K+1, 3, S, S)
        covariances(loss, views.flatten(0, 1), tracked, sums)


class CountSketch:
    """A random projection R^P -> R^d that needs no (P, d) matrix: each coordinate goes to one of d buckets with
    a random sign. Inner products are preserved in expectation (error ~ |a| |b| / sqrt(d))."""

    def __init__(self, p: int, d: int, seed: int = 0, device="cpu"):
        g = torch.Generator().manual_seed(seed)
        self.bucket = torch.randint(d, (p,), generator=g).to(device)
        self.sign = (torch.randint(2, (p,), generator=g) * 2 - 1).float().to(device)
        self.d = d

    def __call__(self, g: torch.Tensor, rowwise: bool | None = None) -> torch.Tensor:  # (B, P) -> (B, d)
        """``rowwise`` (None: on CPU): one 1-D index_add per row, ~4x faster on CPU than one along dim 1, which is
        the path a GPU takes, in blocks of 8 rows (a row loop there launches B kernels). Both give the same sums (to
        rounding: a GPU adds in any order)."""
        out = torch.zeros(g.shape[0], self.d, dtype=g.dtype, device=g.device)
        if not (g.device.type == "cpu" if rowwise is None else rowwise):
            for s in range(0, len(g), 8):  # blocks of 8 rows: the signed copy stays small next to g (B, P)
                out[s:s + 8].index_add_(1, self.bucket, g[s:s + 8] * self.sign)
            return out
        for i in range(len(g)):
            out[i].index_add_(0, self.bucket, g[i] * self.sign)
        return out


def squared_norms(g: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """||g_i||^2 for each row of (B, P), float64 (B,): float32 norms of blocks of ``block`` coordinates summed in
    float64 (relative error ~1e-7, where casting the whole (B, P) to float64 costs as much as computing g)."""
    if len(g) == 0:
        return g.new_zeros(0, dtype=torch.float64)
    cut = g.shape[1] // block * block
    out = torch.linalg.vector_norm(g[:, cut:], dim=1).double().pow(2)
    if cut:
        out += torch.linalg.vector_norm(g[:, :cut].reshape(len(g), -1, block), dim=2).double().pow(2).sum(1)
    return out


BatchIter = Callable[[], Iterator[torch.Tensor]]


def fisher_sums(f: SSLOutput, batches: BatchIter, cfg: InfluenceConfig) -> tuple[torch.Tensor, int]:
    """(sum of g^2 over the examples of ``batches``, (P,); their number): this process's part of the diagonal
    empirical Fisher."""
    total, n = None, 0
    for x in batches():
        sq = per_example_grads(f, x, cfg).square_().sum(0)  # (P,)
        total = sq if total is None else total.add_(sq)
        n += len(x)
    if total is None:  # no rows here (a rank of a torchrun job with none): P comes from the tracked parameters
        params = dict(f.named_parameters())
        total = torch.zeros(sum(params[p].numel() for p in tracked_parameters(f, cfg)),
                            device=next(iter(params.values())).device)
    return total, n


def fit_diagonal(f: SSLOutput, batches: BatchIter | None, cfg: InfluenceConfig,
                 sums: tuple[torch.Tensor, int] | None = None) -> tuple[torch.Tensor, float]:
    """Diagonal empirical Fisher E[g^2] over the fit batches and the damping used with it.

    ``sums``: :func:`fisher_sums` already taken (instead of ``batches``). In a torchrun job they are this rank's and
    are summed over every rank's (:mod:`distributed`)."""
    total, n = sums if sums is not None else fisher_sums(f, batches, cfg)
    total = distributed.all_reduce_sum(total)
    n = int(distributed.all_reduce_sum(torch.tensor(n)))
    diag = total / max(n, 1)
    damping = cfg.damping if cfg.damping is not None else 0.1 * diag.mean().item()
    return diag, damping


def preconditioner(cfg: InfluenceConfig, diag: torch.Tensor | None, damping: float) -> torch.Tensor | None:
    """(H + lambda I)^-1/2 as a vector for the diagonal mode; None (identity) otherwise."""
    if cfg.curvature == "diagonal":
        return (diag + damping).rsqrt()
    return None


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (no ties handling needed for continuous scores)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])
