"""CL-Core scoring + selection: time and peak memory for N = 10k and 50k on CPU with the embeddings given, vs the
floor (one pass of the blockwise similarity matmuls over the same classes) and vs apricot-select's facility
location on the same classes and budget. Each measurement runs in a fresh process so peak RSS is its own.

Embeddings: a 10-class Gaussian mixture in 128-d (the proxy's projection size), so the run needs no model.

    python bench/bench_clcore.py [--sizes 10000 50000] [--budget 0.8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import common
import numpy as np
import torch


def embeddings(n: int, d: int = 128, k: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g)
    labels = torch.arange(n) % k
    z = centres[labels] + 0.8 * torch.randn(n, d, generator=g)
    return z[None], labels.numpy()


def measure(method: str, n: int, budget: float) -> dict:
    from fo_plugin.core.clcore import ViewSet, quotas, select

    z, labels = embeddings(n)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if method in ("released", "greedy"):
        select(z, labels, int(round(budget * n)), method)
    elif method == "floor":
        for c in np.unique(labels):
            idx = torch.as_tensor(np.flatnonzero(labels == c))
            v = ViewSet(z[:, idx])
            for a in range(0, v.n, 2048):
                for b in range(0, v.n, 2048):
                    v.block(slice(a, a + 2048), slice(b, b + 2048))
    elif method == "apricot":
        from apricot import FacilityLocationSelection

        q = quotas(np.bincount(labels), int(round(budget * n)))
        x = torch.nn.functional.normalize(z[0], dim=1).numpy()
        for c in np.unique(labels):
            FacilityLocationSelection(int(q[c]), metric="cosine", optimizer="lazy").fit(x[labels == c])
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": dt, "peak_rss_mb": peak / 1024, "extra_rss_mb": (peak - base) / 1024}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 50000])
    ap.add_argument("--budget", type=float, default=0.8)
    ap.add_argument("--methods", nargs="+", default=["floor", "released", "greedy", "apricot"])
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), args.budget)))
        return
    rows = []
    for n in args.sizes:
        res = {}
        for m in args.methods:
            out = subprocess.run([sys.executable, __file__, "--one", m, str(n), "--budget", str(args.budget)],
                                 capture_output=True, text=True, timeout=3600)
            if out.returncode != 0:
                res[m] = None
                print(f"{m} N={n} failed: {out.stderr.strip().splitlines()[-1] if out.stderr else '?'}")
                continue
            res[m] = json.loads(out.stdout.strip().splitlines()[-1])
        floor = res["floor"]["seconds"] if res.get("floor") else float("nan")
        for m, r in res.items():
            if r:
                rows.append({"N": n, "method": m, "seconds": r["seconds"], "ratio to floor": r["seconds"] / floor,
                             "peak RSS MB": r["peak_rss_mb"], "extra RSS MB": r["extra_rss_mb"]})
    common.table(rows, f"CL-Core scoring + selection, 10 latent classes, D=128, budget {args.budget}, CPU "
                       f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
