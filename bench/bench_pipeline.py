"""The whole pipeline (the demo: every operator through FiftyOne's operator execution) on real CIFAR-10 at growing N:
each stage's time and peak memory, and the growth exponent b of time ~ N^b and memory ~ N^b fitted over the sizes.

Each size is a fresh demo run in its own process (``python -m fo_plugin.demo --fresh``: the dataset rebuilt, the
proxy retrained), N images drawn from train and test in CIFAR-10's 5:1 ratio; 60,000 is ``--full`` (every image).
The proxy trains on at most ``--train-limit`` images (the demo's default, 10,000), so the embeddings stage does not
grow with N beyond that size; every image is embedded and scored.

    python bench/bench_pipeline.py                          # N = 5,000, 20,000, 60,000 (about 1 h on 2 CPU cores)
    python bench/bench_pipeline.py --sizes 2000 5000 --epochs 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import common  # the environment
import numpy as np

FULL = 60_000


def run_size(n: int, args) -> dict:
    """One fresh demo run of ``n`` images in a child process; its per-stage report."""
    size = ["--full"] if n >= FULL else ["--per-class", str(round(n / 12))]  # train k + test k // 5 per class
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, "-m", "fo_plugin.demo", *size, "--name", f"bench-pipeline-{n}", "--fresh",
           "--epochs", str(args.epochs), "--train-limit", str(args.train_limit), "--influence", args.influence,
           "--device", args.device, "--json", out]
    try:
        p = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True, timeout=args.timeout)
        if p.returncode != 0:
            raise SystemExit(f"the demo failed at N = {n} (its dataset is kept):\n{p.stderr[-2000:]}")
        with open(out) as f:
            rep = json.load(f)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"the demo at N = {n} took over {args.timeout:.0f} s") from None
    finally:
        os.remove(out)
    if not args.keep:
        drop_datasets(n)
    print(f"N = {rep['n']:,}: {rep['total_s']:.0f} s", file=sys.stderr, flush=True)
    return rep


DROP = """
import shutil, sys
import fiftyone as fo
from fo_plugin.runs import delete_run, list_runs
for name in sys.argv[1:]:
    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        for key in list_runs(ds):
            delete_run(ds, key)  # the run lifecycle removes its artifacts (checkpoints, factors, sketches)
        fo.delete_dataset(name)
"""


def drop_datasets(n: int) -> None:
    """Delete size ``n``'s demo dataset, its curated export and their runs' artifacts (a 60k run's are gigabytes)."""
    p = subprocess.run([sys.executable, "-c", DROP, f"bench-pipeline-{n}", f"bench-pipeline-{n}-curated"],
                       cwd=common.ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"could not delete the N = {n} datasets:\n{p.stderr[-1000:]}", file=sys.stderr)


def exponent(ns: list[int], ys: list[float]) -> float:
    """Least-squares slope of log y on log N (y ~ N^b)."""
    return float(np.polyfit(np.log(ns), np.log(np.maximum(ys, 1e-3)), 1)[0])


def report(reps: list[dict]) -> None:
    ns = [r["n"] for r in reps]
    stages = [s["stage"] for s in reps[-1]["stages"]]
    by = [{s["stage"]: s for s in r["stages"]} for r in reps]
    head = " | ".join(f"N = {n:,}: s, peak GB (+ the stage's own)" for n in ns)
    print(f"\n| stage | {head} | time exponent | memory exponent (the stage's own) |")
    print("|---|" + "---|" * (len(ns) + 2))
    for st in stages:
        if not all(st in b for b in by):
            continue
        t = [b[st]["seconds"] for b in by]
        m = [b[st]["peak_gb"] for b in by]
        grew = [b[st]["peak_gb"] - b[st]["start_gb"] for b in by]  # what the stage added to the process
        cells = " | ".join(f"{a:.1f}, {g:.2f} (+{x:.2f})" for a, g, x in zip(t, m, grew))
        print(f"| {st} | {cells} | {exponent(ns, t):.2f} | {exponent(ns, grew):.2f} |")
    tot = [r["total_s"] for r in reps]
    print(f"| total | {' | '.join(f'{x:.0f}' for x in tot)} | {exponent(ns, tot):.2f} | |")
    for r in reps:
        found = r.get("found")
        if not found:
            continue
        leak = ", ".join(f"{k} {v:.1%}" for k, v in (found.get("leaky_fraction") or {}).items())
        print(f"N = {r['n']:,}: {found.get('duplicate_groups')} duplicate groups (samples with a duplicate in another "
              f"split: {leak or '-'}), {found.get('outliers_flagged')} outliers, CL-Core kept "
              f"{found.get('clcore_kept')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[5_000, 20_000, FULL])
    ap.add_argument("--epochs", type=int, default=10, help="proxy epochs (the demo's default)")
    ap.add_argument("--train-limit", type=int, default=10_000)
    ap.add_argument("--influence", default="identity", choices=("identity", "diagonal", "ekfac"))
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--keep", action="store_true", help="keep each size's dataset (default: deleted once measured)")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds allowed to one size")
    args = ap.parse_args()
    report([run_size(n, args) for n in sorted(args.sizes)])


if __name__ == "__main__":
    main()
