"""Influence cost and what it finds, on real images in one run.

1. Seconds per 1,000 samples for each curvature mode (identity, diagonal, EK-FAC; EK-FAC's fit and scoring apart)
   vs the floor: K + 1 plain forward + backward passes of the same model over the same images at the same batch
   size (batched weight gradients, no per-example gradients): the work of the K + 1 views each example needs.
   "identity + sketch" adds the 512-d gradient sketch ``compute_ssl_influence`` keeps for duplicates.
2. AUROC of planted out-of-domain images (MNIST digits hidden among CIFAR-10) for the augmentation loss and each
   self-influence mode, reported (not a target): what the scores do and do not find.

    python bench/bench_influence.py [--n 1000] [--ood 50] [--epochs 15] [--num-augs 4] [--device auto]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import common  # noqa: F401  (environment)
import numpy as np
import torch
from torch import nn

from fo_plugin.core.backbones import Backbone, BackboneSpec
from fo_plugin.core.device import resolve_device
from fo_plugin.core.ekfac import EKFAC
from fo_plugin.core.images import iter_decoded, to_float
from fo_plugin.core.influence import (
    CountSketch,
    InfluenceConfig,
    SSLOutput,
    aug_losses,
    fit_diagonal,
    per_example_grads,
    preconditioner,
    squared_norms,
    tracked_parameters,
)
from fo_plugin.core.outliers import auroc
from fo_plugin.core.rng import sample_keys
from fo_plugin.core.train import TrainConfig, train_proxy
from fo_plugin.data import cifar10_files, mnist_images


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--ood", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--num-augs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    paths = [p for p, _, _ in cifar10_files("train", per_class=args.n // 10)][: args.n]
    cifar = next(iter_decoded(paths, 32, batch_size=len(paths)))[1]
    images = np.concatenate([cifar, mnist_images(args.ood)])
    ood = np.r_[np.zeros(len(cifar), bool), np.ones(args.ood, bool)]
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(images))  # scatter the out-of-domain images
    images, ood = images[perm], ood[perm]
    t = time.perf_counter()
    proxy, hist = train_proxy(images, sample_keys(range(len(images))), TrainConfig(epochs=args.epochs), dev)
    print(f"proxy: {args.epochs} epochs on {len(images)} images in {time.perf_counter() - t:.0f} s, "
          f"final loss {hist[-1]['loss']:.3f}")
    net = Backbone(nn.Identity(), 32, proxy.cfg.mean, proxy.cfg.std, BackboneSpec(), proxy=proxy).to(dev).eval()
    f = SSLOutput(net).eval()
    bs, n = args.batch_size, len(images)

    def batches():
        for s in range(0, n, bs):
            yield to_float(images[s:s + bs], dev)

    def floor():
        for x in batches():
            for _ in range(args.num_augs + 1):
                net.zero_grad()
                f(x).square().sum().backward()

    f(next(iter(batches()))[:8]).square().sum().backward()  # warm-up (and of the per-example path below)
    per_example_grads(f, next(iter(batches()))[:8], InfluenceConfig(num_augs=args.num_augs))
    net.zero_grad()
    # a shared machine's load drifts: the floor is timed again around every mode, and each mode's ratio is to the
    # mean of the floors just before and just after it
    floors = [common.best_of(floor, 1)]
    rows, scores = [], {}
    cfg = InfluenceConfig(num_augs=args.num_augs)
    scores["augmentation loss"] = torch.cat([aug_losses(f, x, cfg) for x in batches()]).cpu().numpy()

    def row(mode, dt, around):
        rows.append({"mode": mode, "s per 1k samples": 1000 * dt / n, "ratio to floor": dt / around})

    for mode in ("identity", "identity + sketch", "diagonal", "ekfac"):
        c = InfluenceConfig(num_augs=args.num_augs, curvature=mode.split()[0])
        t0 = time.perf_counter()
        if mode == "ekfac":
            with tempfile.TemporaryDirectory() as d:
                ek = EKFAC(f, c, d, dev, bs)
                ek.fit(images)
                t_fit = time.perf_counter() - t0
                si = ek.self_influence(images)
        else:
            params = dict(f.named_parameters())
            n_params = sum(params[name].numel() for name in tracked_parameters(f, c))
            scale, sketch = None, CountSketch(n_params, 512) if "sketch" in mode else None
            if mode == "diagonal":
                scale = preconditioner(c, *fit_diagonal(f, batches, c))
            si = []
            for x in batches():
                g = per_example_grads(f, x, c)  # (B, P), as compute_ssl_influence
                if scale is not None:
                    g.mul_(scale)
                si.append(squared_norms(g).cpu().numpy())
                if sketch is not None:
                    sketch(g)
            si = np.concatenate(si)
        dt = time.perf_counter() - t0
        floors.append(common.best_of(floor, 1))
        around = (floors[-2] + floors[-1]) / 2
        if mode != "identity + sketch":
            scores[f"self-influence ({mode})"] = si
        if mode == "ekfac":
            row("ekfac: fit", t_fit, around)
            row("ekfac: self-influence", dt - t_fit, around)
        row(mode, dt, around)
    t_floor = float(np.median(floors))
    row(f"floor: {args.num_augs + 1} x forward+backward (median of {len(floors)})", t_floor, t_floor)
    common.table(rows, f"Influence cost, {n} images, K={args.num_augs}, batch {bs}, proxy width 32, {dev}, "
                 f"{torch.get_num_threads()} threads")
    common.table([{"score": k, "AUROC (OOD high)": auroc(v, ood)} for k, v in scores.items()],
                 f"Planted out-of-domain images: {args.ood} MNIST digits scattered among {len(cifar)} CIFAR-10")


if __name__ == "__main__":
    main()
