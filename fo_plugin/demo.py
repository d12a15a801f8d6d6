"""The demo: real CIFAR-10 images -> persistent FiftyOne dataset -> our operators, run through FiftyOne's own
operator execution (the path the App uses) -> a summary and the command that opens the App.

    python -m fo_plugin.demo                  # 4,800 images (4,000 train + 800 test), 10 proxy epochs
    python -m fo_plugin.demo --full           # all 60,000 images (train + test); --device cuda for a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import numpy as np

PLUGIN = "@fo-ssl/ssl-curation"


def run_operator(name: str, dataset: str, params: dict) -> dict:
    """Execute one of our operators headlessly, exactly as the App would, and return its result."""
    import fiftyone.operators as foo

    uri = f"{PLUGIN}/{name}"
    try:
        foo.get_operator(uri)
    except ValueError as e:
        raise SystemExit(f"operator {uri} is not registered with FiftyOne ({e}); run `make install` or link this "
                         "folder into FIFTYONE_PLUGINS_DIR") from e
    res = foo.execute_operator(uri, ctx={"dataset": dataset, "params": {"view_target": "DATASET", **params}})
    if res.error:
        raise SystemExit(f"{uri} failed: {res.error}")
    return shown_outputs(res)


def shown_outputs(res) -> dict | None:
    """An operator execution's outputs as the App shows them: a plain operator's result, or what a generator
    operator showed with ``show_output`` (FiftyOne runs a generator to its end when it is executed from Python)."""
    if res.result is not None or res.executor is None:
        return res.result
    shown = [r["params"]["results"] for r in res.executor.to_json()["requests"] if r["operator_uri"] == "show_output"]
    return shown[-1] if shown else None


class Stages:
    """Wall time and peak resident memory of each stage of the demo (the peak is reset at each stage's start, so
    it is that stage's own high-water mark, including what the process already held)."""

    def __init__(self):
        self.rows: list[dict] = []

    @contextlib.contextmanager
    def __call__(self, name: str):
        _reset_peak()
        start = _status_gb("VmRSS:")
        t = time.perf_counter()
        yield
        self.rows.append({"stage": name, "seconds": round(time.perf_counter() - t, 2),
                          "peak_gb": round(_status_gb("VmHWM:"), 3), "start_gb": round(start, 3)})

    def table(self) -> str:
        lines = ["| stage | time (s) | peak RSS (GB) |", "| --- | --- | --- |"]
        lines += [f"| {r['stage']} | {r['seconds']:.1f} | {r['peak_gb']:.2f} |" for r in self.rows]
        return "\n".join(lines)


def _reset_peak() -> None:
    """Reset this process's peak RSS (Linux: writing 5 to clear_refs); elsewhere the peak stays cumulative."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _status_gb(key: str) -> float:
    """A memory figure of this process from /proc/self/status (``VmRSS:`` now, ``VmHWM:`` the peak) in GB; 0 where
    there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            return next((int(ln.split()[1]) / 2**20 for ln in f if ln.startswith(key)), 0.0)
    except OSError:
        return 0.0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="ssl-curation-demo", help="dataset name")
    ap.add_argument("--per-class", type=int, default=350,
                    help="CIFAR-10 training images per class (and a fifth as many test images)")
    ap.add_argument("--full", action="store_true", help="all 60,000 images (50,000 train + 10,000 test)")
    ap.add_argument("--epochs", type=int, default=10, help="proxy training epochs")
    ap.add_argument("--train-limit", type=int, default=10_000,
                    help="the proxy trains on at most this many images (all are embedded)")
    ap.add_argument("--budget", type=float, default=0.8, help="CL-Core: fraction of images to keep")
    ap.add_argument("--influence", default="identity", choices=("identity", "diagonal", "ekfac"),
                    help="influence curvature (ekfac is the paper's, ~4x slower than identity on CPU)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--fresh", action="store_true", help="rebuild the dataset and retrain the proxy")
    ap.add_argument("--json", help="also write each stage's time and peak memory, and what it found, to this file")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    stage = Stages()
    with stage("load dataset"):
        import fo_plugin

        per_class = None if args.full else args.per_class
        ds = fo_plugin.load_cifar10(args.name, "all", per_class, persistent=True, overwrite=args.fresh)
    splits = {str(k): int(v) for k, v in zip(*np.unique(ds.values("split"), return_counts=True))} \
        if ds.has_field("split") else {}
    print(f"dataset {ds.name!r}: {len(ds)} CIFAR-10 images {splits} ({time.perf_counter() - t0:.1f} s)")
    if not splits:
        print("  (made by an earlier version, without a split field: run with --fresh for the leaky-split check)")

    with stage("embeddings"):
        emb = run_operator("compute_ssl_embeddings", ds.name, {"epochs": args.epochs, "device": args.device,
                                                               "train_limit": args.train_limit})
    verb = "trained a SimCLR proxy and embedded" if emb["trained_proxy"] else "reused the run's proxy and embedded"
    print(f"compute_ssl_embeddings: {verb} {emb['num_embedded']} images, {emb['num_failed']} failed, "
          f"dim {emb['embedding_dim']} on {emb['device']} ({stage.rows[-1]['seconds']:.1f} s)")
    print(f"  fields: {emb['embeddings_field']}, {emb['error_field']}; checkpoint: {emb['checkpoint']}")

    with stage("CL-Core"):
        core = run_operator("compute_clcore", ds.name, {"embeddings_run": "ssl_embedding", "latent": "kmeans",
                                                         "num_classes": 10, "budget": args.budget,
                                                         "device": args.device})
    print(f"compute_clcore: scored {core['num_scored']} images in {core['num_classes']} latent classes (k-means), "
          f"kept {core['num_selected']} ({stage.rows[-1]['seconds']:.1f} s)")
    print(f"  fields: {', '.join(core['fields'])}")
    print(f"  saved views: {'; '.join(core['saved_views'])}")

    with stage(f"influence ({args.influence})"):
        inf = run_operator("compute_ssl_influence", ds.name, {"embeddings_run": "ssl_embedding",
                                                              "run_key": "influence", "curvature": args.influence,
                                                              "num_augs": 2, "device": args.device})
    print(f"compute_ssl_influence ({args.influence}): scored {inf['num_scored']} images "
          f"({stage.rows[-1]['seconds']:.1f} s)")
    print(f"  fields: {', '.join(inf['fields'])}")

    with stage("near-duplicates"):
        dups = run_operator("find_near_duplicates", ds.name, {"keep": "clcore"})
    leak = ", ".join(f"{k} {v:.1%}" for k, v in (dups.get("leaky_fraction") or {}).items())
    print(f"find_near_duplicates: {dups['num_groups']} groups, {dups['num_to_drop']} duplicates flagged to drop"
          + (f"; samples with a duplicate in another split: {leak}" if leak else "")
          + f" ({stage.rows[-1]['seconds']:.1f} s)")
    with stage("outliers"):
        outl = run_operator("find_outliers", ds.name, {"fraction": 0.02})
    with stage("quality"):
        quality = run_operator("find_quality_issues", ds.name, {})
    with stage("subgroup audit"):
        audit = run_operator("audit_subgroups", ds.name, {"group_field": "ground_truth", "top_fraction": 0.05})
    print(f"find_outliers: {outl['num_flagged']} flagged ({outl['flagged_by_component']}); "
          f"find_quality_issues: {quality['counts']}; audit_subgroups: {len(audit['rows'])} rows")

    _report(ds, audit["rows"])
    curated = f"{ds.name}-curated"
    if args.fresh and _dataset_exists(curated):
        _delete_dataset(curated)
    if _dataset_exists(curated):
        print(f"export_curated: kept the existing dataset {curated!r} (run with --fresh to rebuild it)")
    else:
        with stage("export"):
            exp = run_operator("export_curated", ds.name, {"duplicates_run": "dups", "outliers_run": "outliers",
                                                           "clcore_run": "clcore", "name": curated, "confirm": True})
        print(f"export_curated: new dataset {curated!r} with {exp['num_kept']} of {exp['num_source']} images; "
              f"removed ones listed in {exp['manifest']}")
    print(f"runs on the dataset: {fo_plugin.list_runs(ds)}")
    print(f"\neach stage's time and peak memory ({len(ds)} images):\n{stage.table()}")
    print(f"total {time.perf_counter() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            found = {"duplicate_groups": dups["num_groups"], "leaky_fraction": dups.get("leaky_fraction"),
                     "outliers_flagged": outl["num_flagged"], "clcore_kept": core["num_selected"]}
            json.dump({"n": len(ds), "stages": stage.rows, "total_s": time.perf_counter() - t0, "found": found}, f,
                      indent=1)
    make_app = "make app" if ds.name == "ssl-curation-demo" else f"make app DATASET={ds.name}"
    print(f"\nOpen the App on the result:\n  {make_app}    "
          f"(= fiftyone app launch {ds.name} --remote --address 127.0.0.1 --port 5151)")


def _dataset_exists(name: str) -> bool:
    import fiftyone as fo

    return fo.dataset_exists(name)


def _delete_dataset(name: str) -> None:
    import fiftyone as fo

    fo.delete_dataset(name)


def _report(ds, audit_rows: list[dict]) -> None:
    """What a user would look at first: do the label-free latent classes match CIFAR-10's classes, and which
    classes are most over-represented among the influential, hard, outlier, duplicate and pruned images."""
    import numpy as np

    truth = np.array(ds.values("ground_truth.label"))
    latent = np.array(ds.values("clcore_class"))
    purity = sum(np.unique(truth[latent == c], return_counts=True)[1].max() for c in np.unique(latent)) / len(truth)
    print(f"k-means latent classes vs CIFAR-10 labels: purity {purity:.2f} (chance {1 / len(set(truth)):.2f})")
    print("most over-represented class per selection (subgroup audit):")
    for sel in dict.fromkeys(r["selection"] for r in audit_rows):
        top = max((r for r in audit_rows if r["selection"] == sel), key=lambda r: r["ratio"] or 0)
        print(f"  {sel}: {top['group']} x{top['ratio']:.2f} (p={top['p_value']:.2g}, Holm {top['p_adjusted']:.2g})")


if __name__ == "__main__":
    main()
