"""Planted near-duplicate benchmark on real CIFAR-10: the aligned verifier (:func:`aligned_pair_scores`) on
candidate pairs: precision, recall per planted kind, false pairs, over its threshold.

Population: ``--population`` distinct train images; planted: ``--per-kind`` copies of every kind of
:mod:`fo_plugin.core.transforms`, each made from another train image (not in the population) which is added too.
Candidates (``--candidates``): ``luma`` (default): k = 10 nearest neighbours on 16 x 16 mean-removed luma
(independent of the verifier), UNION the planted pairs it misses (its recall is reported separately): the verifier
alone. ``ssl``: the product's candidates, each other's k = 10 neighbours with cosine >= 0.8 in the embedding of an
offline proxy trained ``--epochs`` on the bench images (cached in /tmp by fingerprint), united with each image's
``--pixel-k`` pixel-window candidates (:func:`pixel_candidates`; 0: SSL only); planted pairs they miss count
as missed, so recall is end to end. Raw precision counts every candidate pair not planted as false, a lower bound:
CIFAR-10 has many real near-duplicates. ``duplicate_labels.csv`` holds by-eye labels (same photo or not) of a random
sample of such pairs, stratified by score; the "labelled" precision counts the labelled same-photo pairs as true, the
"estimated" one also the unlabelled false pairs at the labelled share of their score bin (a measurement: the labels
are not used to choose anything). The top-scoring population pairs are printed and saved side by side.

Run: ``PYTHONPATH=$PWD python bench/bench_duplicates.py --population 10000 --per-kind 100`` (``--candidates ssl``:
~9 min on 2 cores, most of it verifying 130k pairs);
``BENCH_NPZ`` names the file the per-pair scores are saved to.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import zipfile

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from fo_plugin.core import transforms  # noqa: E402
from fo_plugin.core.duplicates import DUPLICATE_THRESHOLD, PIXEL_K, embedding_candidates  # noqa: E402
from fo_plugin.core.knn import knn  # noqa: E402
from fo_plugin.core.verify import aligned_pair_scores, gray_thumbnails, pixel_candidates  # noqa: E402

ZIP = os.path.join(os.environ.get("FO_SSL_SHARED_DATA", "/work/shared/data"), "cifar10", "cifar10-jpeg.zip")
LABELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "duplicate_labels.csv")


def load_train(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random CIFAR-10 train images, uint8 (n, 32, 32, 3), and their positions in the sorted list of train
    file names (the indices of ``LABELS``)."""
    with zipfile.ZipFile(ZIP) as z:
        names = sorted(x for x in z.namelist() if x.startswith("cifar10/train/") and x.endswith(".jpg"))
        pick = np.random.default_rng(seed).permutation(len(names))[:n]
        return np.stack([np.asarray(Image.open(io.BytesIO(z.read(names[i]))).convert("RGB")) for i in pick]), pick


def load_labels(path: str = LABELS) -> dict[tuple[int, int], bool]:
    """By-eye labels {(index_a, index_b): same photo} of CIFAR-10 train pairs (``unsure`` counts as different)."""
    out = {}
    with open(path) as fh:
        for line in fh:
            if line.startswith("#") or line.startswith("index_a"):
                continue
            a, b, *_, label = line.strip().split(",")
            out[(min(int(a), int(b)), max(int(a), int(b)))] = label == "same"
    return out


def corrected_precision(ok: np.ndarray, is_true: np.ndarray, score: np.ndarray, labelled: np.ndarray,
                        same: np.ndarray, bins=(0.0, 0.5, 0.55, 0.6, 0.7, 0.8, 1.01)) -> tuple[float, float]:
    """Precision with real CIFAR duplicates counted as true: (labelled pairs only, labelled + the unlabelled false
    pairs estimated from the labelled share of same-photo pairs in their score bin)."""
    fp = ok & ~is_true
    real_lab = (fp & labelled & same).sum()
    est = 0.0
    for lo, hi in zip(bins[:-1], bins[1:]):
        b = fp & (score >= lo) & (score < hi)
        lab = b & labelled
        if lab.sum():
            est += (b & ~labelled).sum() * (lab & same).sum() / lab.sum()
    tp, n_ok = (ok & is_true).sum(), max(ok.sum(), 1)
    return (tp + real_lab) / n_ok, (tp + real_lab + est) / n_ok


def ssl_embeddings(images: np.ndarray, epochs: int, seed: int) -> torch.Tensor:
    """(N, D) embeddings of an offline proxy trained ``epochs`` on ``images`` (as ``compute_ssl_embeddings`` trains
    it), cached in /tmp by fingerprint of the images and settings."""
    from fo_plugin.core.embed import embed_array
    from fo_plugin.core.fingerprint import array_fingerprint, fingerprint
    from fo_plugin.core.rng import sample_keys
    from fo_plugin.core.train import TrainConfig, train_proxy

    path = f"/tmp/bench_dups_ssl_{fingerprint(array_fingerprint(images), epochs, seed)}.npy"
    if not os.path.isfile(path):
        t = time.perf_counter()
        model, _ = train_proxy(images, sample_keys(range(len(images))), TrainConfig(epochs=epochs, seed=seed),
                               torch.device("cpu"))
        emb = embed_array(model.features, images, 32, torch.device("cpu"))
        np.save(path, emb)
        print(f"proxy trained {epochs} epochs and {len(images)} images embedded in {time.perf_counter() - t:.0f} s")
    return torch.as_tensor(np.load(path))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--population", type=int, default=10_000)
    ap.add_argument("--per-kind", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--candidates", choices=("luma", "ssl"), default="luma")
    ap.add_argument("--epochs", type=int, default=5, help="proxy training epochs (--candidates ssl)")
    ap.add_argument("--pixel-k", type=int, default=PIXEL_K, help="pixel candidates per image (--candidates ssl)")
    ap.add_argument("--png", default="/tmp/bench_dups_top_false.png")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(args.seed)
    n_src = args.per_kind * len(transforms.KINDS)
    x, cifar = load_train(args.population + n_src, args.seed)
    pop, orig = x[:args.population], x[args.population:]
    kinds = np.repeat(transforms.KINDS, args.per_kind)
    copies = np.stack([transforms.apply(im, k, rng) for im, k in zip(orig, kinds)])
    images = np.concatenate([pop, orig, copies])
    n, p0 = len(images), args.population
    true = np.stack([p0 + np.arange(n_src), p0 + n_src + np.arange(n_src)], 1)

    gray = gray_thumbnails(images)
    if args.candidates == "ssl":
        emb = ssl_embeddings(images, args.epochs, args.seed)
        t = time.perf_counter()
        extra = pixel_candidates(images, args.pixel_k) if args.pixel_k else None
        print(f"pixel candidates: {0 if extra is None else len(extra)} pairs in {time.perf_counter() - t:.1f} s")
        cand = embedding_candidates(emb, 10, 0.8, extra=extra)[:, :2].astype(np.int64)
    else:
        emb = torch.nn.functional.interpolate(gray[:, None], size=(16, 16), mode="area").flatten(1)
        idx, _ = knn(emb - emb.mean(1, keepdim=True), 10)
        cand = np.unique(np.sort(np.stack([np.repeat(np.arange(n), idx.shape[1]), idx.ravel()], 1), 1), axis=0)
    key = cand[:, 0] * n + cand[:, 1]
    tkey = true[:, 0] * n + true[:, 1]
    print(f"images {n}, candidate pairs {len(cand)} ({len(cand) / n:.1f} per image), candidate recall of planted pairs "
          f"{np.isin(tkey, key).mean():.3f}; " + ", ".join(
              f"{k} {np.isin(tkey[kinds == k], key).mean():.2f}" for k in transforms.KINDS))
    pairs = np.unique(np.concatenate([cand, true]), axis=0) if args.candidates == "luma" else cand
    pkey = pairs[:, 0] * n + pairs[:, 1]
    is_true = np.isin(pkey, tkey)
    kind_of = dict(zip(tkey.tolist(), kinds))
    pk = np.array([kind_of.get(int(k), "") for k in pkey])

    t = time.perf_counter()
    res = aligned_pair_scores(gray, pairs)
    dt = time.perf_counter() - t
    print(f"verifier: {len(pairs)} pairs in {dt:.1f} s = {len(pairs) / dt:.0f} pairs/s (torch threads "
          f"{torch.get_num_threads()})")
    flat = gray.flatten(1) - gray.flatten(1).mean(1, keepdim=True)
    flat = flat / (flat.norm(dim=1, keepdim=True) + 1e-6)
    plain = (flat[pairs[:, 0]] * flat[pairs[:, 1]]).sum(1).double().numpy()  # fixed-position correlation

    # by-eye labels of CIFAR pairs (a planted copy stands for its original)
    base = np.where(np.arange(n) >= p0 + n_src, np.arange(n) - n_src, np.arange(n))
    ca, cb = cifar[base[pairs[:, 0]]], cifar[base[pairs[:, 1]]]
    labels = load_labels()
    lab = [labels.get((int(min(a, b)), int(max(a, b)))) for a, b in zip(ca, cb)]
    labelled = np.array([v is not None for v in lab]) & ~is_true
    same = np.array([bool(v) for v in lab])
    print(f"candidate pairs with a by-eye label: {labelled.sum()} ({(labelled & same).sum()} same photo), from "
          f"{len(labels)} labels (a label also covers the pairs of its images' planted copies)")

    def row(name: str, ok: np.ndarray) -> str:
        tp, fp = (ok & is_true).sum(), (ok & ~is_true).sum()
        per = " ".join(f"{k}={(ok & is_true)[pk == k].sum() / args.per_kind:.2f}" for k in transforms.KINDS)
        lab_p, est_p = corrected_precision(ok, is_true, res["score"], labelled, same)
        return (f"| {name} | {tp / max(tp + fp, 1):.3f} | {lab_p:.3f} | {est_p:.3f} | {tp / len(true):.3f} | "
                f"{fp * 10_000 / n:.1f} | {per} |")

    print("\nprecision: raw (every non-planted pair false), labelled (by-eye same-photo pairs true), estimated (and "
          "unlabelled false pairs true at their score bin's labelled share)")
    print("\n| check | precision raw | labelled | estimated | recall | false pairs / 10k images | recall per kind |"
          "\n|---|---|---|---|---|---|---|")
    print(row(f"aligned score >= {DUPLICATE_THRESHOLD}", res["score"] >= DUPLICATE_THRESHOLD))
    print(row("aligned (previous) >= 0.825", res["aligned"] >= 0.825))
    print(row("candidates only (verify_threshold None)", np.ones(len(pairs), bool)))
    print("\n| threshold | precision raw | estimated | recall | min recall over kinds | false pairs |"
          "\n|---|---|---|---|---|---|")
    for th in np.arange(0.35, 0.86, 0.05):
        ok = res["score"] >= th
        tp, fp = (ok & is_true).sum(), (ok & ~is_true).sum()
        mk = min((ok & is_true)[pk == k].sum() / args.per_kind for k in transforms.KINDS)
        est_p = corrected_precision(ok, is_true, res["score"], labelled, same)[1]
        print(f"| {th:.3f} | {tp / max(tp + fp, 1):.3f} | {est_p:.3f} | {tp / len(true):.3f} | {mk:.2f} | {fp} |")
    near = ~is_true & (plain > 0.97)
    print(f"\nfalse pairs that are near-identical real CIFAR pairs (plain thumbnail correlation > 0.97): "
          f"{(near & (res['score'] >= DUPLICATE_THRESHOLD)).sum()} at the default threshold")
    pp = (pairs[:, 1] < p0) & ~is_true
    top = np.flatnonzero(pp)[np.argsort(-res["score"][pp])[:12]]
    print("\ntop-scoring population-population pairs (indices into the population, score, layout, detail):")
    for i in top:
        print(f"  {pairs[i, 0]:5d} {pairs[i, 1]:5d}  {res['score'][i]:.3f} {res['layout'][i]:.3f} "
              f"{res['detail'][i]:.3f}")
    canvas = np.full((len(top) * 34, 68, 3), 255, np.uint8)
    for r, i in enumerate(top):
        canvas[r * 34:r * 34 + 32, :32] = images[pairs[i, 0]]
        canvas[r * 34:r * 34 + 32, 36:] = images[pairs[i, 1]]
    Image.fromarray(canvas).resize((68 * 4, len(top) * 34 * 4), Image.Resampling.NEAREST).save(args.png)
    print(f"saved {args.png}")
    np.savez(os.environ.get("BENCH_NPZ", "/tmp/bench_dups_scores.npz"), pairs=pairs, is_true=is_true, kind=pk, plain=plain, **res)


if __name__ == "__main__":
    main()
