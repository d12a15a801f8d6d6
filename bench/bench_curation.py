"""Near-duplicates and outliers, ours vs FiftyOne Brain, on the same SSL embeddings in one run.

Data: 1,000 real CIFAR-10 training images + 25 planted near-duplicates (5 each: exact, resized, re-encoded,
cropped, colour-shifted) + 40 planted MNIST digits (20 scattered, 20 grouped); a SimCLR proxy is trained on them
first (15 epochs) and its embeddings are given to both tools.

Near-duplicates: pairs reported, precision and recall on the planted pairs, time; ours across its aligned pixel
verification threshold (the precision/recall trade-off), Brain's compute_near_duplicates across its distance threshold.
Outliers: AUROC per kind of planted outlier, ours (multi-scale kNN) vs Brain's compute_uniqueness, and time.

    python bench/bench_curation.py [--per-class 100] [--epochs 15]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import common  # noqa: F401  (environment)
import fiftyone as fo
import fiftyone.brain as fob
import numpy as np
import torch

import fo_plugin
from fo_plugin.core.duplicates import embedding_candidates
from fo_plugin.core.images import iter_decoded
from fo_plugin.core.outliers import auroc, outlier_scores
from fo_plugin.core.verify import aligned_pair_scores
from fo_plugin.data import cifar10_files
from fo_plugin.planted import plant_duplicates, plant_outliers


def pr(found: set, truth: set, also_true: set) -> tuple[float, float]:
    """Precision counts pairs inside the grouped outliers (jittered copies of one digit) as correct too;
    recall is over the planted pairs."""
    return len(found & (truth | also_true)) / max(1, len(found)), len(found & truth) / len(truth)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--settings", type=json.loads, default=[0.7, 0.55, 0.4, None],
                    help="JSON list of verify thresholds on the aligned pixel score (null: embedding only)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    paths = [p for p, _, _ in cifar10_files("train", args.per_class)]
    ds = fo.Dataset()
    ds.add_samples([fo.Sample(filepath=p, planted="none") for p in paths], progress=False)
    ids = ds.values("id")
    dups = plant_duplicates(paths, f"{tmp}/dups", per_kind=5)
    ds.add_samples([fo.Sample(filepath=r["filepath"], planted="duplicate", source=ids[r["source"]])
                    for r in dups], progress=False)
    ds.add_samples([fo.Sample(**{"filepath": r["filepath"], "planted": r["kind"]})
                    for r in plant_outliers(f"{tmp}/ood", 20, 20)], progress=False)
    t = time.perf_counter()
    fo_plugin.compute_ssl_embeddings(ds, epochs=args.epochs)
    print(f"proxy trained and {len(ds)} images embedded in {time.perf_counter() - t:.0f} s")
    sids = ds.values("id")
    emb = np.stack(ds.values("ssl_embedding"))
    truth = {tuple(sorted(p)) for p in zip(*ds.match(fo.ViewField("planted") == "duplicate").values(["id", "source"]))}
    grouped = ds.match(fo.ViewField("planted") == "grouped").values("id")
    also = {tuple(sorted((a, b))) for a in grouped for b in grouped if a != b}

    rows = []
    t = time.perf_counter()
    thumbs = np.concatenate([b[1] for b in iter_decoded(ds.values("filepath"), 32)])
    cand = embedding_candidates(torch.as_tensor(emb), k=10, threshold=0.8)
    t_cand = time.perf_counter() - t
    t = time.perf_counter()
    score = aligned_pair_scores(thumbs, cand[:, :2].astype(np.int64))["score"]
    t_verify = time.perf_counter() - t
    for vt in args.settings:
        keep = score >= vt if vt is not None else np.ones(len(cand), bool)
        dt = t_cand + (t_verify if vt is not None else 0)
        found = {tuple(sorted((sids[int(r[0])], sids[int(r[1])]))) for r in cand[keep]}
        p, r = pr(found, truth, also)
        rows.append({"tool": "ours: SSL kNN + aligned pixel check", "setting": f"verify_threshold = {vt}",
                     "pairs": len(found), "precision": p, "recall": r, "seconds": dt})
    for thr in (0.02, 0.05, 0.1, 0.2):
        t = time.perf_counter()
        index = fob.compute_near_duplicates(ds, threshold=thr, embeddings=emb, progress=False)
        dt = time.perf_counter() - t
        found = {tuple(sorted((a, b))) for a, nb in index.neighbors_map.items() for b, _ in nb}
        p, r = pr(found, truth, also)
        rows.append({"tool": "FiftyOne Brain compute_near_duplicates", "setting": f"distance <= {thr}",
                     "pairs": len(found), "precision": p, "recall": r, "seconds": dt})
    common.table(rows, f"Near-duplicates: {len(truth)} planted pairs among {len(ds)} images (same embeddings; "
                       "pairs within the grouped digits count as correct)")

    planted = np.array(ds.values("planted"))
    t = time.perf_counter()
    ours = outlier_scores(torch.as_tensor(emb))
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    fob.compute_uniqueness(ds, embeddings=emb, progress=False)
    t_brain = time.perf_counter() - t
    uniq = np.array(ds.values("uniqueness"))
    rows = []
    for name, score, dt in (("ours: multi-scale kNN", ours["score"], t_ours), ("ours: kNN@10 distance", ours["knn"], t_ours),
                            ("FiftyOne Brain compute_uniqueness", uniq, t_brain)):
        row = {"score": name}
        for kind in ("scattered", "grouped"):
            m = (planted != "duplicate") & ((planted == "none") | (planted == kind))
            row[f"AUROC {kind}"] = auroc(score[m], planted[m] == kind)
        row["seconds"] = dt
        rows.append(row)
    common.table(rows, "Outliers: 20 scattered + 20 grouped MNIST digits among CIFAR-10 (same embeddings)")
    ds.delete()


if __name__ == "__main__":
    main()
