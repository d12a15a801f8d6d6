"""Leaky splits on all 60,000 CIFAR-10 images (train + test): the fraction of test images with a near-duplicate in
train, as our default pipeline finds it, for comparison with ciFAIR (Barz & Denzler 2020: 3.3% of the CIFAR-10 test
images have a near-duplicate in the training set, found by CNN features and checked by hand).

The proxy is trained on ``--train-subset`` training images for ``--epochs`` (CPU-sized), then embeds all images;
``find_near_duplicates`` runs with ``split="split"``. A second run with the same options reuses the dataset, the
proxy and the embeddings. Saves a side-by-side PNG of test/train pairs found.

    python bench/bench_leaky_cifar.py                     # all 60k; about 15-20 min on 2 CPU cores
    python bench/bench_leaky_cifar.py --per-class 200     # 2,000 train + 2,000 test: a quick look
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (environment)
import fiftyone as fo
import numpy as np
from fiftyone import ViewField as F
from PIL import Image

import fo_plugin
from fo_plugin.data import CIFAR10_CLASSES, cifar10_files


def build(name: str, per_class: int | None) -> fo.Dataset:
    if fo.dataset_exists(name):
        return fo.load_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    for split in ("train", "test"):
        ds.add_samples([fo.Sample(filepath=p, split=split, ground_truth=fo.Classification(label=CIFAR10_CLASSES[lab]))
                        for p, lab, _ in cifar10_files(split, per_class)], progress=False)
    return ds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=None, help="images per class and split (default: all)")
    ap.add_argument("--train-subset", type=int, default=10_000, help="training images the proxy learns from")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--png", default="leaky_pairs.png")
    args = ap.parse_args()
    name = f"cifar10-leaky-{args.per_class or 'all'}"
    t = time.perf_counter()
    ds = build(name, args.per_class)
    print(f"dataset {name}: {len(ds)} samples ({time.perf_counter() - t:.0f} s)")
    t = time.perf_counter()
    sub = ds.match(F("split") == "train").take(min(args.train_subset, len(ds)), seed=0)
    ckpt = fo_plugin.compute_ssl_embeddings(sub, "proxy_train_embedding", epochs=args.epochs,
                                            overwrite=True)["checkpoint"]  # the same options reuse the checkpoint
    print(f"proxy: {args.epochs} epochs on {len(sub)} train images ({time.perf_counter() - t:.0f} s)")
    t = time.perf_counter()
    fo_plugin.compute_ssl_embeddings(ds, "ssl_embedding", checkpoint=ckpt, overwrite=True)
    print(f"embeddings: {len(ds)} images ({time.perf_counter() - t:.0f} s)")
    t = time.perf_counter()
    out = fo_plugin.find_near_duplicates(ds, "leaky", split="split", overwrite=True)
    print(f"near-duplicates: {out['num_groups']} groups ({out['num_exact_groups']} exact), {out['num_in_groups']} "
          f"samples ({time.perf_counter() - t:.0f} s)")
    frac = out["leaky_fraction"]
    print(f"leaky fraction: test {frac.get('test', 0):.2%} of test images have a duplicate in train "
          f"(ciFAIR: 3.3%), train {frac.get('train', 0):.2%}; {out['num_leaky_groups']} cross-split groups")
    pairs = fo_plugin.load_duplicate_pairs(ds, "leaky")
    split = dict(zip(*ds.values(["id", "split"])))
    path = dict(zip(*ds.values(["id", "filepath"])))
    cross = [p for p in pairs if split[p["a"]] != split[p["b"]]]
    pick = [cross[i] for i in np.random.default_rng(0).permutation(len(cross))[:24]]
    if pick:
        canvas = np.full((len(pick) * 34, 68, 3), 255, np.uint8)
        for r, p in enumerate(pick):
            a, b = (p["a"], p["b"]) if split[p["a"]] == "test" else (p["b"], p["a"])
            canvas[r * 34:r * 34 + 32, :32] = np.asarray(Image.open(path[a]).convert("RGB").resize((32, 32)))
            canvas[r * 34:r * 34 + 32, 36:] = np.asarray(Image.open(path[b]).convert("RGB").resize((32, 32)))
        Image.fromarray(canvas).resize((68 * 3, len(pick) * 34 * 3), Image.Resampling.NEAREST).save(args.png)
        print(f"saved {args.png}: {len(pick)} random test (left) / train (right) pairs of {len(cross)}")


if __name__ == "__main__":
    main()
