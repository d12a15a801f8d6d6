"""What the App integration of an embeddings run costs: ``compute_ssl_embeddings`` on N real CIFAR-10 images with
the Brain similarity index and embeddings map off, then on, in one process (side by side), plus the first
"sort by similarity" query (the App's first click builds Brain's neighbour structure).

The backbone is an untrained proxy checkpoint (embedding cost is the same as a trained one; no training timed).
``--synthetic`` times the two Brain steps alone (``register_similarity``, ``register_map``) on N samples holding
256-d vectors of a 10-class Gaussian mixture, no images (for N where embedding real images twice is too slow here).

    FO_SSL_CACHE_DIR=/work/main/.cache/fo-ssl python bench/bench_brain_runs.py [--sizes 1000 50000] [--synthetic]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import common
import fiftyone as fo
import numpy as np

import fo_plugin
from fo_plugin.core.models import ProxyConfig, ProxyModel, save_proxy
from fo_plugin.data import cifar10_files
from fo_plugin.embeddings import register_map, register_similarity


def run(n: int, ckpt: str) -> dict:
    files = cifar10_files("train", per_class=n // 10)
    ds = fo.Dataset()
    try:
        ds.add_samples([fo.Sample(filepath=p) for p, _, _ in files], progress=False)
        t = time.perf_counter()
        off = fo_plugin.compute_ssl_embeddings(ds, checkpoint=ckpt, similarity_index=False, embeddings_map=False)
        t_off = time.perf_counter() - t
        t = time.perf_counter()
        on = fo_plugin.compute_ssl_embeddings(ds, checkpoint=ckpt)
        t_on = time.perf_counter() - t
        t = time.perf_counter()
        ds.sort_by_similarity(ds.first().id, k=10, brain_key=on["similarity_brain_key"]).values("id")
        t_query = time.perf_counter() - t
        return {"N": len(ds), "run, options off (s)": t_off, "run, options on (s)": t_on,
                "embed_s (off)": off["timings"]["embed_s"], "similarity index (s)": on["timings"]["similarity_s"],
                "map, PCA (s)": on["timings"]["map_s"], "first sort-by-similarity query (s)": t_query}
    finally:
        ds.delete()


def synthetic(n: int, d: int = 256) -> dict:
    g = np.random.default_rng(0)
    x = (g.normal(size=(10, d))[np.arange(n) % 10] + 0.8 * g.normal(size=(n, d))).astype(np.float32)
    ds = fo.Dataset()
    try:
        ds.add_samples([fo.Sample(filepath=f"/nonexistent/{i}.jpg") for i in range(n)], progress=False)
        ds.set_values("emb", list(x))
        t = time.perf_counter()
        register_similarity(ds, "emb", "emb_sim")
        t_sim = time.perf_counter() - t
        t = time.perf_counter()
        ds.sort_by_similarity(ds.first().id, k=10, brain_key="emb_sim").values("id")
        t_query = time.perf_counter() - t
        t = time.perf_counter()
        register_map(ds, "emb", "emb_map", "pca")
        t_map = time.perf_counter() - t
        return {"N": n, "similarity index (s)": t_sim, "first sort-by-similarity query (s)": t_query,
                "map, PCA (s)": t_map}
    finally:
        ds.delete()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 50000])
    ap.add_argument("--synthetic", action="store_true")
    a = ap.parse_args()
    if a.synthetic:
        common.table([synthetic(n) for n in a.sizes], "Brain similarity index + embeddings map alone, 256-d vectors "
                     "(CPU, 2 shared cores)")
        return
    with tempfile.TemporaryDirectory() as d:
        ckpt = os.path.join(d, "proxy.pt")
        save_proxy(ProxyModel(ProxyConfig()), ckpt)
        rows = [run(n, ckpt) for n in a.sizes]
    common.table(rows, "Brain similarity index + embeddings map added to an embeddings run (CPU, 2 shared cores)")


if __name__ == "__main__":
    main()
