"""kNN at scale: exact tiled vs faiss IVF-Flat vs faiss HNSW vs FiftyOne Brain's sklearn path, on CPU.

Data: synthetic clustered vectors (128-d, 100 clusters, each with its own 16-d spread plus isotropic noise, like
embeddings of a low intrinsic dimension), 1% planted near-copies (a row plus noise, cosine ~0.9998) and 0.5%
outliers (random directions). Each (N, method) runs in its own subprocess so peak RSS (VmHWM) does not mix; the
RSS added over the process with its data loaded is given too. Recall@10 is against exact top-10 on 2,000 random query rows (the full exact
table is quadratic), "copies" = share of planted copies whose original is among their 10 neighbours (all copies).
Exact tiled at N > --exact-max is timed on 4,000 query rows and extrapolated (marked *). sklearn =
``NearestNeighbors(metric="cosine", algorithm="brute").kneighbors``, what Brain's near-duplicates runs; "old" =
the previous knn (4096 x N blocks). Then: k-th-neighbour distances for k in (10, 30, 100, 300) at N = 50k,
``kth_neighbour_distances`` (IVF) and a reference-subsample estimate vs exact top-300, Spearman per k.

    python bench/bench_knn.py [--big]   # --big adds N = 1M (about 8 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import common  # noqa: F401  (environment, sys.path)
import numpy as np
import torch
import torch.nn.functional as F

from fo_plugin.core.knn import build_index, exact_search, index_search, knn, kth_neighbour_distances

K = 10


def clustered(n: int, d: int = 128, clusters: int = 100, sub: int = 16, seed: int = 0):
    """x (N, d) float32, copy_of (N,) (-1: not a copy), is_outlier (N,)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    bases = 0.35 * rng.standard_normal((clusters, sub, d), dtype=np.float32)
    lab = rng.integers(0, clusters, n)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, 4096):  # chunked: the (rows, sub, d) gather would be 8 GB at 1M
        ls = lab[s:s + 4096]
        x[s:s + len(ls)] = centres[ls] + np.einsum("ns,nsd->nd", rng.standard_normal((len(ls), sub), dtype=np.float32),
                                                   bases[ls])
    x += 0.15 * rng.standard_normal((n, d), dtype=np.float32)
    nc, no = n // 100, n // 200
    perm = rng.permutation(n)
    dst, src, out = perm[:nc], perm[nc:2 * nc], perm[2 * nc:2 * nc + no]
    scale = 0.02 * np.linalg.norm(x[src], axis=1, keepdims=True) / math.sqrt(d)
    x[dst] = x[src] + scale * rng.standard_normal((nc, d), dtype=np.float32)
    x[out] = 3 * rng.standard_normal((no, d), dtype=np.float32)
    copy_of = np.full(n, -1)
    copy_of[dst] = src
    is_out = np.zeros(n, bool)
    is_out[out] = True
    return x, copy_of, is_out


def vm(field: str) -> float:
    """A /proc/self/status memory field in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def old_knn(x: torch.Tensor, k: int, chunk: int = 4096):
    """The previous exact path: (4096 x N) blocks, memory linear in N."""
    z = F.normalize(x.float(), dim=1)
    idx, sim = [], []
    for s in range(0, len(z), chunk):
        c = z[s:s + chunk] @ z.T
        c[torch.arange(len(c)), torch.arange(s, s + len(c))] = -float("inf")
        top = c.topk(k, dim=1)
        idx.append(top.indices)
        sim.append(top.values)
    return torch.cat(idx).numpy(), torch.cat(sim).numpy()


def worker(n: int, method: str, exact_max: int) -> dict:
    x, copy_of, _ = clustered(n)
    xt = torch.from_numpy(x)
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM: the peak of generating the data is not counted
        f.write("5")
    data_mb = vm("VmRSS")
    rng = np.random.default_rng(1)
    queries = np.sort(rng.choice(n, min(n, 2000), replace=False))
    note = ""
    t = time.perf_counter()
    if method == "exact" and n > exact_max:  # quadratic: time a query subsample, extrapolate
        sub = np.sort(rng.choice(n, 4000, replace=False))
        pos = np.full(n, -1)
        pos[sub] = np.arange(len(sub))
        z = F.normalize(xt, dim=1)
        exact_search(z[sub], z, K, db_ids=pos)
        secs, idx, note = (time.perf_counter() - t) * n / len(sub), None, "*"
    elif method == "sklearn":
        from sklearn.neighbors import NearestNeighbors

        nn = NearestNeighbors(metric="cosine", algorithm="brute").fit(x)
        _, idx = nn.kneighbors(x, K + 1)
        idx = np.array([[j for j in row if j != r][:K] for r, row in enumerate(idx)])
        secs = time.perf_counter() - t
    elif method == "old":
        idx, _ = old_knn(xt, K)
        secs = time.perf_counter() - t
    else:
        idx, _ = knn(xt, K, method=method)
        secs = time.perf_counter() - t
    peak = vm("VmHWM")
    row = {"N": n, "method": method, "time_s": secs, "note": note, "peak_rss_mb": peak, "data_rss_mb": data_mb}
    if idx is not None:  # ground truth: exact on the sampled queries and on every planted copy
        z = F.normalize(xt, dim=1)
        pos = np.full(n, -1)
        pos[queries] = np.arange(len(queries))
        ei, _ = exact_search(z[queries], z, K, db_ids=pos)
        row["recall@10"] = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(idx[queries], ei)]))
        cp = np.flatnonzero(copy_of >= 0)
        row["copies"] = float(np.mean([copy_of[c] in idx[c] for c in cp]))
    return row


def kth_comparison(n: int = 50_000, ks: tuple[int, ...] = (10, 30, 100, 300)) -> list[dict]:
    from scipy.stats import spearmanr

    x, _, _ = clustered(n)
    xt = torch.from_numpy(x)
    xt = xt - xt.mean(0)  # as the outlier score calls it
    t = time.perf_counter()
    _, es = knn(xt, max(ks), method="exact")
    rows = [{"how": "exact top-300", "time_s": time.perf_counter() - t} | {f"k={k}": 1.0 for k in ks}]
    t = time.perf_counter()
    est = kth_neighbour_distances(xt, ks, method="ivf")
    rows.append({"how": "kth_neighbour_distances (IVF)", "time_s": time.perf_counter() - t}
                | {f"k={k}": float(spearmanr(1 - es[:, k - 1], est[k]).statistic) for k in ks})
    z = F.normalize(xt, dim=1)
    for m in (n // 5, n // 2):  # reference subsample: the (k m / N)-th neighbour among m random rows
        t = time.perf_counter()
        ref = np.sort(np.random.default_rng(0).choice(n, m, replace=False))
        pos = np.full(n, -1)
        pos[ref] = np.arange(m)
        r = {k: max(1, round(k * m / n)) for k in ks}
        index = build_index(z[ref], "ivf")
        _, s = index_search(index, z, max(r.values()), nprobe=32, self_ids=pos)
        rows.append({"how": f"reference subsample m=N/{n // m}", "time_s": time.perf_counter() - t}
                    | {f"k={k}": float(spearmanr(1 - es[:, k - 1], 1 - s[:, r[k] - 1]).statistic) for k in ks})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", action="store_true", help="also N = 1M")
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 50_000, 200_000])
    ap.add_argument("--exact-max", type=int, default=50_000, help="exact tiled above this N: extrapolated")
    ap.add_argument("--sklearn-max", type=int, default=50_000)
    ap.add_argument("--no-kth", action="store_true")
    ap.add_argument("--methods", nargs="*", default=["exact", "ivf", "hnsw", "sklearn", "old"])
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(int(a.worker[0]), a.worker[1], a.exact_max)))
        return
    sizes = a.sizes + ([1_000_000] if a.big else [])
    rows = []
    for n in sizes:
        methods = [m for m in a.methods if n <= a.sklearn_max or m not in ("sklearn", "old")]
        for m in methods:
            out = subprocess.run([sys.executable, __file__, "--worker", str(n), m, "--exact-max", str(a.exact_max)],
                                 capture_output=True, text=True, env=os.environ)
            if out.returncode:
                print(f"{n} {m} failed: {out.stderr[-2000:]}", flush=True)
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    table_rows = []
    for r in rows:
        ref = {m["method"]: m for m in rows if m["N"] == r["N"]}
        table_rows.append({
            "N": r["N"], "method": r["method"], "time s": f"{r['time_s']:.3g}{r['note']}",
            "peak RSS MB": round(r["peak_rss_mb"]), "added MB": round(r["peak_rss_mb"] - r["data_rss_mb"]),
            "recall@10": f"{r['recall@10']:.4f}" if "recall@10" in r else "-",
            "copies found": f"{r['copies']:.4f}" if "copies" in r else "-",
            "speed-up vs exact": f"{ref['exact']['time_s'] / r['time_s']:.2g}" if "exact" in ref else "-",
            "speed-up vs sklearn": f"{ref['sklearn']['time_s'] / r['time_s']:.2g}" if "sklearn" in ref else "-",
            "peak RSS / sklearn": f"{r['peak_rss_mb'] / ref['sklearn']['peak_rss_mb']:.2g}" if "sklearn" in ref else "-",
        })
    common.table(table_rows, "kNN (k=10, 128-d, CPU, 2 cores; * = extrapolated from 4,000 query rows)")
    if not a.no_kth:
        common.table(kth_comparison(), "k-th neighbour distance at N = 50k: Spearman vs exact")


if __name__ == "__main__":
    main()
