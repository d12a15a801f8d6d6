"""Our embedding-level stages against FiftyOne Brain on the same stored embedding field, at growing N.

Data: ``bench_knn.clustered`` vectors (128-d, 100 clusters, 1% planted near-copies at cosine ~0.9998, 0.5% planted
outliers in random directions) stored in a ``VectorField`` of a FiftyOne dataset of N samples (filepaths that do not
exist: no stage here reads pixels). The dataset is made once per (N, seed) and kept (``bench-scale-<N>-s<seed>``).
Each stage runs in its own subprocess; its wall time is that of the one call (each tool's imports are timed apart
and shown beside it), its peak memory the child's
``ru_maxrss`` (imports and the dataset handle included, the same for both tools; the database server is not counted).

Stages: ours ``find_near_duplicates`` on the field without pixel confirmation (``OURS_DUPLICATES`` below),
``find_outliers`` on the field without image statistics, ``compute_clcore`` on the field with 50 latent classes;
Brain's ``compute_near_duplicates(embeddings=field)`` (default threshold 0.2 = cosine 0.8, ours is cosine >= 0.8
too) and ``compute_uniqueness(embeddings=field)``. Recall: near-copies = share of planted (original, copy) pairs
put in one group; outliers = share of planted outliers among the top 1% (twice their number) of the score, and\namong the top 2% (what ``find_outliers`` flags by default).

    python bench/bench_scale.py [--sizes 10000 50000] [--repeat 3] [--timeout 1800]   # 200000 1000000 also work
    python bench/bench_scale.py --core --sizes 1000000   # the numeric core of our stages only, no FiftyOne

``--core``: the same data as arrays, no dataset (the datasets are inserted as raw documents: 1M samples took 99 s
on 2 cores, where ``add_samples`` was projected at over an hour): ``core_dups`` = ``embedding_candidates`` + ``groups``, ``core_outliers`` = ``outlier_scores`` of the
embedding, ``core_clcore`` = k-means (50 classes) + ``select``; time and peak RSS of the whole child (data
generation included in the memory, not in the time).
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

FIELD = "emb"
# our near-duplicate search with embeddings only: every pixel / detail confirmation off (one place to change it)
OURS_DUPLICATES = {"verify_threshold": None}
STAGES = {  # stage -> (tool, what it is compared with)
    "dups": ("ours", "brain_dups"), "outliers": ("ours", "brain_uniqueness"), "clcore": ("ours", None),
    "brain_dups": ("brain", None), "brain_uniqueness": ("brain", None),
    "core_dups": ("ours", None), "core_outliers": ("ours", None), "core_clcore": ("ours", None),
}
CORE_STAGES = ("core_dups", "core_outliers", "core_clcore")
NAMES = {"dups": "near-duplicates", "outliers": "outliers / uniqueness", "clcore": "CL-Core (50 classes)",
         "core_dups": "near-duplicates, core only", "core_outliers": "outliers, core only",
         "core_clcore": "CL-Core, core only"}
TRUTH_DIR = os.path.join(common.ROOT, ".cache", "bench-scale")


def dataset_name(n: int, seed: int) -> str:
    return f"bench-scale-{n}-s{seed}"


def make_dataset(n: int, seed: int = 0, chunk: int = 50_000):
    """The benchmark dataset of ``n`` samples (made once, then reused) and its truth file (ids, copy_of, is_out)."""
    import fiftyone as fo
    from bench_knn import clustered

    name = dataset_name(n, seed)
    truth = os.path.join(TRUTH_DIR, f"{name}.npz")
    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        if len(ds) == n and os.path.isfile(truth) and ds.has_field(FIELD):
            with np.load(truth) as f:
                t = {k: f[k] for k in f.files}
            if str(t["ids"][0]) != ds.first().id:  # a truth file of another build of this dataset (another
                # database): the rows are the same (same n and seed, inserted in order), the ids are this one's
                np.savez(truth, **{**t, "ids": np.array(ds.values("id"))})
            return ds, truth
        ds.delete()
    t = time.perf_counter()
    x, copy_of, is_out = clustered(n, seed=seed)
    ds = fo.Dataset(name, persistent=True)
    ds.media_type = "image"  # what add_samples would set from the first filepath
    ds.add_sample_field(FIELD, fo.VectorField)
    ids = []
    for s in range(0, n, chunk):
        ids += _insert_raw(ds, x, s, min(s + chunk, n))
    ds.reload()
    os.makedirs(TRUTH_DIR, exist_ok=True)
    np.savez(truth, ids=np.array(ids), copy_of=copy_of, is_out=is_out)
    print(f"made {name} in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    return ds, truth


def _insert_raw(ds, x: np.ndarray, start: int, end: int) -> list[str]:
    """Samples ``start:end`` inserted as raw documents in FiftyOne's own layout (what ``add_samples`` writes for a
    filepath and a VectorField, without a Python Sample object each: a 1M-sample dataset in minutes, not an hour)."""
    from datetime import datetime

    import fiftyone.core.utils as fou
    from bson import ObjectId

    now = datetime.utcnow()
    rng = np.random.default_rng(start)
    docs = [{"_id": ObjectId(), "filepath": f"/nonexistent/bench-scale/{i:08d}.jpg", "tags": [], "_media_type": "image",
             "_rand": float(r), FIELD: fou.serialize_numpy_array(x[i]), "_dataset_id": ds._doc.id, "created_at": now,
             "last_modified_at": now} for i, r in zip(range(start, end), rng.random(end - start))]
    ds._sample_collection.insert_many(docs, ordered=False)
    return [str(d["_id"]) for d in docs]


def _pair_recall(ids: np.ndarray, copy_of: np.ndarray, group_of: dict) -> float:
    """Share of planted (original, copy) pairs whose two samples are in one group (``group_of``: id -> group)."""
    dst = np.flatnonzero(copy_of >= 0)
    found = [group_of.get(ids[d]) is not None and group_of.get(ids[d]) == group_of.get(ids[copy_of[d]]) for d in dst]
    return float(np.mean(found))


def _top_recall(ids: np.ndarray, is_out: np.ndarray, score: dict, times: int = 2) -> float:
    """Share of planted outliers among the top ``times`` x their number (2: the top 1%) of ``score`` (id -> score)."""
    s = np.array([score.get(i, -np.inf) if score.get(i) is not None else -np.inf for i in ids])
    top = np.argsort(-s, kind="stable")[:times * int(is_out.sum())]
    return float(is_out[top].sum() / is_out.sum())


def core_child(stage: str, n: int, seed: int) -> dict:
    """The numeric core of one of our stages on the benchmark's vectors (no FiftyOne): time, peak memory, recall."""
    from bench_knn import clustered

    z, copy_of, is_out = clustered(n, seed=seed)  # a numpy array: the near-duplicate and outlier cores need no torch
    t = time.perf_counter()
    out = {"stage": stage, "n": n}
    if stage == "core_dups":
        from fo_plugin.core.duplicates import embedding_candidates, groups
        group = groups(n, embedding_candidates(z, 10, 0.8))
        dst = np.flatnonzero(copy_of >= 0)
        out["recall"] = float(np.mean((group[dst] >= 0) & (group[dst] == group[copy_of[dst]])))
    elif stage == "core_outliers":
        from fo_plugin.core.outliers import outlier_scores
        score = outlier_scores(z)["score"]
        top = np.argsort(-score, kind="stable")
        out["recall"] = float(is_out[top[:2 * is_out.sum()]].sum() / is_out.sum())
        out["recall_2pct"] = float(is_out[top[:4 * is_out.sum()]].sum() / is_out.sum())
    elif stage == "core_clcore":
        import torch

        from fo_plugin.core.clcore import select
        from fo_plugin.core.kmeans import kmeans

        z = torch.as_tensor(z)
        labels = kmeans(torch.nn.functional.normalize(z, dim=1), 50, 0)[0].numpy()
        select(z[None], labels, int(0.8 * n))
    else:
        raise ValueError(stage)
    out.update(seconds=time.perf_counter() - t, peak_gb=common.peak_gb())
    return out


def child(stage: str, n: int, seed: int) -> dict:
    """Run one stage on the benchmark dataset in this process; time, peak memory and recall."""
    if stage in CORE_STAGES:
        return core_child(stage, n, seed)
    import fiftyone as fo

    ds = fo.load_dataset(dataset_name(n, seed))
    t = time.perf_counter()  # each tool's imports, timed apart from its call (a notebook or the App pays them once)
    if stage in ("brain_dups", "brain_uniqueness"):
        import fiftyone.brain as fob
        import fiftyone.brain.internal.core.duplicates  # noqa: F401  (what the call would import)
        import fiftyone.brain.internal.core.sklearn  # noqa: F401
        import fiftyone.brain.internal.core.uniqueness  # noqa: F401
    elif stage == "dups":  # each stage imports what it needs (only CL-Core loads torch)
        from fo_plugin.duplicates import find_near_duplicates
    elif stage == "outliers":
        from fo_plugin.outliers import find_outliers
    else:
        from fo_plugin.clcore import compute_clcore
    imports = time.perf_counter() - t
    t = time.perf_counter()
    if stage == "dups":
        find_near_duplicates(ds, "bench_dups", embeddings_field=FIELD, overwrite=True, **OURS_DUPLICATES)
    elif stage == "outliers":
        find_outliers(ds, "bench_outliers", embeddings_field=FIELD, image_stats=False, overwrite=True)
    elif stage == "clcore":
        compute_clcore(ds, "bench_clcore", embeddings_run=None, embeddings_field=FIELD, num_classes=50,
                       overwrite=True)
    elif stage == "brain_dups":
        index = fob.compute_near_duplicates(ds, embeddings=FIELD)
    elif stage == "brain_uniqueness":
        fob.compute_uniqueness(ds, uniqueness_field="bench_uniqueness", embeddings=FIELD)
    else:
        raise ValueError(stage)
    out = {"stage": stage, "n": n, "seconds": time.perf_counter() - t, "import_s": imports,
           "peak_gb": common.peak_gb()}
    truth = np.load(os.path.join(TRUTH_DIR, f"{dataset_name(n, seed)}.npz"))
    ids, copy_of, is_out = truth["ids"], truth["copy_of"], truth["is_out"]
    if stage == "dups":
        out["recall"] = _pair_recall(ids, copy_of, dict(zip(*ds.values(["id", "bench_dups_group"]))))
    elif stage == "brain_dups":
        group = {}
        for g, (key, dups) in enumerate(index.neighbors_map.items()):
            group[key] = g
            group.update({d: g for d, _ in dups})
        out["recall"] = _pair_recall(ids, copy_of, group)
    elif stage == "outliers":
        score = dict(zip(*ds.values(["id", "bench_outliers_score"])))
        out["recall"], out["recall_2pct"] = _top_recall(ids, is_out, score), _top_recall(ids, is_out, score, 4)
    elif stage == "brain_uniqueness":
        score = dict(zip(*ds.values(["id", "bench_uniqueness"])))
        out["recall"], out["recall_2pct"] = _top_recall(ids, is_out, score), _top_recall(ids, is_out, score, 4)
    return out


def run_stage(stage: str, n: int, seed: int, timeout: float) -> dict:
    """``stage`` in a fresh subprocess (niced); a timeout or failure is reported, not raised. The child's peak RSS
    is polled meanwhile, so a stage stopped at the timeout still reports the peak it had reached."""
    import tempfile

    cmd = [sys.executable, os.path.abspath(__file__), "--child", stage, "--sizes", str(n), "--seed", str(seed)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=os.path.dirname(__file__),
                             preexec_fn=lambda: os.nice(5))
        start, peak = time.time(), 0.0
        while p.poll() is None and time.time() - start < timeout:
            peak = max(peak, _hwm_gb(p.pid))
            time.sleep(0.5)
        if p.poll() is None:
            peak = max(peak, _hwm_gb(p.pid))
            p.kill()
            p.wait()
            return {"stage": stage, "n": n, "failed": f"over {timeout:.0f} s, peak >= {peak:.2f} GB"}
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        return {"stage": stage, "n": n, "failed": f"exit {p.returncode}: {last[:120]}"}
    return json.loads(lines[-1])


def _hwm_gb(pid: int) -> float:
    """Peak RSS (VmHWM) of a running process in GB (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(ln.split()[1]) / 2**20 for ln in f if ln.startswith("VmHWM:")), 0.0)
    except OSError:
        return 0.0


def _with_imports(r: dict) -> float:
    return r["seconds"] + r.get("import_s", 0.0)


def _median_run(runs: list[dict]) -> dict:
    """The repeats of one stage as one result: the median time (of an even count, the faster middle run), the
    highest peak memory, the lowest recall."""
    if any("failed" in r for r in runs):
        return next(r for r in runs if "failed" in r)
    out = dict(sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2])
    out["peak_gb"] = max(r["peak_gb"] for r in runs)
    for key in ("recall", "recall_2pct"):
        if key in out:
            out[key] = min(r[key] for r in runs)
    if len(runs) > 1:
        out["range"] = (min(r["seconds"] for r in runs), max(r["seconds"] for r in runs))
    return out


def _paired_ratio(ours: list[dict], brain: list[dict], with_imports: bool = False) -> float:
    """Median over the repeats of Brain's time / ours, each repeat's two runs taken side by side."""
    t = _with_imports if with_imports else (lambda r: r["seconds"])
    return float(np.median([t(b) / t(o) for o, b in zip(ours, brain)]))


def report(results: list[dict]) -> None:
    """One markdown table: each of our stages, Brain's counterpart, the ratios (medians over the repeats)."""
    runs: dict[tuple, list[dict]] = {}
    for r in results:
        runs.setdefault((r["stage"], r["n"]), []).append(r)
    by = {key: _median_run(rs) for key, rs in runs.items()}

    def cell(r):
        if r is None:
            return "-"
        if "failed" in r:
            return f"failed ({r['failed']})"
        rec = f", recall {r['recall']:.3f}" if "recall" in r else ""
        rec += f" (top 2%: {r['recall_2pct']:.3f})" if "recall_2pct" in r else ""
        imp = f" (+{r['import_s']:.1f} s imports)" if "import_s" in r else ""
        spread = f" [{r['range'][0]:.1f}-{r['range'][1]:.1f}]" if "range" in r else ""
        return f"{r['seconds']:.1f} s{spread}{imp}, {r['peak_gb']:.2f} GB{rec}"

    print("\n| N | stage | ours | FiftyOne Brain | Brain time / ours | with imports | our memory / Brain's |")
    print("|---|---|---|---|---|---|---|")
    for n in sorted({r["n"] for r in results}):
        for stage, (tool, other) in STAGES.items():
            if tool != "ours" or (stage, n) not in by:
                continue
            ours, brain = by[(stage, n)], by.get((other, n)) if other else None
            ok = brain is not None and "failed" not in brain and "failed" not in ours
            pair = runs[(stage, n)], runs.get((other, n), [])
            speed = f"{_paired_ratio(*pair):.2f}x" if ok else "-"
            whole = f"{_paired_ratio(*pair, with_imports=True):.2f}x" if ok else "-"
            mem = f"{ours['peak_gb'] / brain['peak_gb']:.2f}" if ok else "-"
            print(f"| {n:,} | {NAMES[stage]} | {cell(ours)} | {cell(brain)} | {speed} | {whole} | {mem} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000], help="N values (10000 to 1000000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", default=",".join(s for s in STAGES if s not in CORE_STAGES),
                    help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed to one stage (ours or Brain's)")
    ap.add_argument("--core", action="store_true", help="only the numeric core of our stages (no FiftyOne)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs of each stage, ours and Brain's side by side (alternating which goes first); the "
                         "table shows median times, [fastest-slowest], and the median of the paired ratios")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    sizes = args.sizes
    if args.child:
        print(json.dumps(child(args.child, sizes[0], args.seed)), flush=True)
        return
    results = []
    for n in sizes:
        if not args.core:
            make_dataset(n, args.seed)
        stages = list(CORE_STAGES if args.core else args.stages.split(","))
        for rep in range(args.repeat):
            for stage in stages if rep % 2 == 0 else stages[::-1]:  # (which tool goes first alternates)
                r = run_stage(stage, n, args.seed, args.timeout)
                print(json.dumps(r), file=sys.stderr, flush=True)
                results.append(r)
    report(results)


if __name__ == "__main__":
    main()
