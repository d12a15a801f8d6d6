"""A small-scale check of the SAS claim: contrastive learning on a CL-Core subset vs a class-balanced random
subset of the same size, judged by a linear probe. CPU-sized, so it is a smoke test, not a reproduction (the
methods notes expect a gap of ~1-3 points that can be within noise at this budget).

Pool: the first --per-class CIFAR-10 training images of each class; a proxy SimCLR is trained on the pool; CL-Core
(released mode, k-means latent classes, K=10) keeps --fraction of it; a random subset of the same size per class is
the baseline. Each subset trains a fresh SimCLR (--epochs) for each seed; a logistic-regression probe on frozen
backbone features of the whole pool is scored on --test-per-class CIFAR-10 test images per class.

    python bench/bench_sas_downstream.py [--per-class 300] [--fraction 0.4] [--epochs 15] [--seeds 2]
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (environment)
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from fo_plugin.core.clcore import select
from fo_plugin.core.embed import embed_array
from fo_plugin.core.images import iter_decoded
from fo_plugin.core.kmeans import kmeans
from fo_plugin.core.rng import sample_keys
from fo_plugin.core.train import TrainConfig, train_proxy
from fo_plugin.data import cifar10_files


def load(split: str, per_class: int):
    rows = cifar10_files(split, per_class)
    images = next(iter_decoded([p for p, _, _ in rows], 32, batch_size=len(rows)))[1]
    return images, np.array([lab for _, lab, _ in rows])


def probe(model, x_train, y_train, x_test, y_test) -> float:
    dev = torch.device("cpu")
    f_tr = embed_array(model.features, x_train, 32, dev)
    f_te = embed_array(model.features, x_test, 32, dev)
    mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-6
    clf = LogisticRegression(max_iter=2000, C=1.0).fit((f_tr - mu) / sd, y_train)
    return float(clf.score((f_te - mu) / sd, y_test))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--test-per-class", type=int, default=200)
    ap.add_argument("--fraction", type=float, default=0.4)
    ap.add_argument("--proxy-epochs", type=int, default=15)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    dev = torch.device("cpu")
    x, y = load("train", args.per_class)
    xt, yt = load("test", args.test_per_class)
    keys = sample_keys(range(len(x)))
    t = time.perf_counter()
    proxy, _ = train_proxy(x, keys, TrainConfig(epochs=args.proxy_epochs, seed=100), dev)
    z = torch.as_tensor(embed_array(proxy, x, 32, dev))
    latent = kmeans(torch.nn.functional.normalize(z, dim=1), 10, seed=0)[0].numpy()
    n_keep = int(round(args.fraction * len(x)))
    sas = np.flatnonzero(select(z[None], latent, n_keep, "released")["selected"])
    print(f"proxy + CL-Core selection: {time.perf_counter() - t:.0f} s; kept {len(sas)} of {len(x)}")
    results = {"CL-Core (released)": [], "random, class-balanced": []}
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        rand = np.concatenate([rng.choice(np.flatnonzero(y == c), size=int((y[sas] == c).sum()), replace=False)
                               for c in range(10)])
        for name, idx in (("CL-Core (released)", sas), ("random, class-balanced", rand)):
            t = time.perf_counter()
            model, _ = train_proxy(x[np.sort(idx)], keys[np.sort(idx)], TrainConfig(epochs=args.epochs, seed=seed),
                                   dev)
            acc = probe(model, x, y, xt, yt)
            results[name].append(acc)
            print(f"  seed {seed} {name}: linear-probe accuracy {acc:.3f} ({time.perf_counter() - t:.0f} s)")
    common.table([{"subset": k, "size": len(sas), "accuracy mean": float(np.mean(v)), "std": float(np.std(v)),
                   "seeds": len(v)} for k, v in results.items()],
                 f"SimCLR on {100 * args.fraction:g}% of {len(x)} CIFAR-10 images, {args.epochs} epochs, linear probe "
                 f"on {len(xt)} test images")


if __name__ == "__main__":
    main()
