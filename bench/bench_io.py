"""FiftyOne I/O at scale: reading ids / paths and a 128-d vector field, writing a float field, for N samples.

On the ``bench_scale`` dataset (made once per N and kept). Each operation runs in its own subprocess; peak RSS is the
child's ``ru_maxrss``, "added" the part above the process with FiftyOne imported and the dataset loaded.

- ids + paths: ``features.canonical`` (``values(["id", "filepath"])`` and the canonical sort)
- vectors (ours): ``features.field_vectors`` (chunks of ``features.VALUES_CHUNK`` samples into one float32 array)
- vectors (Brain's way): ``np.stack(samples.values(field))``, what ``fiftyone.brain`` does with ``embeddings=field``
- write float: ``runs.Run.write`` of one float per sample (``set_values`` in chunks of 100k) plus ``Run.commit``

    python bench/bench_io.py [--sizes 200000]    # 1000000: the dataset takes ~15 min to make the first time
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import common  # the environment, sys.path, peak_gb
import numpy as np
from bench_scale import FIELD, dataset_name, make_dataset

OPS = ("ids_paths", "vectors", "vectors_brain_way", "write_float")


def child(op: str, n: int, seed: int) -> dict:
    import fiftyone as fo

    from fo_plugin import runs
    from fo_plugin.features import canonical, field_vectors

    ds = fo.load_dataset(dataset_name(n, seed))
    ids = canonical(ds)[0] if op in ("vectors", "write_float") else None
    base = common.peak_gb()
    t = time.perf_counter()
    out = {}
    if op == "ids_paths":
        ids, paths = canonical(ds)
    elif op == "vectors":
        z, ok, _ = field_vectors(ds, FIELD, ids)
        out["rows"] = int(ok.sum())
    elif op == "vectors_brain_way":
        z = np.stack(ds.values(FIELD))
        out["rows"] = len(z)
    elif op == "write_float":
        run = runs.Run(ds, "bench_io", "bench_io", {"value": ("bench_io_value", fo.FloatField, {})}, {},
                       overwrite=True)
        values = np.random.default_rng(0).random(len(ids)).tolist()
        with run:
            run.write("value", ids, values)
            out["write_s"] = time.perf_counter() - t
            run.commit()
    peak = common.peak_gb()
    out.update(op=op, n=n, seconds=time.perf_counter() - t, peak_gb=peak, added_gb=peak - base)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[200_000], help="N values (10000 to 1000000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    sizes = args.sizes
    if args.child:
        print(json.dumps(child(args.child, sizes[0], args.seed)), flush=True)
        return
    rows = []
    for n in sizes:
        make_dataset(n, args.seed)
        for op in OPS:
            cmd = ["nice", "-n", "5", sys.executable, os.path.abspath(__file__), "--child", op, "--sizes", str(n),
                   "--seed", str(args.seed)]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.dirname(__file__))
            lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
            r = json.loads(lines[-1]) if p.returncode == 0 and lines else \
                {"op": op, "n": n, "failed": (p.stderr.strip().splitlines() or ["?"])[-1][:120]}
            print(json.dumps(r), file=sys.stderr, flush=True)
            rows.append(r)
    print("\n| N | operation | seconds | samples / s | peak RSS GB | added GB |\n|---|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['n']:,} | {r['op']} | failed: {r['failed']} | | | |")
            continue
        extra = f" (write {r['write_s']:.1f} s)" if "write_s" in r else ""
        print(f"| {r['n']:,} | {r['op']} | {r['seconds']:.1f}{extra} | {r['n'] / r['seconds']:,.0f} | "
              f"{r['peak_gb']:.2f} | {r['added_gb']:.2f} |")


if __name__ == "__main__":
    main()
