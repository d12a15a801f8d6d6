"""Influence cost and what it finds, on real images in one run.

1. Seconds per 1,000 samples for each curvature mode (identity, diagonal, EK-FAC) vs the floor: one plain
   forward + backward pass of the same model over the same images at the same batch size (the ratio includes
   the K + 1 views each example needs).
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
from fo_plugin.core.influence import InfluenceConfig, SSLOutput, aug_losses, fit_diagonal, per_example_grads
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
            net.zero_grad()
            f(x).square().sum().backward()

    t0 = time.perf_counter()
    floor()
    t_floor = time.perf_counter() - t0
    rows, scores = [], {}
    cfg = InfluenceConfig(num_augs=args.num_augs)
    scores["augmentation loss"] = torch.cat([aug_losses(f, x, cfg) for x in batches()]).cpu().numpy()
    for mode in ("identity", "diagonal", "ekfac"):
        c = InfluenceConfig(num_augs=args.num_augs, curvature=mode)
        t0 = time.perf_counter()
        if mode == "ekfac":
            with tempfile.TemporaryDirectory() as d:
                ek = EKFAC(f, c, d, dev, bs)
                ek.fit(images)
                si = ek.self_influence(images)
        else:
            scale = None
            if mode == "diagonal":
                diag, lam = fit_diagonal(f, batches, c)
                scale = (diag + lam).reciprocal()
            si = np.concatenate([(per_example_grads(f, x, c).pow(2) * (scale if scale is not None else 1)).sum(1)
                                 .double().cpu().numpy() for x in batches()])
        dt = time.perf_counter() - t0
        scores[f"self-influence ({mode})"] = si
        rows.append({"mode": mode, "s per 1k samples": 1000 * dt / n, "ratio to floor": dt / t_floor})
    rows.append({"mode": "floor: forward+backward", "s per 1k samples": 1000 * t_floor / n, "ratio to floor": 1.0})
    common.table(rows, f"Influence cost, {n} images, K={args.num_augs}, batch {bs}, proxy width 32, {dev}")
    common.table([{"score": k, "AUROC (OOD high)": auroc(v, ood)} for k, v in scores.items()],
                 f"Planted out-of-domain images: {args.ood} MNIST digits scattered among {len(cifar)} CIFAR-10")


if __name__ == "__main__":
    main()
